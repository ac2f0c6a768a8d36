"""OpHandler for channel splits (`Split`, `SplitV`): the mirror of a concat.

Beyond the original library, which had no handler for them (an unknown type
became element-wise, and a split's consumers, each with a fraction of its
channels, waited forever for a neighbour of their own size: the manager gave
up after ~14,000 handler calls on a CSPNet).

A split along the channel axis hands each output `j` the channels
`[start_j, start_j + size_j)` of its input (CSPNet's half split:
`x1, x2 = split(x, 2, axis=-1)`). The op's channels, for MorphNet, are those of
its input (`get_op_size` is the sum of its outputs); the handler

* groups the split's channels one to one with its input (like an
  element-wise op with one data input);
* slices the split at its output boundaries, and groups the range of output
  `j` one to one with every same-size passthrough consumer of that output (an
  `Add`, a `Relu`, a batch norm ...), as a concat groups its output with the
  stacked channels of its inputs; other consumers (a convolution, which does
  not pass channels through) are only queued.

The consumers never look at the split themselves: `op_handler_util.
get_input_ops` skips a channel split (its whole size is not theirs), and a
concat reads the range of the output it consumes (see `concat_op_handler`).
The cost calculator reads the range of the split's regularizer that an
output carries (`regularizer_of_tensor`).

A split along another axis gives every output all the channels of the input:
it is handled like an element-wise op (`GroupingOpHandler` on its data
input).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, List

import tensorflow as tf

from morph_net.framework import concat_and_slice_regularizers
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handler
from morph_net.framework import op_handler_util

SPLIT_OP_TYPES = op_handler_util.SPLIT_OP_TYPES


class SplitOpHandler(op_handler.OpHandler):
  """OpHandler for `Split` / `SplitV` ops (see the module docstring)."""

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """This handler for a channel split; an element-wise handler otherwise."""
    if op_handler_util.is_channel_split(op):
      return self
    return grouping_op_handler.GroupingOpHandler(
        [op_handler_util.split_value_index(op)])

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups the split with its input and each output range with its consumers.

    Args:
      op: a `Split` or `SplitV` op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.
    """
    if not op_handler_util.is_channel_split(op):
      self.handler_for_op(op).assign_grouping(op, op_reg_manager)
      return
    op_handler_util.slice_at_split_boundaries(op, op_reg_manager)
    to_process: List[tf.Operation] = []
    for index, (start, size) in enumerate(op_handler_util.split_output_ranges(op)):
      self._group_output(op, index, start, size, op_reg_manager, to_process)
    # Queued first: if the input is pending, the split is re-queued after it.
    op_reg_manager.process_ops(to_process)
    self._group_input(op, op_reg_manager)

  def _group_input(self, op, op_reg_manager) -> None:
    """Groups the split one to one with its data input (as element-wise ops do).

    Unlike `GroupingOpHandler`, consumers are never grouped with the whole
    split, even when one (e.g. a concat of all outputs, maybe reordered) has
    the split's size: they are grouped per output range above.
    """
    input_ops = op_handler_util.get_input_ops(
        op, op_reg_manager, [op_handler_util.split_value_index(op)])
    input_ops = [input_op for input_op in input_ops
                 if op_handler_util.get_op_size(input_op) == op_handler_util.get_op_size(op)]
    if not input_ops:
      return
    input_ops_to_process = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)
    aligned = op_handler_util.get_aligned_op_slice_sizes(
        op_reg_manager.get_op_slices(op),
        op_handler_util.get_op_slices(input_ops, op_reg_manager), [])
    op_handler_util.reslice_ops(input_ops + [op], aligned, op_reg_manager)
    op_handler_util.group_aligned_input_output_slices(
        op, input_ops_to_process, [],
        op_handler_util.get_op_slices(input_ops, op_reg_manager), [], aligned,
        op_reg_manager)

  def _group_output(self, op, index, start, size, op_reg_manager,
                    to_process: List[tf.Operation]) -> None:
    """Aligns and groups the range of output `index` with its consumers."""
    consumers = [consumer for consumer in op.outputs[index].consumers()
                 if consumer in op_reg_manager.ops]
    for consumer in op_handler_util.get_ops_without_groups(consumers,
                                                           op_reg_manager):
      if consumer not in to_process:
        to_process.append(consumer)
    to_group = [
        consumer for consumer in
        op_handler_util.remove_non_passthrough_ops(consumers, op_reg_manager)
        if op_handler_util.get_op_size(consumer) == size]
    if not to_group:
      return
    range_slices = op_handler_util.get_range_slices(op, start, size,
                                                    op_reg_manager)
    aligned = op_handler_util.get_aligned_sizes(
        op_handler_util.get_op_slice_sizes(
            [range_slices] + [op_reg_manager.get_op_slices(consumer)
                              for consumer in to_group]))
    op_handler_util.reslice_range(op, start, size, aligned, op_reg_manager)
    op_handler_util.reslice_ops(to_group, aligned, op_reg_manager)
    range_slices = op_handler_util.get_range_slices(op, start, size,
                                                    op_reg_manager)
    consumer_slices = op_handler_util.get_op_slices(to_group, op_reg_manager)
    for position, range_slice in enumerate(range_slices):
      members = [range_slice] + [slices[position] for slices in consumer_slices]
      groups = {id(op_reg_manager.get_op_group(member)) for member in members}
      if len(groups) != 1 or op_reg_manager.get_op_group(range_slice) is None:
        op_reg_manager.group_op_slices(members)

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')


# manager -> {(split op, output index): (regularizer of the op, its slice)}.
_tensor_regularizers = weakref.WeakKeyDictionary()


@tf.autograph.experimental.do_not_convert
def regularizer_of_tensor(op_reg_manager: Any, tensor: tf.Tensor) -> Any:
  """The `OpRegularizer` of the channels of `tensor`, or None.

  `op_reg_manager.get_regularizer(tensor.op)`, except for an output of a
  channel split, whose channels are a range of the split's: the regularizer
  is then the slice of the split's regularizer for that range.

  Args:
    op_reg_manager: the `OpRegularizerManager` of the network.
    tensor: a tensor of the analysed graph.

  Returns:
    An `OpRegularizer` or None.
  """
  op = tensor.op
  regularizer = op_reg_manager.get_regularizer(op)
  if regularizer is None or not op_handler_util.is_channel_split(op):
    return regularizer
  start, size = op_handler_util.split_output_ranges(op)[tensor.value_index]
  try:
    cache = _tensor_regularizers.setdefault(op_reg_manager, {})
  except TypeError:  # Not weak-referenceable (e.g. a test double).
    cache = {}
  key = (op, tensor.value_index)
  cached = cache.get(key)
  if cached is not None and cached[0] is regularizer:
    return cached[1]
  sliced = concat_and_slice_regularizers.SlicingReferenceRegularizer(
      functools.partial(_identity, regularizer), start, size)
  cache[key] = (regularizer, sliced)
  return sliced


def _identity(value: Any) -> Any:
  return value
