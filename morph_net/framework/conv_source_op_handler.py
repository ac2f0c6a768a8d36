"""Group-lasso source OpHandler for `Conv2D` and `Conv3D` ops.

A channel's norm is taken over the kernel's spatial and input dimensions:
`(0, 1, 2)` for a `[kh, kw, in, out]` Conv2D kernel, `(0, 1, 2, 3)` for a
`[kd, kh, kw, in, out]` Conv3D kernel.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from morph_net.framework import group_lasso_base_op_handler

_REDUCE_DIMS = {
    'Conv2D': (0, 1, 2),
    'Conv3D': (0, 1, 2, 3),
}


class ConvSourceOpHandler(
    group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):
  """Group-lasso source OpHandler for `Conv2D` and `Conv3D` ops."""

  def _reduce_dims(self, op: tf.Operation) -> Tuple[int, ...]:
    if op.type not in _REDUCE_DIMS:
      raise ValueError(
          f'Unsupported op type {op.type}: ConvSourceOpHandler handles '
          f'{sorted(_REDUCE_DIMS)}. Received: op {op.name!r}.')
    return _REDUCE_DIMS[op.type]


# The original's name, kept for code written against it.
Conv2DSourceOpHandler = ConvSourceOpHandler
