"""Helpers shared by the op handlers: neighbours, sizes, slice alignment, grouping.

Vocabulary used below:
  * an op's *slices* are the ordered `OpSlice`s the `OpRegularizerManager`
    keeps for it; their sizes sum to the op size (`get_op_size`);
  * *aligned* sizes are the coarsest common refinement of several slicings of
    the same total size (`get_aligned_sizes`);
  * *pending* neighbours are ops queued for processing with `process_ops`.
"""

from __future__ import annotations

import collections
import re
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

# Op types whose size is the sum of the sizes of all their outputs (when they
# split the channel axis: see `is_channel_split`).
OP_TYPES_WITH_MULTIPLE_OUTPUTS = ('SplitV',)

# Split op types (beyond the original: `Split` too, and only along channels).
SPLIT_OP_TYPES = ('Split', 'SplitV')

# Index of the weight input of op types that have one. Conv3D is absent, as in
# the original.
WEIGHTS_INDEX_DICT: Dict[str, int] = {
    'Conv2D': 1,
    'Conv2DBackpropInput': 1,
    'DepthwiseConv2dNative': 1,
    'MatMul': 1,
}

# Ops already warned about for a statically unknown channel dimension.
_ops_with_unknown_size = weakref.WeakSet()


def op_type_counts(ops: Sequence[tf.Operation]) -> str:
  """`ops` counted by type, most frequent first: 'AddV2 x10, Mul x5'."""
  counts = collections.Counter(op.type for op in ops)
  return ', '.join(f'{kind} x{count}' for kind, count in counts.most_common())


def get_input_ops(op: tf.Operation, op_reg_manager: Any,
                  whitelist_indices: Optional[Sequence[int]] = None,
                  *, include_channel_splits: bool = False
                  ) -> List[tf.Operation]:
  """Returns the producer ops of `op`'s inputs, in input order.

  Duplicates are kept. Skipped: inputs whose index is not in
  `whitelist_indices`, the weight input of the op type (`WEIGHTS_INDEX_DICT`),
  inputs produced by a `Const` op, and producers the manager does not know.
  Beyond the original, a channel split (`is_channel_split`) is skipped too
  unless `include_channel_splits`: an input of `op` holds only one output
  range of its channels, and the split's handler groups that range with `op`
  (see `split_op_handler`). A skipped split that is not grouped yet is
  queued.

  Args:
    op: The op whose inputs to return.
    op_reg_manager: The `OpRegularizerManager`; only ops in its `ops` are
      returned.
    whitelist_indices: Input indices to consider. None or empty means all.
    include_channel_splits: Also return channel splits (for handlers that
      read the range of the output they consume, e.g. a concat).

  Returns:
    A list of ops.
  """
  if 'GumbelPrefix' in op.type:
    return []
  weights_index = WEIGHTS_INDEX_DICT.get(op.type)
  manager_ops = op_reg_manager.ops
  input_ops = []
  for index, input_tensor in enumerate(op.inputs):
    if whitelist_indices and index not in whitelist_indices:
      continue
    if index == weights_index:
      continue
    input_op = input_tensor.op
    if input_op.type == 'Const':
      continue
    if input_op not in manager_ops:
      continue
    if not include_channel_splits and is_channel_split(input_op):
      if get_ops_without_groups([input_op], op_reg_manager):
        op_reg_manager.process_ops([input_op])
      continue
    input_ops.append(input_op)
  return input_ops


def split_value_index(op: tf.Operation) -> int:
  """Index of the split data input: 1 for `Split`, 0 for `SplitV`."""
  return 1 if op.type == 'Split' else 0


def _split_axis_tensor(op: tf.Operation) -> tf.Tensor:
  return op.inputs[0] if op.type == 'Split' else op.inputs[2]


def is_channel_split(op: tf.Operation) -> bool:
  """True if `op` is a `Split` / `SplitV` of the last axis into >= 2 outputs.

  The axis is read from its constant input; when it is not a constant, the
  output channel counts decide (they then sum to the input's).
  """
  if op.type not in SPLIT_OP_TYPES or len(op.outputs) < 2:
    return False
  cached = _channel_split_cache.get(op)
  if cached is None:
    cached = _channel_split_cache[op] = _compute_is_channel_split(op)
  return cached


# op -> bool; weak on ops.
_channel_split_cache = weakref.WeakKeyDictionary()


def _compute_is_channel_split(op: tf.Operation) -> bool:
  value = op.inputs[split_value_index(op)]
  rank = value.shape.rank
  if not rank:
    return False
  axis = tf.get_static_value(_split_axis_tensor(op))
  if axis is not None:
    return int(axis) % rank == rank - 1
  channels = value.shape[-1]
  out_channels = [output.shape[-1] if output.shape.rank else None
                  for output in op.outputs]
  return (channels is not None and None not in out_channels
          and sum(out_channels) == channels)


def split_output_ranges(op: tf.Operation) -> List[Tuple[int, int]]:
  """`(start, size)` of the channels of each output of a channel split."""
  ranges = []
  start = 0
  for output in op.outputs:
    size = int(output.shape[-1])
    ranges.append((start, size))
    start += size
  return ranges


def get_range_slices(op: tf.Operation, start: int, size: int,
                     op_reg_manager: Any) -> List[Any]:
  """The slices of `op` within channels `[start, start + size)`.

  Raises:
    ValueError: the slicing of `op` has no boundary at `start` or at
      `start + size` (slice it first, e.g. `slice_at_split_boundaries`).
  """
  result = []
  end = start + size
  for op_slice in op_reg_manager.get_op_slices(op):
    begin = op_slice.slice.start_index
    finish = begin + op_slice.slice.size
    if finish <= start or begin >= end:
      continue
    if begin < start or finish > end:
      raise ValueError(
          f'Op {op.name} is not sliced at channels {start} and {end}. '
          f'Received: slices {[str(s.slice) for s in op_reg_manager.get_op_slices(op)]}.')
    result.append(op_slice)
  return result


def slice_at_split_boundaries(op: tf.Operation, op_reg_manager: Any) -> None:
  """Refines the slicing of a channel split so each output range is whole."""
  current = get_op_slice_sizes([op_reg_manager.get_op_slices(op)])[0]
  boundaries = [size for _, size in split_output_ranges(op)]
  aligned = get_aligned_sizes([current, boundaries])
  if aligned != current:
    op_reg_manager.slice_op(op, aligned)


def reslice_range(op: tf.Operation, start: int, size: int,
                  sizes: Sequence[int], op_reg_manager: Any) -> None:
  """Slices channels `[start, start + size)` of `op` into `sizes`.

  The slices outside the range are kept; the range must already be whole
  (see `get_range_slices`) and `sizes` must refine its slicing.
  """
  all_sizes = get_op_slice_sizes([op_reg_manager.get_op_slices(op)])[0]
  range_sizes = [s.slice.size for s in get_range_slices(op, start, size,
                                                         op_reg_manager)]
  if range_sizes == list(sizes):
    return
  before, position = [], 0
  for slice_size in all_sizes:
    if position >= start:
      break
    before.append(slice_size)
    position += slice_size
  after = all_sizes[len(before) + len(range_sizes):]
  op_reg_manager.slice_op(op, before + list(sizes) + after)


def get_output_ops(op: tf.Operation, op_reg_manager: Any) -> List[tf.Operation]:
  """Returns the consumer ops of all outputs of `op`, de-duplicated, in order.

  Args:
    op: The op whose consumers to return.
    op_reg_manager: The `OpRegularizerManager`; only ops in its `ops` are
      returned.

  Returns:
    A list of ops.
  """
  manager_ops = op_reg_manager.ops
  output_ops = []
  for output_tensor in op.outputs:
    for output_op in output_tensor.consumers():
      if output_op not in output_ops and output_op in manager_ops:
        output_ops.append(output_op)
  return output_ops


def get_ops_without_groups(ops: Sequence[tf.Operation],
                           op_reg_manager: Any) -> List[tf.Operation]:
  """Returns the ops having at least one OpSlice without an OpGroup.

  Ops of size 0 have no slices and never qualify.

  Args:
    ops: The ops to check.
    op_reg_manager: The `OpRegularizerManager`.

  Returns:
    A list of ops, in the order of `ops`.
  """
  ops_without_groups = []
  for op in ops:
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        ops_without_groups.append(op)
        break
  return ops_without_groups


def remove_non_passthrough_ops(ops: Sequence[tf.Operation],
                               op_reg_manager: Any) -> List[tf.Operation]:
  """Returns the ops of `ops` whose handler is passthrough, in order."""
  return [op for op in ops if op_reg_manager.is_passthrough(op)]


def group_op_with_inputs_and_outputs(
    op: tf.Operation, input_op_slices: Sequence[Sequence[Any]],
    output_op_slices: Sequence[Sequence[Any]],
    aligned_op_slice_sizes: Sequence[int], op_reg_manager: Any) -> bool:
  """Groups the slices of `op` with the aligned slices of its neighbours.

  For each slice index i: if the op's slice i has no group, it is grouped with
  the i-th slice of every input and output in one call. Otherwise (a) if any
  output slice i is in another group, the op slice is merged with the output
  slices; then (b) if any input slice i is in another group than the
  (refreshed) op group, the op slice is merged with the input slices, after
  warning about potential overregularization when both sides bring sources.

  Args:
    op: The op to group.
    input_op_slices: One list of slices per input op, aligned with the op.
    output_op_slices: One list of slices per output op, aligned with the op.
    aligned_op_slice_sizes: The aligned slice sizes of the op.
    op_reg_manager: The `OpRegularizerManager`.

  Returns:
    True if (a) or (b) merged groups for some slice.
  """
  op_slices = op_reg_manager.get_op_slices(op)
  op_group_changed = False
  for index in range(len(aligned_op_slice_sizes)):
    op_slice = op_slices[index]
    input_op_slices_at_index = [slices[index] for slices in input_op_slices]
    output_op_slices_at_index = [slices[index] for slices in output_op_slices]

    op_group = op_reg_manager.get_op_group(op_slice)
    if op_group is None:
      op_reg_manager.group_op_slices(
          [op_slice] + input_op_slices_at_index + output_op_slices_at_index)
      continue

    output_groups = [op_reg_manager.get_op_group(output_op_slice)
                     for output_op_slice in output_op_slices_at_index]
    if any(group is not op_group for group in output_groups):
      op_reg_manager.group_op_slices([op_slice] + output_op_slices_at_index)
      op_group_changed = True

    op_group = op_reg_manager.get_op_group(op_slice)
    input_groups = [op_reg_manager.get_op_group(input_op_slice)
                    for input_op_slice in input_op_slices_at_index]
    if any(group is not op_group for group in input_groups):
      op_source_slices = _get_source_op_slices([op_slice], op_reg_manager)
      input_source_slices = _get_source_op_slices(
          input_op_slices_at_index, op_reg_manager)
      if op_source_slices and any(
          source not in op_source_slices for source in input_source_slices):
        logging.warning(
            'Potential overregularization near %s: its group, with sources %s, '
            'is merged with input sources %s, so these channels are '
            'regularized by several sources.', op.name, op_source_slices,
            input_source_slices)
      op_reg_manager.group_op_slices([op_slice] + input_op_slices_at_index)
      op_group_changed = True
  return op_group_changed


def get_concat_input_op_slices(concat_ops: Sequence[tf.Operation],
                               op_reg_manager: Any) -> List[List[Any]]:
  """Returns `[slices of all concat inputs, stacked in order]` (one list)."""
  concat_input_op_slices = []
  for concat_op in concat_ops:
    concat_input_op_slices.extend(op_reg_manager.get_op_slices(concat_op))
  return [concat_input_op_slices]


def get_op_slices(ops: Sequence[tf.Operation],
                  op_reg_manager: Any) -> List[List[Any]]:
  """Returns the slice list of each op of `ops`, dropping empty lists."""
  op_slices = [op_reg_manager.get_op_slices(op) for op in ops]
  return [slices for slices in op_slices if slices]


def get_op_slice_sizes(op_slices: Sequence[Sequence[Any]]) -> List[List[int]]:
  """Returns the slice sizes of each list of OpSlices."""
  return [[op_slice.slice.size for op_slice in slices] for slices in op_slices]


def get_aligned_op_slice_sizes(op_slices: Sequence[Any],
                               input_op_slices: Sequence[Sequence[Any]],
                               output_op_slices: Sequence[Sequence[Any]]
                               ) -> List[int]:
  """Returns the aligned sizes of the inputs, the outputs and the op.

  Args:
    op_slices: The slices of the op.
    input_op_slices: One list of slices per input op.
    output_op_slices: One list of slices per output op.

  Returns:
    The coarsest slicing refining every given slicing.

  Raises:
    ValueError: the total sizes differ.
  """
  sizes = (get_op_slice_sizes(input_op_slices)
           + get_op_slice_sizes(output_op_slices)
           + get_op_slice_sizes([op_slices]))
  return get_aligned_sizes(sizes)


def get_aligned_sizes(op_slice_sizes: Sequence[Sequence[int]]) -> List[int]:
  """Returns the coarsest common refinement of several slicings.

  The boundaries of the result are the union of the cumulative boundaries of
  every slicing. Example: `[[5, 4, 2, 7], [9, 4, 5], [18]]` gives
  `[5, 4, 2, 2, 5]`.

  Args:
    op_slice_sizes: Lists of slice sizes, all with the same total.

  Returns:
    A list of sizes.

  Raises:
    ValueError: `op_slice_sizes` is empty or the totals differ.
  """
  if not op_slice_sizes:
    raise ValueError('Cannot align empty op slice lists.')
  totals = [sum(sizes) for sizes in op_slice_sizes]
  if any(total != totals[0] for total in totals):
    raise ValueError(
        f'Total size for op slices do not match: {[list(s) for s in op_slice_sizes]}. '
        f'Received totals {totals}; all slicings to align must cover the same '
        'number of channels.')
  boundaries = set()
  for sizes in op_slice_sizes:
    cumulative = 0
    for size in sizes:
      cumulative += size
      boundaries.add(cumulative)
  aligned = []
  previous = 0
  for boundary in sorted(boundaries):
    if boundary > previous:
      aligned.append(boundary - previous)
      previous = boundary
  return aligned


def _get_num_slices(op_slice_sizes: Sequence[Sequence[int]]) -> int:
  """Returns the largest number of slices among the slicings."""
  return max(len(sizes) for sizes in op_slice_sizes)


def reslice_concat_ops(concat_ops: Sequence[tf.Operation],
                       aligned_op_slice_sizes: Sequence[int],
                       op_reg_manager: Any) -> None:
  """Reslices the inputs of a concat so they match the aligned sizes.

  The inputs are walked with a cursor into `aligned_op_slice_sizes`: an input
  whose sizes equal the next entries is left alone; otherwise it is sliced into
  as many aligned entries as needed to cover its size. Example: inputs of sizes
  5, [3, 3] and 7 with aligned sizes `[5, 4, 2, 2, 5]` slice the second input
  into `[4, 2]` and the third into `[2, 5]`.

  Args:
    concat_ops: The concat's input ops, in input order.
    aligned_op_slice_sizes: The aligned sizes of the stacked inputs.
    op_reg_manager: The `OpRegularizerManager`.

  Raises:
    ValueError: an input cannot be covered by whole aligned entries.
  """
  aligned = list(aligned_op_slice_sizes)
  cursor = 0
  for concat_op in concat_ops:
    sizes = get_op_slice_sizes([op_reg_manager.get_op_slices(concat_op)])[0]
    if sizes == aligned[cursor:cursor + len(sizes)]:
      cursor += len(sizes)
      continue
    op_size = sum(sizes)
    size_count = 0
    while (get_total_slice_size(aligned, cursor, size_count) < op_size
           and cursor + size_count < len(aligned)):
      size_count += 1
    if get_total_slice_size(aligned, cursor, size_count) != op_size:
      raise ValueError(
          f'Could not properly slice op: {concat_op.name}. Received: op size '
          f'{op_size}, aligned sizes {aligned} from index {cursor}; the '
          'concat inputs must be sliceable into whole aligned slices.')
    op_reg_manager.slice_op(concat_op, aligned[cursor:cursor + size_count])
    cursor += size_count


def get_total_slice_size(op_slice_sizes: Sequence[int], index: int,
                         slice_count: int) -> int:
  """Returns `sum(op_slice_sizes[index:index + slice_count])`."""
  return sum(op_slice_sizes[index:index + slice_count])


def reslice_ops(ops: Sequence[tf.Operation], aligned_op_slice_sizes: Sequence[int],
                op_reg_manager: Any) -> None:
  """Slices every op with a non-empty slicing different from the aligned one."""
  aligned = list(aligned_op_slice_sizes)
  for op in ops:
    sizes = get_op_slice_sizes([op_reg_manager.get_op_slices(op)])[0]
    if sizes and sizes != aligned:
      op_reg_manager.slice_op(op, aligned)


def _get_source_op_slices(op_slices: Sequence[Any], op_reg_manager: Any) -> List[Any]:
  """Returns the de-duplicated source slices of the groups of `op_slices`."""
  source_op_slices = []
  for op_slice in op_slices:
    op_group = op_reg_manager.get_op_group(op_slice)
    if op_group is None:
      continue
    for source_op_slice in op_group.source_op_slices:
      if source_op_slice not in source_op_slices:
        source_op_slices.append(source_op_slice)
  return source_op_slices


def group_aligned_input_output_slices(
    op: tf.Operation, input_ops_to_process: Sequence[tf.Operation],
    output_ops_to_process: Sequence[tf.Operation],
    input_op_slices: Sequence[Sequence[Any]],
    output_op_slices: Sequence[Sequence[Any]],
    aligned_op_slice_sizes: Sequence[int], op_reg_manager: Any) -> None:
  """Groups `op` with its aligned neighbours, or queues what is pending.

  1. Nothing pending: group the op with its inputs and outputs.
  2. Only outputs pending: group the op with its inputs, queue the outputs.
  3. Inputs pending: queue outputs and inputs, and re-queue the op last.

  Args:
    op: The op to group.
    input_ops_to_process: Input ops that must be processed first.
    output_ops_to_process: Output ops that must be processed.
    input_op_slices: One aligned list of slices per input op to group with.
    output_op_slices: One aligned list of slices per output op to group with.
    aligned_op_slice_sizes: The aligned slice sizes of the op.
    op_reg_manager: The `OpRegularizerManager`.
  """
  if not input_ops_to_process and not output_ops_to_process:
    group_op_with_inputs_and_outputs(op, input_op_slices, output_op_slices,
                                     aligned_op_slice_sizes, op_reg_manager)
  elif not input_ops_to_process:
    group_op_with_inputs_and_outputs(op, input_op_slices, [],
                                     aligned_op_slice_sizes, op_reg_manager)
    op_reg_manager.process_ops(list(output_ops_to_process))
  else:
    op_reg_manager.process_ops(
        list(output_ops_to_process) + list(input_ops_to_process))
    op_reg_manager.process_ops_last([op])


def get_op_size(op: tf.Operation) -> int:
  """Returns the number of output channels of `op`.

  That is the static last dimension of `outputs[0]`, or the sum over all
  outputs for `OP_TYPES_WITH_MULTIPLE_OUTPUTS`. A scalar output has size 0.
  When the last dimension is not statically known the size is 0 too (the op
  then carries no channels for MorphNet) and a warning naming the op is logged
  once per op; the original crashed instead.

  Args:
    op: The op.

  Returns:
    A non-negative int.
  """
  sizes = _op_size_cache.get(op.graph)
  if sizes is None:
    sizes = _op_size_cache[op.graph] = {}
  size = sizes.get(op)
  if size is None:
    size = sizes[op] = _compute_op_size(op)
  return size


# graph -> {op: size}; weak on graphs so analysed graphs can be freed.
_op_size_cache = weakref.WeakKeyDictionary()


def _compute_op_size(op: tf.Operation) -> int:
  """get_op_size without the cache."""
  if op.type in SPLIT_OP_TYPES:
    # A channel split has the channels of its input; any other split hands
    # every output the same channels.
    outputs = list(op.outputs) if is_channel_split(op) else list(op.outputs[:1])
  elif op.type in OP_TYPES_WITH_MULTIPLE_OUTPUTS:
    outputs = list(op.outputs)
  else:
    outputs = list(op.outputs[:1])
  size = 0
  for output in outputs:
    shape = output.shape
    if shape.rank == 0:
      continue
    last_dim = None if shape.rank is None else shape[-1]
    if last_dim is None:
      _warn_unknown_size(op, shape)
      return 0
    size += int(last_dim)
  return size


def _warn_unknown_size(op: tf.Operation, shape: tf.TensorShape) -> None:
  if op in _ops_with_unknown_size:
    return
  _ops_with_unknown_size.add(op)
  logging.warning(
      'MorphNet cannot read the number of channels of op %s (%s): its output '
      'shape %s has no static last dimension, so it is given size 0 and its '
      'channels are not regularized. Give the tensor a static channel '
      'dimension (e.g. with tf.ensure_shape or set_shape) to analyse it.',
      op.name, op.type, shape)


def separate_same_size_ops(reference_op: tf.Operation, ops: Sequence[tf.Operation]
                           ) -> Tuple[List[tf.Operation], List[tf.Operation]]:
  """Splits `ops` into those with the size of `reference_op` and the others.

  Ops of size 0 are dropped from both lists.

  Args:
    reference_op: The op whose size to compare with.
    ops: The ops to split.

  Returns:
    `(same_size_ops, different_size_ops)`, each in the order of `ops`.
  """
  reference_size = get_op_size(reference_op)
  same_size_ops = []
  different_size_ops = []
  for op in ops:
    size = get_op_size(op)
    if size == 0:
      continue
    if size == reference_size:
      same_size_ops.append(op)
    else:
      different_size_ops.append(op)
  return same_size_ops, different_size_ops


def group_match(regex: str, op_slices: Sequence[Any]) -> bool:
  """True if `regex` is found (`re.search`) in the op name of any slice.

  An empty regex never matches.
  """
  if not regex:
    return False
  return any(re.search(regex, op_slice.op.name) for op_slice in op_slices)


def split_output_ops(op: tf.Operation, op_reg_manager) -> Tuple[List[tf.Operation],
                                                                 List[tf.Operation]]:
  """`(output ops to group with op, output ops to process)` of a handler.

  The passthrough consumers of `op` of the same size are grouped with it; the
  others, and every consumer that has no group yet, are (re)processed.
  """
  output_ops = get_output_ops(op, op_reg_manager)
  output_ops_without_group = get_ops_without_groups(output_ops, op_reg_manager)
  output_ops = remove_non_passthrough_ops(output_ops, op_reg_manager)
  output_ops_to_group, output_ops_to_process = separate_same_size_ops(op, output_ops)
  for output_op in output_ops_without_group:
    if output_op not in output_ops_to_process:
      output_ops_to_process.append(output_op)
  return output_ops_to_group, output_ops_to_process
