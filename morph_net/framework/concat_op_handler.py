"""OpHandler for concatenation ops (`ConcatV2`).

A concat along the channel axis stacks the channels of its inputs: channel `i`
of the concat is one channel of exactly one input. The handler aligns the
slices of the stacked inputs with the slices of the concat (and of its
same-size passthrough consumers) and groups slice `i` of the concat with the
`i`-th piece of the stacked inputs. An input produced by a channel split
stacks only the range of the split's channels that its output holds (beyond
the original; see `split_op_handler`). A concat along any other axis keeps the
channels of its inputs (which all have the same size) and is handled like an
element-wise op.
"""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handler
from morph_net.framework import op_handler_util


class ConcatOpHandler(op_handler.OpHandler):
  """OpHandler for `ConcatV2` ops."""

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    """Groups the channels of a concat with the stacked channels of its inputs.

    Args:
      op: a `ConcatV2` op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.

    Raises:
      UnsupportedOpError: the concat axis is not a constant.
    """
    concat_axis = _get_concat_op_axis(op)
    rank = op.inputs[0].shape.rank
    if concat_axis != -1 and (rank is None or concat_axis != rank - 1):
      # Not a channel concat: every input has the op's channels, as for an
      # element-wise op.
      grouping_op_handler.GroupingOpHandler().assign_grouping(op, op_reg_manager)
      return

    # All inputs are stacked into the concat; ungrouped ones must be processed
    # first.
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager,
                                              include_channel_splits=True)
    input_ops_to_process = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)
    pieces = _input_pieces(op, op_reg_manager)
    if any(piece[1] is not None for piece in pieces):
      _assign_grouping_with_ranges(op, pieces, input_ops_to_process,
                                   op_reg_manager)
      return

    # Outputs: note the ungrouped ones before keeping passthrough ops only.
    output_ops_to_group, output_ops_to_process = (
        op_handler_util.split_output_ops(op, op_reg_manager))

    # Align the stacked input slices, the outputs and the concat itself.
    input_op_slices, output_op_slices = self._get_input_output_op_slices(
        input_ops, output_ops_to_group, op_reg_manager)
    aligned_op_slice_sizes = op_handler_util.get_aligned_op_slice_sizes(
        op_reg_manager.get_op_slices(op), input_op_slices, output_op_slices)
    op_handler_util.reslice_concat_ops(
        input_ops, aligned_op_slice_sizes, op_reg_manager)
    op_handler_util.reslice_ops(
        output_ops_to_group + [op], aligned_op_slice_sizes, op_reg_manager)

    # Reslicing replaced OpSlices: read them again before grouping.
    input_op_slices, output_op_slices = self._get_input_output_op_slices(
        input_ops, output_ops_to_group, op_reg_manager)
    op_handler_util.group_aligned_input_output_slices(
        op, input_ops_to_process, output_ops_to_process, input_op_slices,
        output_op_slices, aligned_op_slice_sizes, op_reg_manager)

  def create_regularizer(self, op_slice):
    raise NotImplementedError('Not a source op.')

  def _get_input_output_op_slices(self, input_ops, output_ops, op_reg_manager):
    """Returns ([stacked input slices], [slices of each output op]).

    A method, as in the original (subclasses may override it).

    Args:
      input_ops: the concat's input ops, in order.
      output_ops: the output ops to group with the concat.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.
    """
    return _get_input_output_op_slices(input_ops, output_ops, op_reg_manager)


def _input_pieces(op, op_reg_manager):
  """`(input op, (start, size) or None)` per stacked input, in order.

  The range is that of a channel split's output; None means the whole op.
  """
  pieces = []
  for tensor in op.inputs[:-1]:
    input_op = tensor.op
    if input_op.type == 'Const' or input_op not in op_reg_manager.ops:
      continue
    if op_handler_util.is_channel_split(input_op):
      pieces.append((input_op, op_handler_util.split_output_ranges(
          input_op)[tensor.value_index]))
    else:
      pieces.append((input_op, None))
  return pieces


def _piece_slices(piece, op_reg_manager):
  input_op, channel_range = piece
  if channel_range is None:
    return op_reg_manager.get_op_slices(input_op)
  op_handler_util.slice_at_split_boundaries(input_op, op_reg_manager)
  return op_handler_util.get_range_slices(input_op, *channel_range,
                                          op_reg_manager)


def _assign_grouping_with_ranges(op, pieces, input_ops_to_process,
                                 op_reg_manager) -> None:
  """`assign_grouping` when some stacked input is a channel split's output."""
  output_ops_to_group, output_ops_to_process = (
      op_handler_util.split_output_ops(op, op_reg_manager))

  def stacked():
    return [[s for piece in pieces for s in _piece_slices(piece, op_reg_manager)]]

  aligned = op_handler_util.get_aligned_op_slice_sizes(
      op_reg_manager.get_op_slices(op), stacked(),
      op_handler_util.get_op_slices(output_ops_to_group, op_reg_manager))
  cursor = 0
  for piece in pieces:
    input_op, channel_range = piece
    sizes = [s.slice.size for s in _piece_slices(piece, op_reg_manager)]
    total, count = 0, 0
    while total < sum(sizes):
      total += aligned[cursor + count]
      count += 1
    new_sizes = aligned[cursor:cursor + count]
    if channel_range is None:
      op_reg_manager.slice_op(input_op, new_sizes)
    else:
      op_handler_util.reslice_range(input_op, *channel_range, new_sizes,
                                    op_reg_manager)
    cursor += count
  op_handler_util.reslice_ops(output_ops_to_group + [op], aligned,
                              op_reg_manager)
  output_op_slices = op_handler_util.get_op_slices(output_ops_to_group,
                                                   op_reg_manager)
  op_handler_util.group_aligned_input_output_slices(
      op, input_ops_to_process, output_ops_to_process, stacked(),
      output_op_slices, aligned, op_reg_manager)


def _get_input_output_op_slices(input_ops, output_ops, op_reg_manager):
  """Returns ([stacked input slices], [slices of each output op])."""
  input_op_slices = op_handler_util.get_concat_input_op_slices(
      input_ops, op_reg_manager)
  output_op_slices = op_handler_util.get_op_slices(output_ops, op_reg_manager)
  return input_op_slices, output_op_slices


def _get_concat_op_axis(op: tf.Operation) -> int:
  """Returns the concat axis of `op`, read from its last input (a constant).

  Args:
    op: a `ConcatV2` op.

  Returns:
    The axis as given to the op (it may be negative, e.g. -1).

  Raises:
    UnsupportedOpError: the axis is not a compile-time constant.
  """
  axis_tensor = op.inputs[-1]
  value = tf.get_static_value(axis_tensor)
  if value is None:
    raise errors.UnsupportedOpError(
        op.name, op.type,
        f'The concat axis must be a constant, but it is computed by op '
        f'{axis_tensor.op.name!r} ({axis_tensor.op.type}).')
  return int(value.reshape(-1)[0]) if hasattr(value, 'reshape') else int(value)
