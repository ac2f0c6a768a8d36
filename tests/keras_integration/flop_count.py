"""An independent FLOP counter for Keras 3 models, from layer configs alone.

Used to check `GammaFlopsRegularizer.get_cost()` on `keras.applications`
models. It never imports morph_net: every count is derived from a layer's
config (kernel size, filters, units, depth multiplier, groups) and the static
shapes of its first call, with the formulas of the original MorphNet
(API_SPEC 3.2, `flop_coeff` with a batch size of 1, all channels alive):

  Conv1D/2D/3D        2 * S_out * K * C_in * C_out / groups (dilated or not;
                      groups == C_in counts like a depthwise convolution)
  DepthwiseConv1D/2D  2 * S_out * K * C_in * depth_multiplier
  SeparableConv1D/2D  depthwise (as above) + pointwise 1x1 conv
                      2 * S_out * (C_in * depth_multiplier) * C_out
  Conv2DTranspose     2 * S_in * K * C_in * C_out
  Dense               2 * R * C_in * C_out, R = rows per example: the product
                      of the input dims between batch and channels (1 for a
                      rank-2 input)
  anything else       0

S_out (S_in) is the number of spatial positions of the layer's output (input):
the product of the dimensions between batch and channels. K is the number of
kernel taps (product of `kernel_size`).

Dense on an input of rank > 2 (e.g. (batch, T, C_in)) is traced as
`Reshape -> MatMul -> Reshape`; the original's `flop_coeff` gave every MatMul
the coefficient 2 regardless of how many rows it multiplies (2 * C_in * C_out);
MorphNet now counts its rows, 2 * T * C_in * C_out (issue 11).

Reduced networks: `layer_flops(layer, in_channels=..., out_channels=...)`
counts a layer as if only that many input / output channels were kept (for a
grouped convolution the same number per group, `groups` unchanged; for a
depthwise convolution `in_channels` alive inputs times the multiplier).

Conv2DTranspose is costed, as in the original, like the forward convolution
mapping its output back to its input: spatial size of the *input*.

Layers that hold a kernel but are not in the table above (e.g. EinsumDense,
Conv3DTranspose) raise a ValueError rather than being counted as 0.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Sequence

import keras

L = keras.layers


def _spatial(shape: Sequence) -> int:
  """Product of the dims between batch and channels (channels-last)."""
  dims = list(shape)[1:-1]
  if any(d is None for d in dims):
    raise ValueError(f'Spatial dimensions must be static. Received: shape={tuple(shape)}.')
  return math.prod(dims)


def _channels(shape: Sequence) -> int:
  channels = list(shape)[-1]
  if channels is None:
    raise ValueError(f'The channel dimension must be static. Received: shape={tuple(shape)}.')
  return int(channels)


def _check_channels_last(layer) -> None:
  data_format = getattr(layer, 'data_format', 'channels_last')
  if data_format not in (None, 'channels_last'):
    raise ValueError(
        f'Only channels_last layers are counted. Received: layer {layer.name!r} '
        f'with data_format={data_format!r}.')


def _first_call_shapes(layer):
  """Static (input shape, output shape) of the layer's first call."""
  inputs = layer.input
  outputs = layer.output
  if isinstance(inputs, (list, tuple)):
    raise ValueError(f'Layer {layer.name!r} has several inputs; it is not a costed layer.')
  return tuple(inputs.shape), tuple(outputs.shape)


def _depthwise_flops(layer, in_shape, out_shape, in_channels) -> int:
  # 2 * S_out * K * C_in * depth_multiplier (one filter per channel and multiplier).
  taps = math.prod(layer.kernel_size)
  return 2 * _spatial(out_shape) * taps * in_channels * layer.depth_multiplier


def layer_flops(layer, *, in_channels: Optional[int] = None,
                out_channels: Optional[int] = None) -> int:
  """FLOPs of one call of `layer` (its first call).

  Args:
    layer: a built Keras layer called at least once on symbolic inputs with
      static non-batch shapes.
    in_channels: alive input channels (defaults to all).
    out_channels: alive output channels (defaults to all; ignored for
      depthwise convolutions, whose outputs follow their inputs).

  Returns:
    The FLOP count as a Python int.

  Raises:
    ValueError: a weighted layer type this counter does not know, or a
      non-static shape.
  """
  # Order matters only for readability: the Keras 3 conv classes below do not
  # subclass one another (Conv2DTranspose is a BaseConvTranspose,
  # SeparableConv2D a BaseSeparableConv, DepthwiseConv2D a BaseDepthwiseConv).
  def alive_in(in_shape):
    return _channels(in_shape) if in_channels is None else in_channels

  def alive_out(filters):
    return filters if out_channels is None else out_channels

  if isinstance(layer, (L.Conv2DTranspose,)):
    _check_channels_last(layer)
    in_shape, out_shape = _first_call_shapes(layer)
    taps = math.prod(layer.kernel_size)
    # 2 * S_in * K * C_in * C_out (costed on the *input* spatial size).
    return 2 * _spatial(in_shape) * taps * alive_in(in_shape) * alive_out(layer.filters)
  if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
    _check_channels_last(layer)
    in_shape, out_shape = _first_call_shapes(layer)
    depthwise = _depthwise_flops(layer, in_shape, out_shape, alive_in(in_shape))
    # Pointwise 1x1 conv on the depthwise output (C_in * multiplier channels).
    pointwise = (2 * _spatial(out_shape) * alive_in(in_shape) * layer.depth_multiplier
                 * alive_out(layer.filters))
    return depthwise + pointwise
  if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
    _check_channels_last(layer)
    in_shape, out_shape = _first_call_shapes(layer)
    return _depthwise_flops(layer, in_shape, out_shape, alive_in(in_shape))
  if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
    _check_channels_last(layer)
    in_shape, out_shape = _first_call_shapes(layer)
    taps = math.prod(layer.kernel_size)
    groups = getattr(layer, 'groups', 1) or 1
    if groups > 1 and groups == _channels(in_shape):
      # One input channel per group: a depthwise convolution with multiplier
      # filters / groups; 2 * S_out * K * C_in_alive * multiplier.
      return (2 * _spatial(out_shape) * taps * alive_in(in_shape)
              * (layer.filters // groups))
    # 2 * S_out * K * C_in * C_out / groups (= 2*S*K * a' * b' * groups with
    # a', b' channels per group).
    return (2 * _spatial(out_shape) * taps * alive_in(in_shape)
            * alive_out(layer.filters)) // groups
  if isinstance(layer, L.Dense):
    in_shape, _ = _first_call_shapes(layer)
    # 2 * R * C_in * C_out, R = rows per example (see module doc).
    rows = _spatial(in_shape) if len(in_shape) > 2 else 1
    return 2 * rows * alive_in(in_shape) * alive_out(layer.units)
  if isinstance(layer, keras.Model) or hasattr(layer, 'layers'):
    return model_flops(layer)
  if getattr(layer, 'kernel', None) is not None or getattr(layer, '_kernel', None) is not None:
    raise ValueError(
        f'flop_count does not know layer {layer.name!r} of type '
        f'{type(layer).__name__}, which has a kernel. Add a formula for it.')
  return 0


def _leaf_layers(model) -> Iterator:
  for layer in model.layers:
    if isinstance(layer, keras.Model) or hasattr(layer, 'layers'):
      yield from _leaf_layers(layer)
    else:
      yield layer


def flops_by_layer(model) -> Dict[str, int]:
  """Layer name -> FLOPs, for every (nested) layer with a nonzero count."""
  counts = {}
  for layer in _leaf_layers(model):
    flops = layer_flops(layer)
    if flops:
      counts[layer.name] = flops
  return counts


def model_flops(model) -> int:
  """Total FLOPs of `model` (batch 1, all channels alive), as a Python int."""
  return sum(flops_by_layer(model).values())
