"""Cost and regularization term of a whole network in a handful of TF ops.

`CostCalculator` builds the cost one small TF op at a time for every (op,
channel slice) pair: on DenseNet201 that is ~27,000 nodes, seconds of Python
and graph optimisation, and ~0.5 us per node at every call.
`CompiledCostCalculator` gives the same numbers (float tolerance) from index
arrays computed once, at the first evaluation:

  * sources: the vectors of the source regularizers (batch-norm gammas read
    once per variable, or any other regularizer read through its properties)
    are concatenated into one channel vector;
  * groups: grouping regularizers (max / L2 / probabilistic) become one
    segment reduction per kind over gathered source channels;
  * op sides: the input and output channels of every costed op map to the
    regularizers of their channel slices; alive counts and regularization
    sums are segment sums over them (static channel counts where there is no
    regularizer);
  * ops: the resource function is *probed* at analysis time with numbers,
    which gives, per op, the coefficients of the monomials
    `1, A_in, A_out, A_in*A_out, R_in, R_out, A_in*R_out, A_out*R_in` of its
    cost and of its term. The probe is checked at two other points; a
    resource function that is the maximum of such forms (latency: a roofline
    of compute and memory) is compiled from its components (`components`),
    checked the same way.

Evaluation is then: read the sources, a few gathers and segment sums, one
weighted sum; the number of nodes does not grow with the number of channel
slices. `get_cost(ops)` with a subset of ops compiles that subset (weighted
by how often each op is listed; the last few subsets are kept), so that only
the regularizers of those ops are read, as in the per-op path. Ops that cannot be compiled -- a shape not
known statically (the coefficient is read from the dynamic shape), a resource
function that is not of the form above -- fall back to the per-op path of
`CostCalculator`, with a warning naming them, and are added in the same
context. The per-op API (`CostCalculator`, `manager.get_regularizer`, the
resource functions) is unchanged.

Evaluation is lazy like the regularizers: a `tf.compat.v1` graph gets its own
tensors (cached per graph for the whole network), an eager call runs one
concrete function per (ops, kind), called directly (one for both kinds when
group-lasso norms are read: they dominate the call, and the first call of
either kind then traces both), and inside a `tf.function` or a
distribution-strategy replica the ops are built inline.
"""

from __future__ import annotations

import collections
import math
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from morph_net.framework import concat_and_slice_regularizers
from morph_net.framework import constant_op_regularizer
from morph_net.framework import grouping_regularizers
from morph_net.framework import lazy_evaluation
from morph_net.framework import op_handler_util
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import probabilistic_grouping_regularizer as pgr
from morph_net.framework import split_op_handler
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import resource_function as resource_function_lib
from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.op_regularizers import group_lasso_regularizer

# Probe points (A_in, A_out, R_in, R_out) from which the 8 monomial
# coefficients follow by differences, and two points where they are checked.
_PROBES = ((0., 0., 0., 0.), (1., 0., 0., 0.), (0., 1., 0., 0.),
           (1., 1., 0., 0.), (0., 0., 1., 0.), (0., 0., 0., 1.),
           (1., 0., 0., 1.), (0., 1., 1., 0.))
_CHECKS = ((3., 5., 0.75, 1.875), (7., 2., 2.5, 0.3125))
_NUM_MONOMIALS = 8
_RELATIVE_TOLERANCE = 1e-9
# Compiled programs kept per calculator (one per distinct `ops` argument).
_MAX_PROGRAMS = 16


def _monomials(a_in, a_out, r_in, r_out):
  return (1.0, a_in, a_out, a_in * a_out, r_in, r_out, a_in * r_out,
          a_out * r_in)


def _is_number(value) -> bool:
  # Not `tf.is_tensor`: its protocol check costs ~50 us per call.
  return isinstance(value, (int, float, np.number)) and not isinstance(
      value, (bool, np.bool_))


def _close(predicted: float, actual: float, scale: float) -> bool:
  return abs(predicted - actual) <= _RELATIVE_TOLERANCE * max(
      1.0, abs(actual), scale)


def fit_bilinear(fn: Callable[..., Any], op: tf.Operation,
                 is_regularization: bool) -> Optional[List[float]]:
  """The 8 monomial coefficients of `fn(op, is_regularization, ...)`, or None.

  Args:
    fn: A resource function `(op, is_regularization, A_in, A_out, R_in,
      R_out)`.
    op: The op.
    is_regularization: Fit the term (True) or the cost (False).

  Returns:
    The coefficients (floats) of `1, A_in, A_out, A_in*A_out,
    R_in, R_out, A_in*R_out, A_out*R_in`, or None if `fn` does not return
    numbers for `op` (e.g. a dynamic shape) or is not of that form.
  """
  with resource_function_lib.static_values():
    return _fit_bilinear(fn, op, is_regularization)


def _fit_bilinear(fn, op, is_regularization):
  """`fit_bilinear` within `resource_function.static_values()`."""
  probes = _PROBES if is_regularization else _PROBES[:4]
  values = []
  for point in probes:
    value = fn(op, is_regularization, *point)
    if not _is_number(value):
      return None
    values.append(float(value))
  v = values
  t = [0.0] * _NUM_MONOMIALS
  t[0] = v[0]
  t[1] = v[1] - v[0]
  t[2] = v[2] - v[0]
  t[3] = v[3] - v[1] - v[2] + v[0]
  if is_regularization:
    t[4] = v[4] - v[0]
    t[5] = v[5] - v[0]
    t[6] = v[6] - v[0] - t[1] - t[5]
    t[7] = v[7] - v[0] - t[2] - t[4]
  for point in _CHECKS:
    actual = fn(op, is_regularization, *point)
    if not _is_number(actual):
      return None
    terms = [c * m for c, m in zip(t, _monomials(*point))]
    if not _close(sum(terms), float(actual), sum(abs(x) for x in terms)):
      return None
  return t


def _evaluate_form(coefficients, point) -> float:
  return sum(c * m for c, m in zip(coefficients, _monomials(*point)))


class _OpCoefficients:
  """Per compiled op: cost and term coefficients of every component."""

  def __init__(self, cost: List[List[float]], term: List[List[float]]):
    self.cost = cost
    self.term = term


def compile_op(resource_function, components, op) -> Optional[_OpCoefficients]:
  """Fits the coefficients of `op`, checked against `resource_function`.

  With `components` (a list of resource functions), `resource_function` must
  equal the maximum of their costs, and its term the term of the first
  component of largest cost (the latency roofline).
  """
  with resource_function_lib.static_values():
    return _compile_op(resource_function, components, op)


def _compile_op(resource_function, components, op):
  """`compile_op` within `resource_function.static_values()`."""
  functions = list(components) if components else [resource_function]
  cost = []
  term = []
  for fn in functions:
    cost_coefficients = fit_bilinear(fn, op, False)
    term_coefficients = fit_bilinear(fn, op, True)
    if cost_coefficients is None or term_coefficients is None:
      return None
    cost.append(cost_coefficients)
    term.append(term_coefficients)
  if components:
    for point in _CHECKS:
      costs = [_evaluate_form(c, point) for c in cost]
      terms = [_evaluate_form(t, point) for t in term]
      best = 0
      for index in range(1, len(costs)):
        if costs[index] > costs[best]:
          best = index
      for is_regularization, predicted in ((False, costs[best]),
                                           (True, terms[best])):
        actual = resource_function(op, is_regularization, *point)
        if not _is_number(actual) or not _close(predicted, float(actual),
                                                abs(predicted)):
          return None
  return _OpCoefficients(cost, term)


class _Leaf:
  """A source regularizer: a run of channels in the source vector."""

  def __init__(self, regularizer, size: int, offset: int):
    self.regularizer = regularizer
    self.size = size
    self.offset = offset


class _Program:
  """Index arrays of one network; builds the cost or term in any context."""

  def __init__(self, calculator: 'CompiledCostCalculator',
               op_counts: Sequence[Tuple[tf.Operation, int]]):
    """Compiles the weighted sum over `op_counts` ((supported op, count))."""
    manager = calculator._manager  # pylint: disable=protected-access
    self._calculator = calculator
    # --- Ops and their sides. ---
    self.fallback_ops: List[tf.Operation] = []
    fallback_weights = []
    compiled_ops = []
    weights = []
    coefficients = []
    with tf.Graph().as_default():  # Probes must not add ops to user graphs.
      for op, count in op_counts:
        try:
          fitted = compile_op(calculator._resource_function,  # pylint: disable=protected-access
                              calculator._components, op)  # pylint: disable=protected-access
        except Exception as e:  # pylint: disable=broad-except
          logging.info('Op %s not compiled: %s', op.name, e)
          fitted = None
        if fitted is None:
          self.fallback_ops.append(op)
          fallback_weights.append(float(count))
        else:
          compiled_ops.append(op)
          weights.append(float(count))
          coefficients.append(fitted)
    self._weights = np.array(weights, np.float64)
    self._fallback_weights = fallback_weights
    if self.fallback_ops:
      logging.warning(
          'MorphNet cost compiler: %d op(s) are costed op by op (slower), '
          'because their resource function does not reduce to static '
          'coefficients (e.g. a shape not known statically): %s',
          len(self.fallback_ops),
          ', '.join(f'{op.name} ({op.type})' for op in self.fallback_ops[:10])
          + (' ...' if len(self.fallback_ops) > 10 else ''))
    self.num_ops = len(compiled_ops)
    self.num_components = len(coefficients[0].cost) if coefficients else 0

    # --- Regularizer slots, sources and groups. ---
    self._leaves: List[_Leaf] = []
    self._leaf_of: Dict[int, int] = {}
    self._num_source_channels = 0
    # Group blocks: kind -> list of (regularizer, size, [member leaves]).
    self._groups: Dict[str, List[Tuple[Any, int, List[_Leaf]]]] = {
        'max': [], 'prob': [], 'l2': []}
    self._slots: List[Tuple[str, int]] = []  # ('leaf', leaf idx) / (kind, idx)
    self._slot_of: Dict[int, int] = {}
    self._keep_alive = []  # Regularizers indexed by id().

    side_of: Dict[Tuple, int] = {}
    self._side_const: List[float] = []
    self._side_slots: List[List[int]] = []
    in_sides = []
    out_sides = []
    for op in compiled_ops:
      if op.type == 'ConcatV2':
        input_tensor = op.outputs[0]
      else:
        input_tensor = cost_calculator.get_input_activation(op)
      for tensor, sides in ((input_tensor, in_sides),
                            (op.outputs[0], out_sides)):
        key = self._side_key(manager, tensor)
        if key not in side_of:
          side_of[key] = len(self._side_const)
          const, slots = key[0], list(key[1])
          self._side_const.append(const)
          self._side_slots.append(slots)
        sides.append(side_of[key])
    self.num_sides = len(self._side_const)
    self._in_sides = np.array(in_sides, np.int32)
    self._out_sides = np.array(out_sides, np.int32)

    # --- Coefficient arrays: [component][monomial] -> float64[num_ops]. ---
    self._cost_coefficients = self._stack(coefficients, 'cost')
    self._term_coefficients = self._stack(coefficients, 'term')

    # --- Channel layout. ---
    self._build_layout()
    self._slot_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()
    self._reg_cache = lazy_evaluation.PerGraphCache()

  # Analysis helpers.

  def _stack(self, coefficients, kind):
    stacked = []
    for component in range(self.num_components):
      matrix = np.array([getattr(c, kind)[component] for c in coefficients],
                        np.float64).reshape(self.num_ops, _NUM_MONOMIALS)
      stacked.append([matrix[:, m] if np.any(matrix[:, m]) else None
                      for m in range(_NUM_MONOMIALS)])
    return stacked

  def _side_key(self, manager, tensor: tf.Tensor) -> Tuple:
    """(constant alive channels, tuple of slots) of the channels of `tensor`."""
    slice_regularizers = _slice_regularizers(manager, tensor.op)
    if (slice_regularizers is not None
        and op_handler_util.is_channel_split(tensor.op)):
      slice_regularizers = _split_output_slices(manager, tensor,
                                                slice_regularizers)
    if slice_regularizers is None:
      return (cost_calculator.static_channel_count(tensor), ())
    const = 0.0
    slots = []
    for size, regularizer in slice_regularizers:
      if regularizer is None or type(regularizer) is (  # pylint: disable=unidiomatic-typecheck
          constant_op_regularizer.ConstantOpRegularizer):
        const += size
      else:
        slots.append(self._slot(regularizer, size))
    return (const, tuple(slots))

  def _slot(self, regularizer, size: int) -> int:
    key = id(regularizer)
    if key in self._slot_of:
      return self._slot_of[key]
    self._keep_alive.append(regularizer)
    members = _group_members(regularizer)
    if members is None:
      slot = ('leaf', self._leaf(regularizer, size))
    else:
      kind, member_regularizers = members
      leaves = [self._leaves[self._leaf(m, size)] for m in member_regularizers]
      self._groups[kind].append((regularizer, size, leaves))
      slot = (kind, len(self._groups[kind]) - 1)
    self._slot_of[key] = len(self._slots)
    self._slots.append(slot)
    return self._slot_of[key]

  def _leaf(self, regularizer, size: int) -> int:
    key = id(regularizer)
    if key not in self._leaf_of:
      self._keep_alive.append(regularizer)
      self._leaf_of[key] = len(self._leaves)
      self._leaves.append(_Leaf(regularizer, size, self._num_source_channels))
      self._num_source_channels += size
    return self._leaf_of[key]

  def _build_layout(self):
    """Index arrays from sources to groups, slots and sides."""
    # Sources, in this order in the source channel vector: batch-norm gammas
    # (read once per variable), group-lasso kernels (norms computed here),
    # then any other regularizer (read through its properties).
    self._gamma_leaves = []
    self._lasso_leaves = []
    self._generic_leaves = []
    for leaf in self._leaves:
      spec = _gamma_source(leaf.regularizer, leaf.size)
      if spec is not None:
        self._gamma_leaves.append((leaf, spec))
        continue
      spec = _lasso_source(leaf.regularizer, leaf.size)
      if spec is not None:
        self._lasso_leaves.append((leaf, spec))
      else:
        self._generic_leaves.append(leaf)
    # Gamma sources: unique variables, read once each and concatenated.
    self._gamma_sources = []
    source_offset = {}
    total_length = 0
    starts = []
    for _, (source, begin, _, _) in self._gamma_leaves:
      key = id(source)
      if key not in source_offset:
        source_offset[key] = total_length
        total_length += int(lazy_evaluation.static_shape(source)[0])
        self._gamma_sources.append(source)
      starts.append(source_offset[key] + begin)
    # When the gamma leaves partition the variables (every channel read by
    # exactly one leaf, e.g. a batch norm sliced by a concat), the source
    # vector is the concatenation itself: no gather.
    covered = np.zeros([total_length], np.int32)
    for start, (leaf, _) in zip(starts, self._gamma_leaves):
      covered[start:start + leaf.size] += 1
    self._gamma_identity = bool(np.all(covered == 1))
    position = {}
    gather = []
    thresholds = np.zeros([total_length if self._gamma_identity else 0],
                          np.float32)
    threshold_list = []  # One per leaf.
    channel_thresholds = []  # One per gathered channel.
    # Threshold t of every leaf whose alive vector is `reg > t`.
    leaf_threshold = {}
    cursor = total_length if self._gamma_identity else 0
    for start, (leaf, (_, _, size, threshold)) in zip(starts,
                                                      self._gamma_leaves):
      if self._gamma_identity:
        position[id(leaf)] = start
        thresholds[start:start + size] = threshold
      else:
        position[id(leaf)] = cursor
        cursor += size
        gather.extend(range(start, start + size))
        channel_thresholds.extend([threshold] * size)
      threshold_list.append(threshold)
      leaf_threshold[id(leaf)] = threshold
    self._gamma_gather = np.array(gather, np.int32)
    self._gamma_thresholds = (thresholds if self._gamma_identity
                              else np.array(channel_thresholds, np.float32))
    self._gamma_uniform_threshold = (
        float(threshold_list[0])
        if threshold_list and len(set(threshold_list)) == 1 else None)
    # Group-lasso sources: one sum of squares per kernel, divided by the
    # number of reduced elements (as GroupLassoRegularizer computes it). A
    # kernel sliced along its output-channel axis (InceptionResNetV2: 455
    # leaves on 245 kernels) is summed once and its channels gathered.
    lasso_counts = []
    lasso_thresholds = []
    self._lasso_kernels = []  # (weights, reduce_dims), summed in this order.
    kernel_offset = {}
    lasso_gather = []
    lasso_length = 0
    for leaf, (weights, dims, begin, length, count,
               threshold) in self._lasso_leaves:
      key = (id(weights), dims)
      if key not in kernel_offset:
        kernel_offset[key] = lasso_length
        lasso_length += length
        self._lasso_kernels.append((weights, dims))
      start = kernel_offset[key] + begin
      lasso_gather.extend(range(start, start + leaf.size))
      position[id(leaf)] = cursor
      cursor += leaf.size
      lasso_counts.extend([float(count)] * leaf.size)
      lasso_thresholds.extend([threshold] * leaf.size)
      leaf_threshold[id(leaf)] = threshold
    self._lasso_gather = (
        None if lasso_gather == list(range(lasso_length))
        else np.array(lasso_gather, np.int32))
    self._lasso_counts = np.array(lasso_counts, np.float32)
    self._lasso_thresholds = np.array(lasso_thresholds, np.float32)
    for leaf in self._generic_leaves:
      position[id(leaf)] = cursor
      cursor += leaf.size
    self._leaf_position = position
    # Max groups whose members all have one threshold t: OR(r_i > t) is
    # max r_i > t, so their alive vector follows from the grouped vector.
    self._max_threshold = []
    for _, _, leaves in self._groups['max']:
      member_thresholds = {leaf_threshold.get(id(leaf)) for leaf in leaves}
      self._max_threshold.append(
          member_thresholds.pop() if len(member_thresholds) == 1 else None)
    self._max_alive_from_reg = None not in self._max_threshold
    # Group blocks come after the sources in the channel space G.
    num_sources = cursor
    self._num_source_channels = num_sources
    block_offset = {}
    offset = num_sources
    self._group_arrays = {}
    self._group_width = {}
    for kind in ('max', 'prob', 'l2'):
      block_offset[kind] = offset
      gather_index = []
      segment = []
      thresholds = []
      channel = 0
      # Members are runs of the source vector: with k the gcd of their starts,
      # the group sizes and the source length, the source is read as rows of
      # k channels and whole rows are gathered (a row gather is ~k times
      # cheaper than k scalar ones: DenseNet201, k = 32).
      width = num_sources
      for _, size, leaves in self._groups[kind]:
        width = math.gcd(width, size)
        for leaf in leaves:
          width = math.gcd(width, position[id(leaf)])
      width = max(width, 1)
      row = 0
      for _, size, leaves in self._groups[kind]:
        # Row-major (all members of row j, then j + 1): the segment ids are
        # sorted, for the faster sorted segment reductions.
        starts = [position[id(leaf)] // width for leaf in leaves]
        for j in range(size // width):
          gather_index.extend(start + j for start in starts)
          segment.extend([row + j] * len(starts))
        row += size // width
        channel += size
      if kind == 'l2':
        for regularizer, size, _ in self._groups[kind]:
          thresholds.extend([float(regularizer._threshold)] * size)  # pylint: disable=protected-access
      self._group_arrays[kind] = (np.array(gather_index, np.int32),
                                  np.array(segment, np.int32), channel,
                                  np.array(thresholds, np.float32))
      self._group_width[kind] = width
      offset += channel
    num_channels = offset
    # Slot of every channel of G (num_slots for channels of no slot), and the
    # threshold of every slot whose alive vector is `reg > t` (else None).
    num_slots = len(self._slots)
    channel_slot = np.full([num_channels], num_slots, np.int32)
    slot_threshold = []
    slot_start = np.zeros([num_slots], np.int64)
    group_offsets = {kind: [] for kind in self._groups}
    for kind in self._groups:
      cursor = block_offset[kind]
      for _, size, _ in self._groups[kind]:
        group_offsets[kind].append(cursor)
        cursor += size
    for slot_index, (kind, index) in enumerate(self._slots):
      if kind == 'leaf':
        leaf = self._leaves[index]
        start, size = position[id(leaf)], leaf.size
        slot_threshold.append(leaf_threshold.get(id(leaf)))
      else:
        start = group_offsets[kind][index]
        regularizer, size, _ = self._groups[kind][index]
        slot_threshold.append(
            self._max_threshold[index] if kind == 'max' else
            float(regularizer._threshold) if kind == 'l2' else None)  # pylint: disable=protected-access
      channel_slot[start:start + size] = slot_index
      slot_start[slot_index] = start
    # Slot channels: the channels of G that belong to a slot, in channel
    # order. Every slot is one contiguous run, so numbering the slots by
    # their first channel makes the segment ids sorted.
    slotted = np.flatnonzero(channel_slot != num_slots)
    rank = np.empty([num_slots], np.int32)
    rank[np.argsort(slot_start, kind='stable')] = np.arange(num_slots,
                                                            dtype=np.int32)
    self._slot_segments = rank[channel_slot[slotted]]
    sizes = np.bincount(self._slot_segments, minlength=num_slots)
    self._slots_nonempty = bool(np.all(sizes > 0))
    # Per part of G (sources, then each group kind), the slot channels in it:
    # None (all of the part), an index array, or absent (none).
    self._part_gathers = []
    self._part_widths = []
    part_bounds = [(0, num_sources)] + [
        (block_offset[kind], block_offset[kind] + self._group_arrays[kind][2])
        for kind in ('max', 'prob', 'l2')]
    for begin, end in part_bounds:
      inside = slotted[(slotted >= begin) & (slotted < end)] - begin
      if not len(inside):
        self._part_gathers.append(False)
      elif len(inside) == end - begin:
        self._part_gathers.append(None)
      else:
        # The slot channels are runs: gathered as rows of `width` channels,
        # width the gcd of the runs' starts and ends and of the part length.
        breaks = np.flatnonzero(np.diff(inside) != 1) + 1
        run_starts = inside[np.concatenate([[0], breaks]).astype(np.int64)]
        run_ends = inside[np.concatenate([breaks - 1, [len(inside) - 1]]).astype(
            np.int64)] + 1
        width = int(np.gcd.reduce(np.concatenate(
            [run_starts, run_ends, [end - begin]]).astype(np.int64)))
        width = max(width, 1)
        self._part_gathers.append(
            (inside[::width] // width).astype(np.int32) if width > 1
            else inside.astype(np.int32))
        self._part_widths.append(width)
        continue
      self._part_widths.append(1)
    # Alive of the slot channels from their regularization, when every slot
    # has a threshold: one comparison (a scalar threshold when uniform).
    self._slot_alive_from_reg = None not in slot_threshold
    if self._slot_alive_from_reg:
      channel_threshold = np.array(
          [slot_threshold[s] for s in range(num_slots)],
          np.float32)[channel_slot[slotted]] if num_slots else np.zeros(
              [0], np.float32)
      self._slot_threshold = (
          float(channel_threshold[0])
          if len(channel_threshold) and np.all(
              channel_threshold == channel_threshold[0])
          else channel_threshold)
    self.num_slots = num_slots
    self.num_channels = num_channels
    self.num_slot_channels = len(slotted)
    # Sides: gather slots (by rank), segment-sum into sides.
    side_gather = []
    side_segment = []
    for side, slots in enumerate(self._side_slots):
      side_gather.extend(int(rank[s]) for s in slots)
      side_segment.extend([side] * len(slots))
    self._side_gather = np.array(side_gather, np.int32)
    self._side_segment = np.array(side_segment, np.int32)
    self._side_const_array = np.array(self._side_const, np.float64)

  # Evaluation.

  def _source_vectors(self, need_alive: bool):
    """(regularization, alive or None) float32 vectors of the source channels."""
    regs = []
    alives = []
    if self._gamma_leaves:
      values = [lazy_evaluation.materialize(s) for s in self._gamma_sources]
      gammas = values[0] if len(values) == 1 else tf.concat(values, 0)
      if not self._gamma_identity:
        gammas = tf.gather(gammas, self._gamma_gather)
      reg = tf.abs(gammas)
      regs.append(reg)
      if need_alive:
        threshold = (self._gamma_uniform_threshold
                     if self._gamma_uniform_threshold is not None
                     else self._gamma_thresholds)
        alives.append(tf.cast(reg > threshold, tf.float32))
    if self._lasso_leaves:
      total = group_lasso_regularizer.concat_sums_of_squares(
          [(lazy_evaluation.materialize(weights), dims)
           for weights, dims in self._lasso_kernels])
      if self._lasso_gather is not None:
        total = tf.gather(total, self._lasso_gather)
      reg = tf.sqrt(total / self._lasso_counts)
      regs.append(reg)
      if need_alive:
        alives.append(tf.cast(reg > self._lasso_thresholds, tf.float32))
    for leaf in self._generic_leaves:
      reg = tf.cast(leaf.regularizer.regularization_vector, tf.float32)
      _check_length(leaf, reg)
      regs.append(tf.reshape(reg, [-1]))
      if need_alive:
        alive = tf.cast(leaf.regularizer.alive_vector, tf.float32)
        alives.append(tf.reshape(alive, [-1]))
    source_reg = regs[0] if len(regs) == 1 else tf.concat(regs, 0)
    if not need_alive:
      return source_reg, None
    return source_reg, (alives[0] if len(alives) == 1 else tf.concat(alives, 0))

  def _slot_channel_vectors(self):
    """(regularization, alive) float32 vectors of the slot channels, and the
    regularization vector of the source channels."""
    need_alive = not self._slot_alive_from_reg
    # Source alive values are read by groups only where the group's alive
    # vector does not follow from its regularization.
    need_source_alive = need_alive or (
        self._group_arrays['prob'][2] > 0) or (
            self._group_arrays['max'][2] > 0 and not self._max_alive_from_reg)
    source_reg, source_alive = self._source_vectors(need_source_alive)
    reg_parts = [source_reg]
    alive_parts = [source_alive]
    for kind in ('max', 'prob', 'l2'):
      gather_index, segment, count, thresholds = self._group_arrays[kind]
      if not count:
        reg_parts.append(None)
        alive_parts.append(None)
        continue
      width = self._group_width[kind]
      rows = (lambda v, w=width: v if w == 1 else tf.reshape(v, [-1, w]))
      flat = (lambda v, w=width: v if w == 1 else tf.reshape(v, [-1]))
      member_reg = tf.gather(rows(source_reg), gather_index)
      if kind == 'max':
        reg = tf.math.segment_max(member_reg, segment)
      elif kind == 'prob':
        reg = 1.0 - tf.math.unsorted_segment_prod(1.0 - member_reg, segment,
                                                  count // width)
      else:
        reg = tf.sqrt(tf.math.segment_sum(tf.square(member_reg), segment))
      reg = flat(reg)
      alive = None
      if kind == 'prob' or (kind == 'max' and not self._max_alive_from_reg):
        alive = flat(tf.math.segment_max(
            tf.gather(rows(source_alive), gather_index), segment))
      elif need_alive:
        alive = tf.cast(reg > (thresholds if kind == 'l2' else np.array(
            self._group_thresholds_max(), np.float32)), tf.float32)
      reg_parts.append(reg)
      alive_parts.append(alive)
    reg = self._gather_slot_channels(reg_parts)
    if not need_alive:
      return reg, tf.cast(reg > self._slot_threshold, tf.float32), source_reg
    return reg, self._gather_slot_channels(alive_parts), source_reg

  def _group_thresholds_max(self) -> List[float]:
    """Per channel of the max block, the threshold of its group."""
    values = []
    for (_, size, _), threshold in zip(self._groups['max'],
                                       self._max_threshold):
      values.extend([threshold] * size)
    return values

  def _gather_slot_channels(self, parts):
    pieces = []
    for value, index, width in zip(parts, self._part_gathers,
                                   self._part_widths):
      if index is False:
        continue
      if index is None:
        pieces.append(value)
      elif width == 1:
        pieces.append(tf.gather(value, index))
      else:
        pieces.append(tf.reshape(
            tf.gather(tf.reshape(value, [-1, width]), index), [-1]))
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, 0)

  def _slot_vectors(self):
    """`_slot_channel_vectors`, shared by cost and term in a graph."""
    return self._slot_cache.get(self._slot_channel_vectors)

  def _side_alive(self):
    """Alive channels per side, float64, constant ones included (shared in a graph)."""
    return self._alive_cache.get(lambda: self._side_sums(1))

  def _side_reg(self):
    """Summed regularization per side, float64 (shared in a graph)."""
    return self._reg_cache.get(lambda: self._side_sums(0))

  def _side_sums(self, index):
    """Slot-channel vector `index` (0: reg, 1: alive) summed over sides."""
    if not self.num_slots or not len(self._side_gather):
      return tf.constant(self._side_const_array if index else np.zeros_like(
          self._side_const_array))
    values = self._slot_vectors()[index]
    # Sums per slot in float32 (exact for counts; as precise as the per-op
    # path's reduce_sum for regularization), then float64 for the products.
    if self._slots_nonempty:
      per_slot = tf.math.segment_sum(values, self._slot_segments)
    else:
      per_slot = tf.math.unsorted_segment_sum(values, self._slot_segments,
                                              self.num_slots)
    sums = tf.math.unsorted_segment_sum(
        tf.gather(tf.cast(per_slot, tf.float64), self._side_gather),
        self._side_segment, self.num_sides)
    return tf.constant(self._side_const_array) + sums if index else sums

  def _non_finite_guard(self):
    """0 when every source regularization value is finite, else NaN.

    Costs propagate non-finite regularization (see CostCalculator): every
    source channel feeds a costed op's slice or a group of one, so one sum
    over the sources does what adding `0 * R` to every side would.
    """
    if not self.num_slots or not len(self._side_gather):
      return None
    return 0.0 * tf.cast(tf.reduce_sum(self._slot_vectors()[2]), tf.float64)

  def build(self, is_regularization: bool) -> tf.Tensor:
    """The weighted cost or term, float32, built in the current context."""
    with lazy_evaluation.evaluation_scope():
      return self._build(is_regularization)

  def build_both(self) -> Tuple[tf.Tensor, tf.Tensor]:
    """(cost, term), built in the current context on shared sources."""
    with lazy_evaluation.evaluation_scope():
      return self._build(False), self._build(True)

  def _build(self, is_regularization: bool) -> tf.Tensor:
    """`build` inside an evaluation scope."""
    total = None
    if self.num_ops:
      total = self._compiled_total(is_regularization)
    for op, weight in zip(self.fallback_ops, self._fallback_weights):
      value = self._calculator._sum_over_ops_in_scope(  # pylint: disable=protected-access
          is_regularization, [op])
      value = weight * tf.cast(value, tf.float64)
      total = value if total is None else total + value
    if total is None:
      return tf.constant(0.0, tf.float32)
    return tf.cast(total, tf.float32)

  def _compiled_total(self, is_regularization):
    gathered = {}

    def side(name):
      # Per op, the alive count (A) or regularization (R) of its input or
      # output side; built when a monomial needs it.
      if name not in gathered:
        vector = self._side_alive() if name[0] == 'a' else self._side_reg()
        gathered[name] = tf.gather(
            vector, self._in_sides if name.endswith('in') else self._out_sides)
      return gathered[name]

    monomials = (lambda: None, lambda: side('a_in'), lambda: side('a_out'),
                 lambda: side('a_in') * side('a_out'), lambda: side('r_in'),
                 lambda: side('r_out'), lambda: side('a_in') * side('r_out'),
                 lambda: side('a_out') * side('r_in'))
    forms = []
    for kind in (self._cost_coefficients, self._term_coefficients):
      kind_forms = []
      for component in kind:
        value = None
        for coefficients, make_monomial in zip(component, monomials):
          if coefficients is None:
            continue
          monomial = make_monomial()
          term = (tf.constant(coefficients) if monomial is None
                  else tf.constant(coefficients) * monomial)
          value = term if value is None else value + term
        if value is None:
          value = tf.zeros([self.num_ops], tf.float64)
        kind_forms.append(value)
      forms.append(kind_forms)
      if not is_regularization:
        break
    costs = forms[0]
    if is_regularization:
      terms = forms[1]
      per_op = terms[0]
      best_cost = costs[0]
      for cost, term in zip(costs[1:], terms[1:]):
        per_op = tf.where(cost > best_cost, term, per_op)
        best_cost = tf.maximum(best_cost, cost)
    else:
      per_op = costs[0]
      for cost in costs[1:]:
        per_op = tf.maximum(per_op, cost)
    if np.all(self._weights == 1.0):
      total = tf.reduce_sum(per_op)
    else:
      total = tf.reduce_sum(tf.constant(self._weights) * per_op)
    if not is_regularization:
      guard = self._non_finite_guard()
      if guard is not None:
        total = total + guard
    return total

  @property
  def costly_sources(self) -> bool:
    """Whether reading the sources dominates an evaluation (group lasso)."""
    return bool(self._lasso_kernels)

  def describe(self) -> Dict[str, int]:
    """Sizes of the compiled program (for benchmarks and tests)."""
    return dict(ops=self.num_ops, fallback_ops=len(self.fallback_ops),
                sides=self.num_sides, slots=self.num_slots,
                source_channels=self._num_source_channels,
                channels=self.num_channels,
                slot_channels=self.num_slot_channels,
                lasso_sources=len(self._lasso_leaves),
                lasso_kernels=len(self._lasso_kernels),
                gamma_sources=len(self._gamma_sources),
                generic_sources=len(self._generic_leaves))


def _check_length(leaf: _Leaf, vector: tf.Tensor) -> None:
  length = vector.shape[0] if vector.shape.rank == 1 else None
  if length is not None and length != leaf.size:
    raise ValueError(
        'A regularizer has a vector of another length than the channel slice '
        f'it regularizes. Received: {leaf.regularizer!r} with '
        f'{length} channels for a slice of {leaf.size}.')


def _slice_regularizers(manager, op: tf.Operation):
  """[(size, regularizer or None)] of `op`'s slices, or None if none is set.

  Reads the manager's slice table directly: `manager.get_regularizer(op)`
  would build a `ConcatRegularizer` (which reads its members' vectors to
  check their shapes) for every op with several slices.
  """
  table = getattr(manager, '_op_regularizer_dict', None)
  if isinstance(manager, orm.OpRegularizerManager) and table is not None:
    op_slices = manager.get_op_slices(op)
    result = [(op_slice.slice.size, table.get(op_slice))
              for op_slice in op_slices]
    if all(regularizer is None for _, regularizer in result):
      return None
    return result
  # Any other manager (e.g. a test double): decompose its regularizer.
  regularizer = manager.get_regularizer(op)
  if regularizer is None:
    return None
  if type(regularizer) is concat_and_slice_regularizers.ConcatRegularizer:  # pylint: disable=unidiomatic-typecheck
    members = regularizer.regularizers
  else:
    members = [regularizer]
  return [(_static_length(member), member) for member in members]


def _split_output_slices(manager, tensor: tf.Tensor, slice_regularizers):
  """The [(size, regularizer)] of one output of a channel split.

  An output of a split holds a range of the split op's channels (as the
  per-op `CostCalculator` reads it through
  `split_op_handler.regularizer_of_tensor`): the slices inside that range, or,
  where the range cuts a slice, the split handler's sliced regularizer of the
  whole range (read as a generic source).
  """
  start, size = op_handler_util.split_output_ranges(tensor.op)[
      tensor.value_index]
  result = []
  offset = 0
  for length, regularizer in slice_regularizers:
    begin, end = max(offset, start), min(offset + length, start + size)
    if begin < end:
      if (begin, end) != (offset, offset + length):
        return [(size, split_op_handler.regularizer_of_tensor(manager, tensor))]
      result.append((length, regularizer))
    offset += length
  return result


def _static_length(regularizer) -> int:
  if type(regularizer) is constant_op_regularizer.ConstantOpRegularizer:  # pylint: disable=unidiomatic-typecheck
    return regularizer._size  # pylint: disable=protected-access
  with lazy_evaluation.evaluation_scope():
    length = regularizer.regularization_vector.shape[0]
  if length is None:
    raise ValueError(
        'The number of channels of a regularizer is not known statically. '
        f'Received: {regularizer!r}.')
  return int(length)


_GROUP_KINDS = {
    grouping_regularizers.MaxGroupingRegularizer: 'max',
    grouping_regularizers.L2GroupingRegularizer: 'l2',
    pgr.ProbabilisticGroupingRegularizer: 'prob',
}


def _group_members(regularizer):
  """(kind, member regularizers) for a grouping regularizer of leaves, else None.

  Only the exact built-in grouping classes are compiled (subclasses may
  combine differently); members that are themselves composite make the
  group a generic source, read through its properties.
  """
  kind = _GROUP_KINDS.get(type(regularizer))
  if kind is None:
    return None
  members = getattr(regularizer, '_regularizers', None)
  if not members:
    return None
  if kind == 'l2' and not _is_number(getattr(regularizer, '_threshold', None)):
    return None
  for member in members:
    if type(member) in _GROUP_KINDS or type(member) is (  # pylint: disable=unidiomatic-typecheck
        concat_and_slice_regularizers.ConcatRegularizer):
      return None
  return kind, list(members)


def _float32_static_shape(value, dtype_of) -> Optional[tf.TensorShape]:
  """The static shape of `value` when `dtype_of` (its variable) is float32, else None."""
  try:
    shape = lazy_evaluation.static_shape(value)
    dtype = tf.as_dtype(dtype_of.dtype)
  except (AttributeError, TypeError, ValueError):
    return None
  return shape if dtype == tf.float32 else None


def _gamma_source(regularizer, size: int):
  """(source, begin, size, threshold) of a plain GammaL1Regularizer, else None."""
  if type(regularizer) is not gamma_l1_regularizer.GammaL1Regularizer:  # pylint: disable=unidiomatic-typecheck
    return None
  threshold = getattr(regularizer, '_gamma_threshold', None)
  gamma = getattr(regularizer, '_gamma', None)
  if not _is_number(threshold) or gamma is None:
    return None
  begin = 0
  if isinstance(gamma, lazy_evaluation.LazySlice):
    if gamma.axis != 0:
      return None
    begin = gamma.begin
    gamma = gamma.source
  shape = _float32_static_shape(gamma, gamma)
  if shape is None or shape.rank != 1 or shape[0] is None or begin + size > shape[0]:
    return None
  if isinstance(gamma, lazy_evaluation.LazySlice) or callable(gamma) and not (
      lazy_evaluation._is_variable(gamma)):  # pylint: disable=protected-access
    return None
  return gamma, begin, size, float(threshold)


def _lasso_source(regularizer, size: int):
  """(weights, reduce_dims, first, length, count, threshold) of a plain L2 GroupLassoRegularizer.

  `weights` is the kernel whose norms are computed: a `LazySlice` (or a chain
  of them) along the kept, output-channel axis reads channels `[first, first +
  size)` of its source's norms, so the norms of the whole source are computed
  once for all its slices (`length` channels); a slice along a reduced axis is
  a kernel of its own. `reduce_dims` is normalised (sorted, non-negative).
  None for anything else (a subclass, `l1_fraction > 0`, a shape not known
  statically), which is read through its properties.
  """
  if type(regularizer) is not group_lasso_regularizer.GroupLassoRegularizer:  # pylint: disable=unidiomatic-typecheck
    return None
  threshold = regularizer.threshold
  if regularizer.l1_fraction != 0 or not _is_number(threshold):
    return None
  source = regularizer.weight_source
  base = source
  while isinstance(base, lazy_evaluation.LazySlice):
    base = base.source
  shape = _float32_static_shape(source, base)
  reduce_dims = regularizer.reduce_dims
  if shape is None or shape.rank is None:
    return None
  rank = shape.rank
  count = group_lasso_regularizer.reduced_count(shape, reduce_dims)
  dims = tuple(sorted({int(r) % rank for r in reduce_dims}))
  kept = [d for d in range(rank) if d not in dims]
  if count is None or len(kept) != 1 or shape[kept[0]] != size:
    return None
  weights, first = source, 0
  while isinstance(weights, lazy_evaluation.LazySlice) and (
      weights.axis % rank == kept[0]):
    first += weights.begin
    weights = weights.source
  length = int(lazy_evaluation.static_shape(weights)[kept[0]])
  return weights, dims, first, length, count, float(threshold)


class CompiledCostCalculator(cost_calculator.CostCalculator):
  """A `CostCalculator` that evaluates the whole network in a few TF ops.

  Same arguments and results as `CostCalculator` (whose per-op path it keeps
  for ops that cannot be compiled), plus:

  Args:
    op_regularizer_manager: The `OpRegularizerManager` of the network.
    resource_function: The resource function, e.g.
      `resource_function.flop_function`.
    components: Optional resource functions whose maximum is
      `resource_function` (e.g. compute and memory time for latency); each
      must be of the compiled form. The term is that of the component of
      largest cost (the first one on ties).
  """

  def __init__(self, op_regularizer_manager,
               resource_function: Callable[..., Any], *,
               components: Optional[Sequence[Callable[..., Any]]] = None):
    super().__init__(op_regularizer_manager, resource_function)
    self._components = list(components) if components else None
    # Compiled programs by op multiset (None: the default ops), most recent
    # last; at most _MAX_PROGRAMS are kept.
    self._programs = collections.OrderedDict()

  @property
  def program(self) -> '_Program':
    """The compiled program of the default ops (built at the first use)."""
    return self._program_for(None)[0]

  def _program_for(self, ops):
    """(program, any supported op) for `ops` (None or empty: default ops)."""
    if not ops:
      key = None
    else:
      counts = collections.Counter(
          op for op in ops if op.type in cost_calculator.SUPPORTED_OPS)
      key = frozenset(counts.items())
    entry = self._programs.get(key)
    if entry is None:
      if key is None:
        op_counts = [(op, 1) for op in sorted(
            (op for op in self._default_ops()
             if op.type in cost_calculator.SUPPORTED_OPS),
            key=lambda op: op.name)]
      else:
        op_counts = sorted(counts.items(), key=lambda item: item[0].name)
      program = _Program(self, op_counts) if op_counts else None
      entry = [program, {}, {}]  # program, eager functions, graph cache.
      self._programs[key] = entry
      while len(self._programs) > _MAX_PROGRAMS:
        self._programs.popitem(last=False)
    else:
      self._programs.move_to_end(key)
    return entry

  def _get_cost_or_regularization_term(self, is_regularization, ops):
    program, eager_functions, graph_cache = self._program_for(ops)
    if program is None:
      logging.warning('No supported ops found.')
      return 0.0
    if tf.executing_eagerly():
      # The concrete function, traced once and called directly: a
      # `tf.function` call hashes its captures (one per variable read) to
      # look up its cache at every call.
      if program.costly_sources:
        # Group-lasso norms (a pass over every kernel) dominate each call and
        # tracing: one function gives both the cost and the term, so the
        # first call of either traces once and the other is ready.
        function = _concrete_function(eager_functions, 'both',
                                      program.build_both)
        return function()[int(is_regularization)]
      return _concrete_function(eager_functions, is_regularization,
                                lambda: program.build(is_regularization))()
    graph = tf.compat.v1.get_default_graph()
    if getattr(graph, 'building_function', False):
      return program.build(is_regularization)
    # A plain tf.compat.v1 graph: one tensor per graph, as the vectors.
    cached = graph_cache.get(is_regularization)
    if cached is not None and cached[0]() is graph:
      return cached[1]
    value = program.build(is_regularization)
    graph_cache[is_regularization] = (weakref.ref(graph), value)
    return value


def _concrete_function(cache: Dict[Any, Any], key: Any,
                       build: Callable[[], Any]) -> Any:
  """`cache[key]`, else `build` traced once into a concrete function there."""
  function = cache.get(key)
  if function is None:
    function = tf.function(build, autograph=False).get_concrete_function()
    cache[key] = function
  return function


def compiled_op_counts(calculator: CompiledCostCalculator) -> Dict[str, int]:
  """Sizes of `calculator`'s compiled program (ops, sides, slots, channels)."""
  return calculator.program.describe()


__all__ = ['CompiledCostCalculator', 'fit_bilinear', 'compile_op',
           'compiled_op_counts']
