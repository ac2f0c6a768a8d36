"""Weight transfer: each kept layer gets the old weights of its surviving channels."""

from __future__ import annotations

import numpy as np

from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink import grouped


def transfer_layer(old_layer, new_layer, in_mask, out_mask) -> None:
  """Copies the surviving channels' weights of `old_layer` into `new_layer`."""
  if not hasattr(old_layer, 'get_weights'):
    return  # A keras.ops Operation: no weights.
  old_values = [np.asarray(v) for v in old_layer.get_weights()]
  if not old_values:
    return
  new_shapes = [tuple(w.shape) for w in new_layer.weights]
  names = [w.name.split('/')[-1] for w in old_layer.weights]
  if in_mask is not None and not isinstance(in_mask, np.ndarray):
    in_mask = None
  values = []
  for name, value, shape in zip(names, old_values, new_shapes):
    sliced = _slice_weight(old_layer, name, value, in_mask, out_mask)
    if tuple(sliced.shape) != shape:
      raise ValueError(
          f'Cannot transfer weight {name!r} of layer {old_layer.name!r} '
          f'({type(old_layer).__name__}): the surviving channels give shape '
          f'{tuple(sliced.shape)}, the new layer expects {shape}.')
    values.append(sliced)
  new_layer.set_weights(values)


def _slice_weight(layer, name, value, in_mask, out_mask) -> np.ndarray:
  if isinstance(layer, graph.SEPARABLE_LAYERS):
    m = int(layer.depth_multiplier)
    if name == 'depthwise_kernel':
      return _take(value, -2, in_mask)
    if name == 'pointwise_kernel':
      mid = None if in_mask is None else np.repeat(in_mask, m)
      return _take(_take(value, -2, mid), -1, out_mask)
    return _take(value, -1, out_mask)
  if isinstance(layer, graph.DEPTHWISE_LAYERS):
    if name == 'kernel':
      return _take(value, -2, in_mask)
    if in_mask is None:
      return value
    m = int(layer.depth_multiplier)
    return value.reshape(-1, m)[in_mask].reshape(-1)
  if isinstance(layer, graph.TRANSPOSE_LAYERS):
    if name == 'kernel':  # (*k, out, in)
      return _take(_take(value, -2, out_mask), -1, in_mask)
    return _take(value, -1, out_mask)
  if isinstance(layer, graph.WIDTH_LAYERS) and grouped.groups_of(layer) > 1:
    if name == 'kernel':  # (*k, C_in / groups, out)
      return grouped.slice_kernel(layer, value, in_mask, out_mask)
    return _take(value, -1, out_mask)
  if isinstance(layer, graph.WIDTH_LAYERS):
    if name == 'kernel':  # (*k, in, out) or (in, out)
      return _take(_take(value, -2, in_mask), -1, out_mask)
    return _take(value, -1, out_mask)
  # Per-channel layers (BatchNormalization, PReLU, ...): last axis = channels.
  if (isinstance(out_mask, np.ndarray) and value.ndim >= 1
      and value.shape[-1] == len(out_mask)):
    return value[..., out_mask]
  return value


def _take(value: np.ndarray, axis: int, mask) -> np.ndarray:
  if mask is None or not isinstance(mask, np.ndarray):
    return value
  if value.shape[axis] != len(mask):
    return value  # Shape checked by the caller against the new layer.
  return np.compress(mask, value, axis=axis)
