"""OpHandler for `DepthToSpace` ops.

`DepthToSpace` with block size B moves groups of B*B channels into a BxB
spatial block, so output channel `i` is made of B*B input channels. Like the
original, this handler groups output channel `i` with the contiguous input
channels `[i*B*B, (i+1)*B*B)`. (TensorFlow actually interleaves the channels
for more than one output channel; the contiguous mapping is kept for
fidelity.) It is not used by the default handler dictionaries, which map
`DepthToSpace` to `OutputNonPassthroughOpHandler`.
"""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import op_handler
from morph_net.framework import op_handler_util


class DepthToSpaceOpHandler(op_handler.OpHandler):
  """OpHandler for `DepthToSpace` ops."""

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    """Groups each output channel with its block of B*B input channels.

    If an input is not grouped yet, the input is queued and nothing else is
    done (the op itself is not re-queued).

    Args:
      op: a `DepthToSpace` op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.

    Raises:
      ValueError: `op` does not have exactly one input op to group with.
    """
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager)
    input_ops_without_group = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)
    if input_ops_without_group:
      op_reg_manager.process_ops(input_ops_without_group)
      return
    if len(input_ops) != 1:
      raise ValueError(
          'DepthToSpaceOpHandler expects exactly one input op inside the '
          f'analysed graph. Received: op {op.name!r} with input ops '
          f'{[input_op.name for input_op in input_ops]}.')
    input_op = input_ops[0]

    output_ops_to_group, output_ops_to_process = (
        op_handler_util.split_output_ops(op, op_reg_manager))

    block_size = op.get_attr('block_size')
    block_channels = block_size * block_size
    op_reg_manager.slice_op(
        input_op, [1] * op_handler_util.get_op_size(input_op))
    op_size = op_handler_util.get_op_size(op)
    for op_to_slice in output_ops_to_group + [op]:
      op_reg_manager.slice_op(op_to_slice, [1] * op_size)

    input_op_slices = op_reg_manager.get_op_slices(input_op)
    for i, op_slice in enumerate(op_reg_manager.get_op_slices(op)):
      op_reg_manager.group_op_slices(
          input_op_slices[i * block_channels:(i + 1) * block_channels]
          + [op_slice])

    op_reg_manager.process_ops(output_ops_to_process)

  def create_regularizer(self, op_slice):
    raise NotImplementedError('Not a source op.')
