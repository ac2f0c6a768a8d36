"""The layer graph of a functional / Sequential model and how each layer maps channels.

Every call node gets a *kind* saying how its output channels relate to its
input channels (see the constants below); `output_width_layers` walks back
from the model outputs through the kinds that pass channels on.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import keras
from absl import logging

from morph_net.probabilistic_gating import activation_gating

L = keras.layers

# Layers whose output width is set by the structure (`filters` / `units`).
WIDTH_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
                L.Conv3DTranspose, L.SeparableConv1D, L.SeparableConv2D, L.Dense)
DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
SEPARABLE_LAYERS = (L.SeparableConv1D, L.SeparableConv2D)
TRANSPOSE_LAYERS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
ELEMENTWISE_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Layers known to keep their input's channels (per-channel or channel-free).
FOLLOW_LAYERS = tuple(getattr(L, name) for name in (
    'BatchNormalization', 'LayerNormalization', 'UnitNormalization', 'Activation', 'ReLU',
    'LeakyReLU', 'PReLU', 'ELU', 'Softmax', 'Dropout', 'SpatialDropout1D',
    'SpatialDropout2D', 'SpatialDropout3D', 'GaussianNoise', 'GaussianDropout',
    'AlphaDropout', 'ActivityRegularization', 'Identity', 'Masking', 'MaxPooling1D',
    'MaxPooling2D', 'MaxPooling3D', 'AveragePooling1D', 'AveragePooling2D',
    'AveragePooling3D', 'GlobalAveragePooling1D', 'GlobalAveragePooling2D',
    'GlobalAveragePooling3D', 'GlobalMaxPooling1D', 'GlobalMaxPooling2D',
    'GlobalMaxPooling3D', 'ZeroPadding1D', 'ZeroPadding2D', 'ZeroPadding3D',
    'Cropping1D', 'Cropping2D', 'Cropping3D', 'UpSampling1D', 'UpSampling2D',
    'UpSampling3D') if hasattr(L, name))

# Layer kinds (how the output channels relate to the input channels).
WIDTH = 'width'            # output width from the structure
DEPTHWISE = 'depthwise'    # C_in * depth_multiplier
FLATTEN = 'flatten'        # C_in * spatial positions
CONCAT = 'concat'          # channel concatenation
MERGE = 'merge'            # element-wise merge: inputs share channels
FOLLOW = 'follow'          # same channels as the input
FIXED = 'fixed'            # needs an unchanged input; output unchanged

def functional_of(model) -> Any:
  """The Functional graph of `model` (a Sequential's inner functional)."""
  if not isinstance(model, keras.Model):
    raise TypeError(
        'shrink_model needs a Keras functional or Sequential model. Received: '
        f'{type(model).__name__}.')
  if isinstance(model, keras.Sequential):
    functional = getattr(model, '_functional', None)
    if functional is None:
      raise ValueError(
          f'Sequential model {model.name!r} is not built: it has no input shape, '
          'so its layers cannot be rebuilt. Start it with keras.Input(shape) or '
          'call model.build(input_shape) first.')
    return functional
  if not hasattr(model, '_nodes_by_depth'):
    raise TypeError(
        f'shrink_model needs a functional or Sequential model; {model.name!r} is a '
        f'subclassed model ({type(model).__name__}), whose layer graph is not '
        'known. Rebuild it with the new widths in its own code (alive counts are in '
        'the structure).')
  return model


def nodes(functional) -> List[Any]:
  """Call nodes of the functional graph in topological order."""
  nodes = []
  for depth in sorted(functional._nodes_by_depth, reverse=True):
    for node in functional._nodes_by_depth[depth]:
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


def last_dim(tensor) -> Optional[int]:
  shape = tuple(tensor.shape)
  return None if not shape else shape[-1]


def channels_last(layer) -> bool:
  return getattr(layer, 'data_format', 'channels_last') != 'channels_first'


def kind_of(layer, node) -> str:
  """How `layer` (at `node`) maps input channels to output channels."""
  inputs = node.arguments.keras_tensors
  outputs = node.outputs
  if not channels_last(layer):
    return FIXED
  if isinstance(layer, WIDTH_LAYERS):
    return WIDTH
  if isinstance(layer, DEPTHWISE_LAYERS):
    return DEPTHWISE
  if isinstance(layer, L.Flatten):
    return FLATTEN
  if isinstance(layer, L.Concatenate):
    rank = len(outputs[0].shape)
    return CONCAT if layer.axis in (-1, rank - 1) else MERGE
  if isinstance(layer, ELEMENTWISE_MERGES):
    return MERGE
  if isinstance(layer, L.BatchNormalization):
    rank = len(outputs[0].shape)
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    return FOLLOW if axis in (-1, rank - 1, (-1,), (rank - 1,)) else FIXED
  if isinstance(layer, FOLLOW_LAYERS):
    return FOLLOW
  if isinstance(layer, activation_gating.LogisticSigmoidGating):
    # One gate (mask logit) per channel: follows its input like a BN.
    rank = len(outputs[0].shape)
    return FOLLOW if layer.axis in (-1, rank - 1) else FIXED
  if (not isinstance(layer, keras.Model) and not layer.weights and len(inputs) == 1
      and len(outputs) == 1 and last_dim(inputs[0]) == last_dim(outputs[0])
      and last_dim(inputs[0]) is not None):
    logging.log_first_n(
        logging.INFO, 'Layer %r (%s) has no weights and keeps its channel count: '
        'treated as channel-preserving.', 20, layer.name, type(layer).__name__)
    return FOLLOW
  return FIXED


def old_width(layer) -> int:
  return int(layer.units if isinstance(layer, L.Dense) else layer.filters)


def layer_kinds(nodes) -> Dict[int, str]:
  kinds = {}
  for node in nodes:
    kinds.setdefault(id(node.operation), kind_of(node.operation, node))
  return kinds


def output_width_layers(functional, kinds) -> set:
  found, seen = set(), set()
  stack = list(functional.outputs)
  while stack:
    tensor = stack.pop()
    if id(tensor) in seen:
      continue
    seen.add(id(tensor))
    history = getattr(tensor, '_keras_history', None)
    layer = None if history is None else history.operation
    kind = None if layer is None else kinds.get(id(layer))
    if kind == WIDTH:
      found.add(layer.name)
    elif kind in (FOLLOW, MERGE, CONCAT, DEPTHWISE):
      node = layer._inbound_nodes[history.node_index]
      stack.extend(node.arguments.keras_tensors)
  return found

