"""Keras `Operation` nodes: raw `keras.ops` calls on symbolic tensors.

`x + 3.0` (MobileNetV3's hard sigmoid), `ops.pad`, `ops.split`, ... called on
KerasTensors become nodes whose operation is an `Operation`, not a `Layer`:
they hold no weights and are rebuilt as a fresh operation of the same class
and config, called on the new tensors. How they map channels:

- `ops.split` along the channel axis: each output is a slice of the input's
  channels (`SPLIT`); `ops.concatenate` along the channel axis: `CONCAT`;
- element-wise operations of two or more tensors (`Add`, `Multiply`, ...):
  their inputs share channels (`MERGE`; width-1 inputs broadcast);
- any other operation of one tensor whose output keeps the input's channel
  count (`x + 3.0`, `relu6`, `pad` of the spatial axes, ...): `FOLLOW`;
- anything else must see an unchanged input (`FIXED`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from morph_net.keras_integration.shrink import kinds

ELEMENTWISE_OPERATIONS = frozenset((
    'Add', 'Subtract', 'Multiply', 'Divide', 'TrueDivide', 'Maximum', 'Minimum',
    'Power', 'FloorDivide', 'Mod'))


def _last_dim(tensor) -> Optional[int]:
  shape = tuple(tensor.shape)
  return shape[-1] if shape else None


def _channel_axis(axis, rank: int) -> bool:
  return axis in (-1, rank - 1)


def kind_of_operation(operation, node) -> str:
  """The kind (see `graph`) of a non-Layer operation at `node`."""
  inputs = node.arguments.keras_tensors
  outputs = node.outputs
  name = type(operation).__name__
  rank = len(outputs[0].shape) if outputs and outputs[0].shape is not None else 0
  if name == 'Split' and len(inputs) == 1:
    return kinds.SPLIT if _channel_axis(operation.axis, rank) else kinds.FIXED
  if name == 'Concatenate':
    return kinds.CONCAT if _channel_axis(operation.axis, rank) else kinds.FIXED
  if len(outputs) != 1 or not inputs:
    return kinds.FIXED
  width = _last_dim(outputs[0])
  if width is None:
    return kinds.FIXED
  if len(inputs) > 1:
    if name in ELEMENTWISE_OPERATIONS and all(
        _last_dim(t) in (width, 1) and len(t.shape) == rank for t in inputs):
      return kinds.MERGE
    return kinds.FIXED
  if _last_dim(inputs[0]) == width and len(inputs[0].shape) == rank:
    return kinds.FOLLOW
  return kinds.FIXED


def new_operation(operation, kind: str, out_channels: Sequence[Any]) -> Any:
  """A fresh operation of the same class and config, for the new output widths.

  A channel split gets the new split points (cumulative widths of its outputs).
  An operation without a usable config is reused: operations hold no state.
  """
  try:
    config = operation.get_config()
  except NotImplementedError:
    return operation
  if kind == kinds.SPLIT:
    widths = [_width(c) for c in out_channels]
    config = dict(config)
    config['indices_or_sections'] = [int(x) for x in np.cumsum(widths)[:-1]]
  try:
    return type(operation).from_config(config)
  except (TypeError, ValueError):
    return operation


def _width(channels) -> int:
  return int(np.count_nonzero(channels)) if isinstance(channels, np.ndarray) else int(channels)
