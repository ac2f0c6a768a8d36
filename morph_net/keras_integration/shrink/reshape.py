"""Reshape layers that MorphNet can follow.

A `Reshape` whose output keeps the input's channel axis (the last) and only
regroups the positions before it, e.g. `GlobalAveragePooling2D -> Reshape((1,
1, C))` in squeeze-and-excitation blocks, carries the input's channels
unchanged (`RESHAPE`); it is rebuilt with `target_shape = (*positions,
new width)`. A `Reshape` to a flat vector (`(H*W*C,)`) is a `Flatten`
(`FLATTEN`): rebuilt with `target_shape = (H*W*new width,)`. Any other
reshape mixes channels with positions and must see an unchanged input.
"""

from __future__ import annotations

import math
from typing import Tuple

from morph_net.keras_integration.shrink import kinds


def _static(shape) -> bool:
  return all(d is not None for d in shape)


def kind_of_reshape(node) -> str:
  in_shape = tuple(node.arguments.keras_tensors[0].shape)[1:]
  out_shape = tuple(node.outputs[0].shape)[1:]
  if not in_shape or not out_shape or not _static(in_shape) or not _static(out_shape):
    return kinds.FIXED
  if (len(in_shape) > 1 and len(out_shape) == 1
      and out_shape[0] == math.prod(in_shape)):
    return kinds.FLATTEN
  if (in_shape[-1] == out_shape[-1]
      and math.prod(in_shape[:-1]) == math.prod(out_shape[:-1])):
    return kinds.RESHAPE
  return kinds.FIXED


def new_target_shape(node, kind: str, width: int) -> Tuple[int, ...]:
  """`target_shape` of the rebuilt Reshape whose output has `width` channels."""
  out_shape = tuple(node.outputs[0].shape)[1:]
  if kind == kinds.FLATTEN:
    return (int(width),)
  return tuple(int(d) for d in out_shape[:-1]) + (int(width),)
