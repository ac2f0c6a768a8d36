"""Group-lasso source OpHandler for `Conv2D` and `Conv3D` ops.

A channel's norm is taken over the kernel's spatial and input dimensions:
`(0, 1, 2)` for a `[kh, kw, in, out]` Conv2D kernel, `(0, 1, 2, 3)` for a
`[kd, kh, kw, in, out]` Conv3D kernel.

Beyond the original:

* a 1-D convolution (Keras `Conv1D`, `tf.nn.conv1d`) is a `Conv2D` whose
  kernel is `ExpandDims(kernel, 0)` of a `[k, in, out]` variable: the
  regularizer reads that variable, with the norm over `(0, 1)` (the
  original could not resolve the expanded tensor to a variable, and the
  regularizer failed at its first read outside the traced graph);
* a grouped `Conv2D` (`groups > 1`) is dispatched per op as described in
  `grouped_convolution_op_handler` (positions tied across groups; one input
  channel per group is handled like a depthwise convolution, not a source).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

from morph_net.framework import group_lasso_base_op_handler
from morph_net.framework import grouped_convolution_op_handler
from morph_net.framework import lazy_evaluation
from morph_net.framework import op_handler
from morph_net.framework import tpu_util
from morph_net.op_regularizers import group_lasso_regularizer

_REDUCE_DIMS = {
    'Conv2D': (0, 1, 2),
    'Conv3D': (0, 1, 2, 3),
}


class ConvSourceOpHandler(
    group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):
  """Group-lasso source OpHandler for `Conv2D` and `Conv3D` ops."""

  def __init__(self, threshold: float, l1_fraction: float = 0.0):
    super().__init__(threshold, l1_fraction)
    self._grouped = grouped_convolution_op_handler.GroupedConvolutionOpHandler(self)

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """This handler for an ordinary convolution; see the module docstring."""
    if grouped_convolution_op_handler.convolution_groups(op) == 1:
      return self
    return self._grouped.handler_for_op(op)

  def _reduce_dims(self, op: tf.Operation) -> Tuple[int, ...]:
    if op.type not in _REDUCE_DIMS:
      raise ValueError(
          f'Unsupported op type {op.type}: ConvSourceOpHandler handles '
          f'{sorted(_REDUCE_DIMS)}. Received: op {op.name!r}.')
    return _REDUCE_DIMS[op.type]

  def create_regularizer(self, op_slice: Any) -> Any:
    """A `GroupLassoRegularizer` over the kernel slice producing `op_slice`.

    For a 1-D convolution (kernel `ExpandDims(variable, 0)`), over the
    `[k, in, out]` variable itself with the norm over `(0, 1)`.
    """
    op = op_slice.op
    variable = _expanded_conv1d_kernel(op)
    if variable is None:
      return super().create_regularizer(op_slice)
    start_index, size = op_slice.slice.start_index, op_slice.slice.size
    weights = variable
    if not (start_index == 0 and size == lazy_evaluation.static_shape(weights)[-1]):
      weights = lazy_evaluation.LazySlice(weights, start_index, size, axis=2)
    return group_lasso_regularizer.GroupLassoRegularizer(
        weight_tensor=weights, reduce_dims=(0, 1), threshold=self._threshold,
        l1_fraction=self._l1_fraction)


def _expanded_conv1d_kernel(op: tf.Operation) -> Optional[Any]:
  """The `[k, in, out]` variable of a Conv2D kernel `ExpandDims(variable, 0)`.

  None when the kernel is not such an expansion of a variable read.
  """
  if op.type != 'Conv2D' or len(op.inputs) < 2:
    return None
  kernel = op.inputs[1]
  while kernel.op.type in ('Identity', 'Cast'):
    kernel = kernel.op.inputs[0]
  if kernel.op.type != 'ExpandDims' or kernel.shape.rank != 4:
    return None
  axis = tf.get_static_value(kernel.op.inputs[1])
  if axis is None or int(np.ravel(axis)[0]) % 4 != 0:
    return None
  source = kernel.op.inputs[0]
  while source.op.type in ('Identity', 'Cast'):
    source = source.op.inputs[0]
  variable = tpu_util.maybe_convert_to_variable(source)
  if variable is source:
    return None  # Not a variable read: the base handler deals with it.
  return variable


# The original's name, kept for code written against it.
Conv2DSourceOpHandler = ConvSourceOpHandler
