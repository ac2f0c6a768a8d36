"""OpHandler for element-wise / channel-preserving ops (the default handler).

Ops such as `Relu`, `Add`, `Mul` or pooling keep the channels of their inputs:
channel i of the output lives or dies with channel i of every same-size input
and of every same-size passthrough consumer, so all of them are grouped.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import tensorflow as tf

from morph_net.framework import op_handler
from morph_net.framework import op_handler_util


class GroupingOpHandler(op_handler.OpHandler):
  """OpHandler grouping an op with its same-size inputs and outputs.

  Args:
    grouping_indices: Indices of the inputs to group with (e.g. `[0]` for
      resize ops, whose other input is the target size). None means all.
  """

  def __init__(self, grouping_indices: Optional[Sequence[int]] = None):
    self._grouping_indices = grouping_indices

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups `op` with its same-size inputs and passthrough outputs.

    Inputs or outputs that are ungrouped or of another size are queued; if
    inputs are pending, `op` is re-queued to be processed after them.

    Args:
      op: The op to assign a grouping to.
      op_reg_manager: The `OpRegularizerManager` analysing the graph.
    """
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager,
                                              self._grouping_indices)
    input_ops_without_group = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)

    output_ops = op_handler_util.get_output_ops(op, op_reg_manager)
    output_ops_without_group = op_handler_util.get_ops_without_groups(
        output_ops, op_reg_manager)
    # Only passthrough consumers can be grouped with.
    output_ops = op_handler_util.remove_non_passthrough_ops(
        output_ops, op_reg_manager)

    # Group with same-size neighbours; the others must be processed.
    input_ops_to_group, input_ops_to_process = (
        op_handler_util.separate_same_size_ops(op, input_ops))
    output_ops_to_group, output_ops_to_process = (
        op_handler_util.separate_same_size_ops(op, output_ops))

    # A grouped size-1 input is broadcast over the channels: nothing to wait for.
    input_ops_to_process = [
        input_op for input_op in input_ops_to_process
        if not self._is_broadcast(input_op, op_reg_manager)]

    _extend_unique(input_ops_to_process, input_ops_without_group)
    _extend_unique(output_ops_to_process, output_ops_without_group)

    # Align the slices of the op and of the neighbours to group with.
    op_slices = op_reg_manager.get_op_slices(op)
    input_op_slices, output_op_slices = self._get_input_output_op_slices(
        input_ops_to_group, output_ops_to_group, op_reg_manager)
    aligned_op_slice_sizes = op_handler_util.get_aligned_op_slice_sizes(
        op_slices, input_op_slices, output_op_slices)
    op_handler_util.reslice_ops(
        input_ops_to_group + [op] + output_ops_to_group,
        aligned_op_slice_sizes, op_reg_manager)

    # Reslicing replaced OpSlices: read them again.
    input_op_slices, output_op_slices = self._get_input_output_op_slices(
        input_ops_to_group, output_ops_to_group, op_reg_manager)

    op_handler_util.group_aligned_input_output_slices(
        op, input_ops_to_process, output_ops_to_process, input_op_slices,
        output_op_slices, aligned_op_slice_sizes, op_reg_manager)

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')

  def _is_broadcast(self, op: tf.Operation, op_reg_manager: Any) -> bool:
    """True if `op` has size 1 and all its slices are grouped."""
    if op_handler_util.get_op_size(op) != 1:
      return False
    return all(op_reg_manager.get_op_group(op_slice) is not None
               for op_slice in op_reg_manager.get_op_slices(op))

  def _get_input_output_op_slices(
      self, input_ops: Sequence[tf.Operation],
      output_ops: Sequence[tf.Operation], op_reg_manager: Any
  ) -> Tuple[List[List[Any]], List[List[Any]]]:
    """Returns the slice lists of the input ops and of the output ops."""
    return (op_handler_util.get_op_slices(input_ops, op_reg_manager),
            op_handler_util.get_op_slices(output_ops, op_reg_manager))


def _extend_unique(ops: List[tf.Operation], new_ops: Sequence[tf.Operation]) -> None:
  for new_op in new_ops:
    if new_op not in ops:
      ops.append(new_op)
