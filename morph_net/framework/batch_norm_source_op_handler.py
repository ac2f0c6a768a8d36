"""Source OpHandler for fused batch norm ops: the gammas regularize channels.

Registered by the Gamma network regularizers for `FusedBatchNorm`,
`FusedBatchNormV2` and `FusedBatchNormV3`. The op's gamma (`inputs[1]`) is
read lazily: when it is backed by a variable, the regularizer holds the
variable (or a `LazySlice` of it), never a tensor of the analysed graph.
"""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import lazy_evaluation
from morph_net.framework import tpu_util
from morph_net.op_regularizers import gamma_l1_regularizer


class BatchNormSourceOpHandler(grouping_op_handler.GroupingOpHandler):
  """Source OpHandler for fused batch norm ops.

  Args:
    gamma_threshold: channels with `|gamma| > gamma_threshold` are alive.
  """

  def __init__(self, gamma_threshold: float):
    super().__init__()
    self._gamma_threshold = gamma_threshold

  @property
  def is_source_op(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    """Gives each ungrouped slice its own source group, then groups as usual.

    Args:
      op: a fused batch norm op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.
    """
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        op_reg_manager.create_op_group_for_op_slice(op_slice)
    super().assign_grouping(op, op_reg_manager)

  def _get_gamma(self, op: tf.Operation) -> tf.Tensor:
    """The gamma tensor of `op`: `inputs[1]` of a fused batch norm.

    Subclasses override it for other batch-norm forms (e.g. a batch norm
    lowered to element-wise ops, whose gamma is found by pattern matching).
    """
    return op.inputs[1]

  def create_regularizer(self, op_slice):
    """Returns a `GammaL1Regularizer` over the gammas of `op_slice`.

    Args:
      op_slice: an `OpSlice` of a fused batch norm op.

    Returns:
      A `GammaL1Regularizer` over `gamma[start:start + size]`.
    """
    gamma = self._get_gamma(op_slice.op)
    start_index = op_slice.slice.start_index
    size = op_slice.slice.size
    num_gammas = lazy_evaluation.static_shape(gamma)[-1]
    if start_index == 0 and size == num_gammas:
      return gamma_l1_regularizer.GammaL1Regularizer(gamma, self._gamma_threshold)
    gamma = tpu_util.maybe_convert_to_variable(gamma)
    return gamma_l1_regularizer.GammaL1Regularizer(
        lazy_evaluation.LazySlice(gamma, start_index, size),
        self._gamma_threshold)
