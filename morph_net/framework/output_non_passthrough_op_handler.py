"""OpHandler for ops that take their grouping from their consumers only.

The default for `Conv2D`, `MatMul`, ... under gamma regularization: the output
channels of a convolution are regularized by what follows it (e.g. a batch
norm), and have nothing to do with its input channels, so the op groups with
its same-size passthrough consumers and never passes a grouping to its inputs.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import op_handler
from morph_net.framework import op_handler_util


class OutputNonPassthroughOpHandler(op_handler.OpHandler):
  """OpHandler grouping an op with its outputs, never with its inputs."""

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups `op` with its same-size passthrough outputs; queues the rest.

    The outputs are grouped with even if they have no group yet. Then the
    ungrouped or different-size outputs and the ungrouped inputs are queued.

    Args:
      op: The op to assign a grouping to.
      op_reg_manager: The `OpRegularizerManager` analysing the graph.
    """
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager)
    input_ops_without_group = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)

    output_ops_to_group, output_ops_to_process = (
        op_handler_util.split_output_ops(op, op_reg_manager))
    input_ops_to_process = input_ops_without_group

    op_slices = op_reg_manager.get_op_slices(op)
    output_op_slices = op_handler_util.get_op_slices(output_ops_to_group,
                                                     op_reg_manager)
    aligned_op_slice_sizes = op_handler_util.get_aligned_op_slice_sizes(
        op_slices, [], output_op_slices)
    op_handler_util.reslice_ops([op] + output_ops_to_group,
                                aligned_op_slice_sizes, op_reg_manager)
    # Reslicing replaced OpSlices: read them again.
    output_op_slices = op_handler_util.get_op_slices(output_ops_to_group,
                                                     op_reg_manager)

    op_handler_util.group_op_with_inputs_and_outputs(
        op, [], output_op_slices, aligned_op_slice_sizes, op_reg_manager)

    op_reg_manager.process_ops(output_ops_to_process + input_ops_to_process)

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')
