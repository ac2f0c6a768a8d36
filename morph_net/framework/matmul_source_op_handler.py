"""Group-lasso source OpHandler for `MatMul` ops.

The weights are `inputs[1]`: `[in, out]` (norm over dimension 0), or
`[out, in]` when the op has `transpose_b` set (norm over dimension 1).
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf
from absl import logging

from morph_net.framework import group_lasso_base_op_handler


class MatMulSourceOpHandler(
    group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):
  """Group-lasso source OpHandler for `MatMul` ops."""

  def _reduce_dims(self, op: tf.Operation) -> Tuple[int, ...]:
    try:
      transpose_b = op.get_attr('transpose_b')
    except ValueError:
      logging.warning(
          'MatMul op %s has no transpose_b attribute; assuming weights laid '
          'out [in, out].', op.name)
      transpose_b = False
    return (1,) if transpose_b else (0,)
