"""OpRegularizerManager: groups the channels of a graph and assigns regularizers.

The manager crawls a graph backwards from its output boundary, asks an op
handler (looked up by op type) to group the output channels of each op with
the channels of its neighbours, and gives every group of channels one
`OpRegularizer`, built from the group's source ops (e.g. batch norms).

Channels are tracked as `OpSlice`s: an op is an ordered list of slices whose
sizes sum to the op's number of channels. Slices that live or die together
share an `OpGroup`; groups may be merged, and slices split (together with all
members of their group) when neighbours disagree on the slicing.
"""

from __future__ import annotations

import collections
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence)

import tensorflow as tf
from absl import logging

from morph_net.framework import concat_and_slice_regularizers
from morph_net.framework import constant_op_regularizer
from morph_net.framework import errors
from morph_net.framework import grouping_regularizers
from morph_net.framework import op_handler_util

ITERATION_LIMIT = 1000000
# Beyond the original: the grouping loop also stops when no group was created
# and no op got its slices in max(STALL_WINDOW_MIN, STALL_WINDOW_PER_OP * ops)
# consecutive handler calls (ops waiting for each other forever: the original
# spun until `iteration_limit`, ~20-40 s). Networks that converge never go
# more than a few dozen calls without progress (measured: at most 35, on
# keras.applications ResNet50, DenseNet121, NASNetMobile, EfficientNetB0, ...).
STALL_WINDOW_MIN = 10000
STALL_WINDOW_PER_OP = 10

# Ops listed by name in a grouping error; the rest are counted by type.
MAX_OPS_LISTED = 20


def _describe_ops(ops) -> str:
  """`ops` as "['name (Type)', ...]", at most MAX_OPS_LISTED named.

  A stalled transformer lists hundreds of ops; past the limit the list ends
  with the number left out and the count of every op type, which names the
  types to give a handler.
  """
  ops = list(ops)
  listed = [f'{op.name} ({op.type})' for op in ops[:MAX_OPS_LISTED]]
  if len(ops) <= MAX_OPS_LISTED:
    return str(listed)
  return (f'{listed} and {len(ops) - MAX_OPS_LISTED} more ({len(ops)} ops by '
          f'type: {op_handler_util.op_type_counts(ops)})')


class Slice(NamedTuple('Slice', [('start_index', int), ('size', int)])):
  """A contiguous range of channels: `[start_index, start_index + size)`."""

  __slots__ = ()

  def __str__(self):
    return f'({self.start_index}, {self.size})'


class OpSlice(NamedTuple('OpSlice', [('op', Any), ('slice', Optional[Slice])])):
  """A `Slice` of the output channels of an op.

  A `None` slice stands for the whole op (only used in tests). Being tuples,
  OpSlices compare and hash by value.
  """

  __slots__ = ()

  def __str__(self):
    return f'{self.op.name} {self.slice}'

  __repr__ = __str__


class OpGroup:
  """A set of OpSlices sharing one regularizer, and the sources among them.

  Args:
    op_slice: First member, a source unless listed in `omit_source_op_slices`.
    op_groups: Groups whose members and sources are merged in, in order,
      without duplicates.
    omit_source_op_slices: Slices that are never sources of this group.
  """

  # Counts constructed groups; each group gets the current count as `_index`.
  _static_index = 0

  def __init__(self, op_slice: Optional[OpSlice] = None,
               op_groups: Optional[Sequence['OpGroup']] = None,
               omit_source_op_slices: Optional[Sequence[OpSlice]] = None):
    omitted = set(omit_source_op_slices or ())
    # Lists keep insertion order; dicts give O(1) duplicate checks, so that
    # merging ever-growing groups (deep residual stages) stays linear.
    members = {}
    sources = {}
    if op_slice is not None:
      members[op_slice] = None
      if op_slice not in omitted:
        sources[op_slice] = None
    for op_group in op_groups or []:
      for member in op_group.op_slices:
        members.setdefault(member, None)
      for source in op_group.source_op_slices:
        if source not in omitted:
          sources.setdefault(source, None)
    self._op_slices = list(members)
    self._source_op_slices = list(sources)
    self._index = OpGroup._static_index
    OpGroup._static_index += 1

  @property
  def op_slices(self) -> List[OpSlice]:
    return self._op_slices

  @property
  def source_op_slices(self) -> List[OpSlice]:
    return self._source_op_slices

  def __repr__(self):
    return (f'OpGroup(index={self._index}, op_slices={self._op_slices}, '
            f'source_op_slices={self._source_op_slices})')


class OpRegularizerManager:
  """Groups the channels of a graph's ops and creates their regularizers.

  Args:
    output_boundary: Ops where crawling starts (e.g. `[logits.op]`). May be
      empty (as in the original): nothing is crawled, and ops are grouped
      only by explicit calls (`slice_op`, `group_op_slices`,
      `create_op_group_for_op_slice`, ...).
    op_handler_dict: Mapping op type -> `OpHandler`, e.g. the `OpHandlerDict`
      of `op_handlers.get_gamma_op_handler_dict()`. None becomes an empty dict.
      An op type without a handler is never a source; when such an op has to
      be grouped, an `OpHandlerDict` applies its `unknown_op_policy` and any
      other mapping raises `UnsupportedOpError`.
    create_grouping_regularizer: Callable combining a list of at least two
      `OpRegularizer`s of one group into one.
    force_group: List of regexes; the ops whose names match one regex are
      grouped together.
    regularizer_blacklist: List of regexes; groups with a member op matching
      any of them get no regularizer.
    input_boundary: Ops at which crawling stops (they are excluded).
    iteration_limit: Maximum number of handler invocations.

  Raises:
    TypeError: `output_boundary`, `force_group` or `regularizer_blacklist` is
      not a list of the expected items.
    ValueError: `output_boundary` is None, or a force-group or blacklist
      regex cannot be applied (see the messages).
    RuntimeError: the grouping did not finish within `iteration_limit`, or
      made no progress for a long time (ops waiting for each other forever).
    UnsupportedOpError: an op without a handler had to be grouped (see
      `op_handler_dict`).
  """

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      op_handler_dict: Optional[Mapping[str, Any]] = None,
      create_grouping_regularizer: Callable[
          [List[Any]], Any] = grouping_regularizers.MaxGroupingRegularizer,
      force_group: Optional[List[str]] = None,
      regularizer_blacklist: Optional[List[str]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      iteration_limit: int = ITERATION_LIMIT):
    # As in the original, an empty output boundary builds a manager with
    # nothing crawled: handler tests call `slice_op`, `group_op_slices`, ...
    # on ops directly. The network regularizers may still reject it (see
    # `check_output_boundary`).
    output_boundary = _check_boundary(output_boundary, 'output_boundary',
                                      allow_empty=True)
    input_boundary = _check_boundary(input_boundary, 'input_boundary',
                                     allow_empty=True, allow_none=True)
    self._op_slice_dict: Dict[tf.Operation, List[OpSlice]] = {}
    self._op_group_dict: Dict[OpSlice, OpGroup] = {}
    self._op_handler_dict = op_handler_dict if op_handler_dict is not None else {}
    self._concat_regularizer_cache = {}
    self._op_regularizer_dict: Dict[OpSlice, Any] = {}
    self._op_deque = _OpQueue()
    self._all_ops = set()

    self._dfs_for_source_ops(output_boundary, input_boundary)

    iteration_count = 0
    # Handler calls since the grouping last changed (see STALL_WINDOW_MIN).
    stalled_count = 0
    stall_window = max(STALL_WINDOW_MIN, STALL_WINDOW_PER_OP * len(self._all_ops))
    marker = self._progress_marker()
    while (self._op_deque and iteration_count < iteration_limit
           and stalled_count < stall_window):
      op = self._op_deque.pop()
      self._get_handler(op).assign_grouping(op, self)
      iteration_count += 1
      new_marker = self._progress_marker()
      stalled_count = stalled_count + 1 if new_marker == marker else 0
      marker = new_marker
    if iteration_count >= iteration_limit:
      remaining = _describe_ops(self._op_deque)
      raise RuntimeError(
          f'OpRegularizerManager could not handle ops: {remaining}. It stopped '
          f'after iteration_limit={iteration_limit} handler calls. If the '
          'network is large, raise `iteration_limit`; if these ops change the '
          'number of channels in a way their handler cannot align (e.g. a '
          'SplitV), register a handler for their type (e.g. LeafOpHandler) '
          'or move the input boundary past them.')
    if stalled_count >= stall_window:
      remaining = _describe_ops(self._op_deque)
      raise RuntimeError(
          f'OpRegularizerManager could not handle ops: {remaining}. The '
          f'grouping made no progress in {stalled_count} handler calls (after '
          f'{iteration_count} in all): these ops keep waiting for neighbours '
          'whose number of channels differs from theirs and never changes. '
          'If these ops change the number of channels (e.g. a SplitV, or an '
          'op reducing or tiling the channel axis), register a handler for '
          'their type (e.g. LeafOpHandler) or move the input boundary past '
          'them.')

    self._force_group(force_group)
    self._create_regularizers(regularizer_blacklist, create_grouping_regularizer)

    # Only the ops touched during grouping are reported; the crawled ones are
    # kept apart (see `crawled_ops`).
    self._crawled_ops = frozenset(self._all_ops)
    self._all_ops = set(self._op_slice_dict.keys())

  def _progress_marker(self):
    """Changes whenever a group is created or an op gets its slices."""
    return OpGroup._static_index, len(self._op_slice_dict)

  def _force_group(self, force_group: Optional[List[str]]) -> None:
    """Merges the groups of the ops matching each regex of `force_group`."""
    force_group = force_group or []
    if not isinstance(force_group, list):
      raise TypeError(
          'force_group must be a list of regex. Received: '
          f'force_group={force_group!r} of type {type(force_group).__name__}; '
          "wrap a single regex in a list, e.g. ['conv2|conv3'].")
    for regex in force_group:
      force_group_ops = [op for op, op_slices in self._op_slice_dict.items()
                         if op_handler_util.group_match(regex, op_slices)]
      if not force_group_ops:
        raise ValueError(
            f"Regex '{regex}' did not match any ops. The regex is searched "
            '(re.search) in the names of the grouped ops; check it against '
            '`manager.ops`.')
      multi_slice_ops = [op for op in force_group_ops
                         if len(self.get_op_slices(op)) != 1]
      if multi_slice_ops:
        raise ValueError(
            'Cannot force-group ops with more than 1 OpSlice: '
            f'{[op.name for op in multi_slice_ops]}. Narrow the regex '
            f"'{regex}' to ops whose channels are not split into slices.")
      sizes = [op_handler_util.get_op_size(op) for op in force_group_ops]
      if len(set(sizes)) != 1:
        raise ValueError(
            'Cannot force-group ops with different sizes: '
            f'{[op.name for op in force_group_ops]}. Received sizes {sizes}; '
            f"narrow the regex '{regex}' to ops with the same number of "
            'channels.')
      self.group_op_slices([self.get_op_slices(op)[0] for op in force_group_ops])

  def _create_regularizers(self, regularizer_blacklist: Optional[List[str]],
                           create_grouping_regularizer: Callable[[List[Any]], Any]
                           ) -> None:
    """Creates one regularizer per group, from its sources, minus the blacklist."""
    if regularizer_blacklist and not isinstance(regularizer_blacklist, list):
      raise TypeError(
          'regularizer_blacklist must be a list of regex. Received: '
          f'regularizer_blacklist={regularizer_blacklist!r} of type '
          f"{type(regularizer_blacklist).__name__}; wrap a single regex in a "
          "list, e.g. ['conv2'].")
    blacklist_regex = ('|'.join(regularizer_blacklist)
                       if regularizer_blacklist else '')
    blacklist_used = False
    # Distinct groups, in a deterministic order.
    op_groups = list(dict.fromkeys(self._op_group_dict.values()))
    for op_group in op_groups:
      if op_handler_util.group_match(blacklist_regex, op_group.op_slices):
        blacklist_used = True
        regularizer = None
      else:
        regularizers = [
            self._get_handler(source_op_slice.op).create_regularizer(source_op_slice)
            for source_op_slice in op_group.source_op_slices]
        if not regularizers:
          regularizer = None
        elif len(regularizers) == 1:
          regularizer = regularizers[0]
        else:
          regularizer = create_grouping_regularizer(regularizers)
      for op_slice in op_group.op_slices:
        self._op_regularizer_dict[op_slice] = regularizer
    if blacklist_regex and not blacklist_used:
      raise ValueError(
          f"Blacklist regex never used: '{blacklist_regex}'. No op of a "
          'regularized group matches it (re.search on op names); fix or remove '
          'the regexes.')

  def _get_handler(self, op: tf.Operation) -> Any:
    """Returns the handler for `op`, or raises UnsupportedOpError.

    Handlers are registered per op type. A handler may decide per op (e.g. a
    `Mul` that is a decomposed batch norm vs. a plain product) by defining
    `handler_for_op(op)`, which then returns the handler to use.
    """
    try:
      handler = self._op_handler_dict[op.type]
    except KeyError:
      raise errors.UnsupportedOpError(
          op.name, op.type,
          'MorphNet has no op handler for this op type, and the op must be '
          'grouped with its neighbours.') from None
    return _dispatch(handler, op)

  def _dfs_for_source_ops(self, output_boundary: Sequence[tf.Operation],
                          input_boundary: Optional[Iterable[tf.Operation]] = None
                          ) -> None:
    """Crawls from `output_boundary` to `input_boundary`, queueing source ops.

    Iterative DFS over the data inputs. Ops of `input_boundary` are skipped and
    not followed. Every other visited op is recorded in `_all_ops`, and queued
    if its handler is a source handler.

    Args:
      output_boundary: Ops where crawling starts.
      input_boundary: Ops at which crawling stops.
    """
    input_boundary = set(input_boundary or [])
    to_visit = list(output_boundary)
    visited = set()
    while to_visit:
      op = to_visit.pop()
      visited.add(op)
      if op in input_boundary:
        continue
      self._all_ops.add(op)
      if self._is_registered_source(op):
        self.process_ops([op])
      for op_input in op.inputs:
        if op_input.op not in visited:
          to_visit.append(op_input.op)
    logging.info('OpRegularizerManager found %d ops and %d sources.',
                 len(visited), len(self._op_deque))
    # Beyond the original, which said nothing. Both results are kept as the
    # original's (an empty analysis; boundary ops that stop nothing), since
    # graph-mode scripts may rely on them; `from_keras_model` rejects both.
    if not self._all_ops and output_boundary:
      logging.warning(
          'The crawl from the output boundary found no op to analyse: every op '
          'of output_boundary is also in input_boundary (%s). Nothing is '
          'regularized or costed.', sorted(op.name for op in output_boundary))
    unreached = sorted(op.name for op in input_boundary if op not in visited)
    if unreached:
      logging.warning(
          'Ops of input_boundary are not reached from the output boundary and '
          'stop nothing: %s. The analysis runs up to the graph inputs on those '
          'paths; check that these ops lie upstream of the output boundary.',
          unreached)

  def _is_registered_source(self, op: tf.Operation) -> bool:
    """True if a handler is registered for `op.type` and it is a source.

    Unknown types are never sources (every source handler is registered), so
    the crawl does not trigger the unknown-op policy for ops that are never
    grouped (e.g. shape computations).
    """
    handler = self._op_handler_dict.get(op.type)
    return handler is not None and bool(_dispatch(handler, op).is_source_op)

  @property
  def ops(self):
    """The ops grouped by the manager (during construction: the crawled ops)."""
    return self._all_ops

  @property
  def crawled_ops(self):
    """Every op between the output and the input boundary (beyond the original).

    A superset of `ops`: it also holds ops that no grouping reached, e.g. a
    depthwise convolution between the input and a `Reshape` when no source is
    near it. The cost calculator costs the FLOP ops among them (with their
    full channel counts) so that they are not missing from the cost.
    """
    return self._crawled_ops

  def get_regularizer(self, op: tf.Operation) -> Any:
    """Returns the `OpRegularizer` of `op`'s output channels, or None.

    Slices of `op` without a regularizer get a `ConstantOpRegularizer` (zero
    regularization, all alive) when another slice has one. Several slices
    give a `ConcatRegularizer` of the per-slice regularizers.

    Args:
      op: The op.

    Returns:
      An `OpRegularizer`, or None if no slice of `op` is regularized.
    """
    op_slices = self.get_op_slices(op)
    regularizers = [self._op_regularizer_dict.get(op_slice) for op_slice in op_slices]
    if all(regularizer is None for regularizer in regularizers):
      return None
    for index, op_slice in enumerate(op_slices):
      if regularizers[index] is None:
        regularizer = constant_op_regularizer.ConstantOpRegularizer(op_slice.slice.size)
        self._op_regularizer_dict[op_slice] = regularizer
        regularizers[index] = regularizer
    if len(regularizers) == 1:
      return regularizers[0]
    # Same member objects -> same ConcatRegularizer: costs read every op's
    # regularizer at every evaluation, so building one per read would be waste.
    key = tuple(id(r) for r in regularizers)
    cached = self._concat_regularizer_cache.get(op)
    if cached is not None and cached[0] == key:
      return cached[1]
    concat = concat_and_slice_regularizers.ConcatRegularizer(regularizers)
    self._concat_regularizer_cache[op] = (key, concat)
    return concat

  def create_op_group_for_op_slice(self, op_slice: OpSlice,
                                   is_source: bool = True) -> OpGroup:
    """Creates a one-member OpGroup for `op_slice` and maps the slice to it.

    Args:
      op_slice: The OpSlice.
      is_source: Whether `op_slice` is a source of the new group.

    Returns:
      The new OpGroup.
    """
    omit_source_op_slices = [] if is_source else [op_slice]
    op_group = OpGroup(op_slice, omit_source_op_slices=omit_source_op_slices)
    self._op_group_dict[op_slice] = op_group
    return op_group

  def group_op_slices(self, op_slices: Sequence[OpSlice],
                      omit_source_op_slices: Optional[Sequence[OpSlice]] = None
                      ) -> None:
    """Merges the groups of `op_slices` (transitively) into one new OpGroup.

    A slice without a group first gets a one-member group, a source iff its
    op's handler is a source handler.

    Args:
      op_slices: The OpSlices to group.
      omit_source_op_slices: Slices that must not be sources of the new group.
    """
    existing_op_groups = []
    for op_slice in op_slices:
      op_group = self.get_op_group(op_slice)
      if op_group is None:
        op_group = self.create_op_group_for_op_slice(
            op_slice, is_source=self.is_source_op(op_slice.op))
      if op_group not in existing_op_groups:
        existing_op_groups.append(op_group)
    new_op_group = OpGroup(op_groups=existing_op_groups,
                           omit_source_op_slices=omit_source_op_slices)
    for op_slice in new_op_group.op_slices:
      self._op_group_dict[op_slice] = new_op_group

  def slice_op(self, op: tf.Operation, sizes: Sequence[int]) -> None:
    """Re-partitions `op` into slices of `sizes`, splitting whole groups.

    `sizes` must refine the current slicing. Each old slice split into k > 1
    pieces is split together with every member of its group (in the member's
    own op), and the j-th pieces of all members are grouped together. An old
    slice without a group is split alone.

    Args:
      op: The op to slice.
      sizes: The new slice sizes; they sum to the op size.

    Raises:
      ValueError: `sizes` does not refine the current slicing.
    """
    sizes = list(sizes)
    old_op_slices = self.get_op_slices(op)
    old_op_slice_sizes = op_handler_util.get_op_slice_sizes([old_op_slices])[0]
    if old_op_slice_sizes == sizes:
      return
    try:
      aligned_op_slice_sizes = op_handler_util.get_aligned_sizes(
          [old_op_slice_sizes, sizes])
    except ValueError as e:
      raise ValueError(f'Error with op: {op.name}: {e.args[0]}') from e
    if sizes != aligned_op_slice_sizes:
      raise ValueError(
          f'Cannot slice op {op.name} from sizes {old_op_slice_sizes} to {sizes}. '
          'The new sizes must split the current slices, never merge them.')

    size_index = 0
    slice_index = 0
    size_count = 1
    while size_index < len(sizes):
      op_slice = old_op_slices[slice_index]
      total_size = op_handler_util.get_total_slice_size(sizes, size_index, size_count)
      if op_slice.slice.size != total_size:
        size_count += 1
        continue
      if size_count > 1:
        op_group = self.get_op_group(op_slice)
        op_slices_to_slice = list(op_group.op_slices) if op_group else [op_slice]
        new_op_slice_group = [[] for _ in range(size_count)]
        for op_slice_to_slice in op_slices_to_slice:
          self._slice_op_slice(op_slice_to_slice, sizes, size_index, size_count,
                               new_op_slice_group)
        if op_group:
          for new_op_slices in new_op_slice_group:
            self.group_op_slices(new_op_slices)
      size_index += size_count
      slice_index += 1
      size_count = 1

  def _slice_op_slice(self, op_slice: OpSlice, sizes: Sequence[int],
                      size_index: int, size_count: int,
                      new_op_slice_group: List[List[OpSlice]]) -> None:
    """Splits `op_slice` into `sizes[size_index:size_index + size_count]`.

    Args:
      op_slice: The OpSlice to split (of any op).
      sizes: The sizes being applied to the op that triggered the split.
      size_index: Index in `sizes` of the first piece.
      size_count: Number of pieces.
      new_op_slice_group: One list per piece; the j-th new piece is appended to
        the j-th list.
    """
    op = op_slice.op
    op_slices = self.get_op_slices(op)
    op_slice_sizes = op_handler_util.get_op_slice_sizes([op_slices])[0]
    op_slice_index = op_slices.index(op_slice)

    # The mapping is removed before the source flags are computed, so the
    # pieces of this slice are not flagged as sources here: their source
    # status comes back when they are regrouped (from the op type's handler).
    if op_slice in self._op_group_dict:
      del self._op_group_dict[op_slice]

    new_sizes = (op_slice_sizes[:op_slice_index]
                 + list(sizes[size_index:size_index + size_count])
                 + op_slice_sizes[op_slice_index + 1:])
    is_source = self._get_source_slices(new_sizes, op_slices)
    is_resliced = ([False] * op_slice_index + [True] * size_count
                   + [False] * (len(op_slice_sizes) - op_slice_index - 1))
    new_op_slices = self._slice_op_with_sizes(op, new_sizes, is_source, is_resliced)
    for piece in range(size_count):
      new_op_slice_group[piece].append(new_op_slices[op_slice_index + piece])

  def _slice_op_with_sizes(self, op: tf.Operation, sizes: Sequence[int],
                           is_source: Sequence[bool], is_resliced: Sequence[bool]
                           ) -> List[OpSlice]:
    """Rebuilds the slice list of `op` for `sizes`.

    Resliced positions get new OpSlices, with a fresh source OpGroup where
    `is_source` is set; the other positions keep their existing OpSlice.

    Args:
      op: The op.
      sizes: The new slice sizes.
      is_source: Per new slice, whether it is a source.
      is_resliced: Per new slice, whether it is a new piece.

    Returns:
      The new list of OpSlices of `op`.
    """
    old_op_slices = {(s.slice.start_index, s.slice.size): s
                     for s in self._op_slice_dict.get(op, [])}
    new_op_slices = []
    start_index = 0
    for index, size in enumerate(sizes):
      existing = old_op_slices.get((start_index, size))
      if is_resliced[index] or existing is None:
        new_op_slice = OpSlice(op, Slice(start_index, size))
        if is_source[index]:
          self.create_op_group_for_op_slice(new_op_slice)
      else:
        new_op_slice = existing
      new_op_slices.append(new_op_slice)
      start_index += size
    self._op_slice_dict[op] = new_op_slices
    return new_op_slices

  def _get_source_slices(self, sizes: Sequence[int],
                         op_slices: Sequence[OpSlice]) -> List[bool]:
    """For each new size, whether the old slice covering it is a source.

    Example: old slices of sizes `[3, 7]` with only the first a source and new
    sizes `[1, 2, 3, 4]` give `[True, True, False, False]`.

    Args:
      sizes: New sizes refining the old slices.
      op_slices: The old OpSlices.

    Returns:
      A list of bools, one per new size.
    """
    is_source = []
    slice_index = 0
    slice_end = op_slices[0].slice.size if op_slices else 0
    position = 0
    for size in sizes:
      while slice_index < len(op_slices) - 1 and position >= slice_end:
        slice_index += 1
        slice_end += op_slices[slice_index].slice.size
      op_slice = op_slices[slice_index]
      op_group = self.get_op_group(op_slice)
      is_source.append(op_group is not None
                       and op_slice in op_group.source_op_slices)
      position += size
    return is_source

  def process_ops(self, ops: Iterable[tf.Operation]) -> None:
    """Queues (to be processed next) the ops of `ops` known and not yet queued."""
    for op in ops:
      if op in self._all_ops and op not in self._op_deque:
        self._op_deque.append(op)

  def process_ops_last(self, ops: Iterable[tf.Operation]) -> None:
    """Queues (to be processed last) the ops of `ops` not yet queued."""
    for op in ops:
      if op not in self._op_deque:
        self._op_deque.appendleft(op)

  def is_source_op(self, op: tf.Operation) -> bool:
    """True if the handler of `op.type` is a source handler."""
    return self._get_handler(op).is_source_op

  def is_passthrough(self, op: tf.Operation) -> bool:
    """True if the handler of `op.type` is passthrough."""
    return self._get_handler(op).is_passthrough

  def get_op_slices(self, op: tf.Operation) -> List[OpSlice]:
    """Returns the OpSlices of `op`, creating `[(0, size)]` (or `[]`) lazily."""
    if op not in self._op_slice_dict:
      size = op_handler_util.get_op_size(op)
      self._op_slice_dict[op] = [OpSlice(op, Slice(0, size))] if size > 0 else []
    return self._op_slice_dict[op]

  def get_op_group(self, op_slice: OpSlice) -> Optional[OpGroup]:
    """Returns the OpGroup of `op_slice`, or None."""
    return self._op_group_dict.get(op_slice)


def check_output_boundary(output_boundary: Any) -> List[tf.Operation]:
  """Validates an output boundary that must not be empty; returns it as a list.

  `OpRegularizerManager` accepts an empty output boundary, as the original
  does; callers for which an empty boundary can only be a mistake (a network
  regularizer would cost nothing) check it with this function.

  Raises:
    TypeError: `output_boundary` is not a list of `tf.Operation`s.
    ValueError: `output_boundary` is None or empty.
  """
  return _check_boundary(output_boundary, 'output_boundary', allow_empty=False)


def _check_boundary(boundary: Any, name: str, allow_empty: bool,
                    allow_none: bool = False) -> List[tf.Operation]:
  """Validates a boundary argument: a list of `tf.Operation`s."""
  if boundary is None:
    if allow_none:
      return []
    raise ValueError(
        f'{name} must be a list of tf.Operation. Received: {name}=None; '
        'pass the ops of the network outputs, e.g. [logits.op].')
  if isinstance(boundary, (tf.Operation, tf.Tensor)) or not isinstance(
      boundary, (list, tuple, set, frozenset)):
    raise TypeError(
        f'{name} must be a list of tf.Operation. Received: {name}={boundary!r} '
        f'of type {type(boundary).__name__}; pass e.g. [logits.op].')
  boundary = list(boundary)
  if not boundary and not allow_empty:
    raise ValueError(
        f'{name} must be a non-empty list of tf.Operation. Received: {name}=[]; '
        'pass the ops of the network outputs, e.g. [logits.op].')
  for item in boundary:
    if isinstance(item, tf.Operation):
      continue
    if tf.is_tensor(item) and hasattr(item, 'op'):
      raise TypeError(
          f'{name} must contain tf.Operation objects, not tensors. Received: '
          f'the tensor {item.name!r}; pass `tensor.op` (e.g. [logits.op]).')
    raise TypeError(
        f'{name} must contain tf.Operation objects. Received: {item!r} of type '
        f'{type(item).__name__}; pass e.g. [logits.op].')
  return boundary


def _dispatch(handler: Any, op: tf.Operation) -> Any:
  """The handler to use for `op`: `handler.handler_for_op(op)` if defined."""
  handler_for_op = getattr(handler, 'handler_for_op', None)
  return handler_for_op(op) if handler_for_op is not None else handler


class _OpQueue(collections.deque):
  """A deque of ops with O(1) membership tests (the work queue of the manager)."""

  def __init__(self):
    super().__init__()
    self._counts = collections.Counter()

  def append(self, op):
    super().append(op)
    self._counts[op] += 1

  def appendleft(self, op):
    super().appendleft(op)
    self._counts[op] += 1

  def pop(self):
    op = super().pop()
    self._discard(op)
    return op

  def popleft(self):
    op = super().popleft()
    self._discard(op)
    return op

  def clear(self):
    super().clear()
    self._counts.clear()

  def _discard(self, op):
    self._counts[op] -= 1
    if self._counts[op] <= 0:
      del self._counts[op]

  def __contains__(self, op):
    return op in self._counts
