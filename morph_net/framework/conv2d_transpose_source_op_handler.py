"""Group-lasso source OpHandler for transposed convolutions (`Conv2DBackpropInput`).

The filter of a transposed convolution is laid out `[kh, kw, out, in]`, so a
channel's norm is taken over dimensions `(0, 1, 3)`.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from morph_net.framework import group_lasso_base_op_handler


class Conv2DTransposeSourceOpHandler(
    group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):
  """Group-lasso source OpHandler for `Conv2DBackpropInput` ops."""

  def _reduce_dims(self, op: tf.Operation) -> Tuple[int, ...]:
    del op  # The filter layout is the same for every transposed convolution.
    return (0, 1, 3)
