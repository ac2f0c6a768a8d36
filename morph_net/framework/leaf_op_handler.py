"""OpHandler for ops that end the crawl (inputs, reshapes, random ops, ...).

A leaf op never looks at, nor queues, its inputs: channels do not propagate
through it towards the input. It only groups with its same-size passthrough
consumers.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import op_handler
from morph_net.framework import op_handler_util


class LeafOpHandler(op_handler.OpHandler):
  """OpHandler for leaf ops: groups with outputs only, never with inputs."""

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups `op` with its same-size passthrough outputs once none is pending.

    While some output is ungrouped or of another size, the op only gets its
    own group (if it has none) and the pending outputs are queued.

    Args:
      op: The op to assign a grouping to.
      op_reg_manager: The `OpRegularizerManager` analysing the graph.
    """
    output_ops_to_group, output_ops_to_process = (
        op_handler_util.split_output_ops(op, op_reg_manager))

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

    if not output_ops_to_process:
      op_handler_util.group_op_with_inputs_and_outputs(
          op, [], output_op_slices, aligned_op_slice_sizes, op_reg_manager)
    else:
      is_source = op_reg_manager.is_source_op(op)
      for op_slice in op_reg_manager.get_op_slices(op):
        if op_reg_manager.get_op_group(op_slice) is None:
          op_reg_manager.create_op_group_for_op_slice(op_slice, is_source=is_source)
      op_reg_manager.process_ops(output_ops_to_process)

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')
