"""An independent FLOP and model-size counter for the coverage suite.

Never imports morph_net. Every count comes from a layer's config (kernel size,
filters, units, depth multiplier, groups) and the static shapes of its first
call, batch 1, all channels alive, with the formulas MorphNet's cost model
uses once 1-D, grouped and rank > 2 Dense layers are analysed (issue 11):

  layer                 FLOPs                                model size
  Conv1D/2D/3D          2 * S_out * K * (C_in / g) * C_out   K * (C_in / g) * C_out
  DepthwiseConv1D/2D    2 * S_out * K * C_in * m             K * C_in * m
  SeparableConv1D/2D    depthwise + 2 * S_out * C_in*m*C_out  depthwise + C_in*m*C_out
  Conv1D/2DTranspose    2 * S_in * K * C_in * C_out          K * C_in * C_out
  Dense                 2 * R * C_in * C_out                 C_in * C_out
  anything else         0                                    0

S_out (S_in): spatial positions of the output (input), the product of the dims
between batch and channels; K: kernel taps; g: groups; m: depth multiplier;
R: rows of a Dense, the product of its input's dims between batch and channels
(1 for a rank-2 input). Biases and normalization parameters are not counted
(MorphNet's model size counts kernel weights). Layers are found recursively
inside nested models and custom layers (whose inner layers record no call node:
their shapes come from one eager run of the model on zeros). A layer with a kernel that is not in
the table raises a ValueError (never a silent 0).
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Sequence, Tuple

import keras
import numpy as np

L = keras.layers
_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSE = (L.Conv1DTranspose, L.Conv2DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)


def _positions(shape: Sequence) -> int:
  dims = list(shape)[1:-1]
  if any(d is None for d in dims):
    raise ValueError(f'Spatial dimensions must be static. Received: shape={tuple(shape)}.')
  return math.prod(dims)


def _shapes(layer) -> Tuple[tuple, tuple]:
  if id(layer) in _RECORDED:
    return _RECORDED[id(layer)]
  node = layer._inbound_nodes[0]
  inputs = node.arguments.keras_tensors
  if len(inputs) != 1:
    raise ValueError(f'Layer {layer.name!r} has {len(inputs)} inputs; expected 1.')
  return tuple(inputs[0].shape), tuple(node.outputs[0].shape)


def layer_costs(layer) -> Tuple[int, int]:
  """(FLOPs, model size) of the first call of a leaf layer."""
  if getattr(layer, 'data_format', 'channels_last') not in (None, 'channels_last'):
    raise ValueError(f'Only channels_last layers are counted. Received: {layer.name!r}.')
  if isinstance(layer, _TRANSPOSE):
    i, _ = _shapes(layer)
    weights = math.prod(layer.kernel_size) * i[-1] * layer.filters
    return 2 * _positions(i) * weights, weights
  if isinstance(layer, _SEPARABLE + _DEPTHWISE):
    i, o = _shapes(layer)
    depthwise = math.prod(layer.kernel_size) * i[-1] * layer.depth_multiplier
    flops, size = 2 * _positions(o) * depthwise, depthwise
    if isinstance(layer, _SEPARABLE):
      pointwise = i[-1] * layer.depth_multiplier * layer.filters
      flops, size = flops + 2 * _positions(o) * pointwise, size + pointwise
    return flops, size
  if isinstance(layer, _CONV):
    i, o = _shapes(layer)
    groups = getattr(layer, 'groups', 1) or 1
    weights = math.prod(layer.kernel_size) * (i[-1] // groups) * layer.filters
    return 2 * _positions(o) * weights, weights
  if isinstance(layer, L.Dense):
    i, _ = _shapes(layer)
    rows = math.prod(i[1:-1]) if len(i) > 2 else 1
    return 2 * rows * i[-1] * layer.units, i[-1] * layer.units
  if getattr(layer, 'kernel', None) is not None or getattr(layer, '_kernel', None) is not None:
    raise ValueError(
        f'cost_count does not know layer {layer.name!r} of type {type(layer).__name__}, '
        'which has a kernel. Add a formula for it.')
  return 0, 0


# id(layer) -> (input shape, output shape) of layers called inside custom layers,
# which record no call node: found by running the model once (see `_record`).
_RECORDED: Dict[int, Tuple[tuple, tuple]] = {}
_COSTED = _CONV + _TRANSPOSE + _DEPTHWISE + _SEPARABLE


def _record(model) -> None:
  """Records the call shapes of costed layers that have no call node.

  Layers called inside a custom layer's `call` record no node in Keras 3: each
  such layer's `call` is wrapped for one eager run of `model` on zeros
  (batch 1, the static shapes of `model.inputs`).
  """
  missing = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, _COSTED + (L.Dense,)) and not layer._inbound_nodes
             and id(layer) not in _RECORDED]
  if not missing:
    return
  originals = {}

  def wrap(layer):
    original = layer.call

    def call(inputs, *args, **kwargs):
      outputs = original(inputs, *args, **kwargs)
      _RECORDED[id(layer)] = ((None,) + tuple(inputs.shape)[1:],
                              (None,) + tuple(outputs.shape)[1:])
      return outputs
    return original, call

  for layer in missing:
    originals[id(layer)], layer.call = wrap(layer)
  try:
    inputs = [np.zeros((1,) + tuple(t.shape)[1:], dtype='float32') for t in model.inputs]
    model(inputs if len(inputs) > 1 else inputs[0], training=False)
  finally:
    for layer in missing:
      del layer.call  # back to the class's method
      del originals[id(layer)]


def _leaves(model) -> Iterator:
  _record(model)
  seen = set()
  for layer in model._flatten_layers(include_self=False, recursive=True):
    if id(layer) in seen or not (layer._inbound_nodes or id(layer) in _RECORDED):
      continue
    seen.add(id(layer))
    if isinstance(layer, _COSTED + (L.Dense,)):
      yield layer
    elif not list(layer._flatten_layers(include_self=False, recursive=False)):
      yield layer  # a leaf of another type: 0, or an error if it holds a kernel


def costs_by_layer(model) -> Dict[str, Tuple[int, int]]:
  return {layer.name: layer_costs(layer) for layer in _leaves(model)}


def flops(model) -> int:
  """Total FLOPs of `model` (batch 1, all channels alive)."""
  return sum(f for f, _ in costs_by_layer(model).values())


def model_size(model) -> int:
  """Total kernel weights of `model`."""
  return sum(s for _, s in costs_by_layer(model).values())
