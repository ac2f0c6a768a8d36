"""Training to a cost budget: the strength controller and the completion rule.

The user states a target for the network regularizer's cost (FLOPs, model size,
latency, or a gating regularizer's cost): an absolute cost, or a fraction of the
cost at the start of training. Two pieces make the exported structure land on it.

**Strength controller (multiplicative dual ascent).** Training solves
`min task_loss  s.t.  cost <= target` through the Lagrangian
`task_loss + s * regularization_term`, where the strength `s` is the dual
variable. After every `n` training steps (the callback's logging period) the
strength is updated in log space, from the cost `C` of the current weights:

    log s  <-  log s + rate * n * clip(C / target - 1, -1, 1)

so `s` grows while the network is above the target and decays once it is
below, by at most a factor `exp(rate)` per step (default rate 0.002 per step:
x7.4 over 1000 steps). `s` stays within `[1e-4, 1e4] / target`
(1 / target is what `recommend_strength` gives for a network at the target).
The strength lives in a non-trainable weight of `MorphNetModel`
(`regularization_strength`), and the resolved target in another
(`target_cost`), so checkpoints, `BackupAndRestore` and `save_weights` keep
both and a resumed run continues from the adapted strength.

**Completion.** The cost reacts with a delay: under Adam a gamma travels about
`learning_rate` per step, so it takes ~(1 - threshold) / learning_rate steps
before the first channel dies. If training stops above the target,
`complete_to_target` removes alive channels deterministically until the cost
is within it: every alive channel of every channel group (the channels that
live or die together, e.g. across a residual add) is ranked by its
regularization value (|gamma|, group-lasso norm or gate probability) divided
by the cost saved by removing one channel of its group (at the trained
structure), and channels are removed in that order (ties: group order, then
channel index), the fewest that bring the cost within the target (found by
bisection; the cost never rises when a channel goes); then removed channels
are put back, the last removed first, wherever the cost stays within the
target (the last channel removed may save far more than needed). Each group keeps at
least one channel, so no layer of a plain chain drops to width 0.

**Refill.** With a sharp task the cost can also fall well below the target
(channels in flight keep dying after the strength turns), and a completion
can stop short of it (group channels are coarse). The exported structure is
then filled back up towards the target: channels that are off (dead in
training, or removed) are turned back on, the largest regularization value
per unit of added cost first (scanning the whole list, each one kept if the
cost stays within the target).
Their gammas / norms are near zero, so the trained network's outputs barely
change; `refill=False` exports the trained structure as is.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from morph_net.framework import concat_and_slice_regularizers
from morph_net.network_regularizers import cost_calculator

DEFAULT_RATE = 0.002
STRENGTH_RANGE = (1e-4, 1e4)  # times 1 / target


def check_target(target_cost: Any = None, target_fraction: Any = None
                 ) -> Tuple[Optional[float], Optional[float]]:
  """Checks the two ways of stating a target; at most one may be given.

  Returns:
    `(target_cost, target_fraction)` as floats (or None).

  Raises:
    TypeError: a value is not a number.
    ValueError: both are given, or a value is not finite and > 0.
  """
  if target_cost is not None and target_fraction is not None:
    raise ValueError(
        'Give either target_cost (an absolute cost) or target_fraction (a fraction '
        f'of the initial cost), not both. Received: target_cost={target_cost!r}, '
        f'target_fraction={target_fraction!r}.')
  checked = []
  for name, value in (('target_cost', target_cost), ('target_fraction', target_fraction)):
    if value is None:
      checked.append(None)
      continue
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise TypeError(f'{name} must be a number. Received: {name}={value!r}.')
    if not (math.isfinite(float(value)) and float(value) > 0.0):
      raise ValueError(f'{name} must be finite and > 0. Received: {name}={value!r}.')
    checked.append(float(value))
  return checked[0], checked[1]


def check_rate(rate: Any) -> float:
  if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (
      math.isfinite(float(rate)) and float(rate) > 0.0):
    raise ValueError(
        f'adapt_rate must be a finite number > 0 (log-strength change per step at '
        f'cost = 2 x target). Received: adapt_rate={rate!r}.')
  return float(rate)


def next_strength(strength: float, cost: float, target: float, steps: int,
                  rate: float = DEFAULT_RATE) -> float:
  """One update of the controller (see the module doc).

  Args:
    strength: the current strength, > 0.
    cost: the cost of the current weights.
    target: the target cost, > 0.
    steps: training steps since the previous update (>= 0).
    rate: the log-strength change per step when `cost >= 2 * target`.

  Returns:
    The new strength, within `STRENGTH_RANGE / target`.
  """
  if not math.isfinite(cost):
    return strength  # A diverged step: leave the strength alone.
  error = min(1.0, max(-1.0, cost / target - 1.0))
  low, high = STRENGTH_RANGE[0] / target, STRENGTH_RANGE[1] / target
  log_value = math.log(max(strength, low * 1e-12))  # log of a 0 strength
  log_value += rate * max(0, int(steps)) * error
  return math.exp(min(math.log(high), max(math.log(low), log_value)))


# ----------------------------------------------------------------------------
# Completion to the target.


@dataclasses.dataclass(frozen=True)
class Completion:
  """A structure within the target, from a trained regularizer.

  Attributes:
    target_cost: the target.
    trained_cost: the cost of the trained structure (alive channels).
    cost: the cost of `counts` / `masks` (<= target unless `reached` is False).
    completed: True when channels beyond the trained structure were removed.
    reached: False when even one channel per group costs more than the target.
    removed: layer name -> channels removed by the completion.
    refilled: layer name -> channels dead in training turned back on (net of
      removals, per layer).
    counts: layer name -> alive channels (the exported structure).
    masks: layer name -> per-channel alive mask.
  """
  target_cost: float
  trained_cost: float
  cost: float
  completed: bool
  reached: bool
  removed: Dict[str, int]
  refilled: Dict[str, int]
  counts: Dict[str, int]
  masks: Dict[str, np.ndarray]

  def describe(self, cost_name: str = 'cost') -> str:
    if self.refilled and not self.completed:
      return (f'training ended at {cost_name} {self.trained_cost:,.6g}, below the target '
              f'{self.target_cost:,.6g}; {sum(self.refilled.values())} dead channel(s) '
              'with the largest regularization value per unit of cost were turned back '
              f'on: exported {cost_name} {self.cost:,.6g}.')
    if not self.completed:
      return (f'{cost_name} {self.trained_cost:,.6g} is within the target '
              f'{self.target_cost:,.6g}: the trained structure is exported as is.')
    removed = sum(self.removed.values())
    text = (f'training ended at {cost_name} {self.trained_cost:,.6g}, above the target '
            f'{self.target_cost:,.6g}; the exported structure was completed to '
            f'{self.cost:,.6g} by removing {removed} more channel(s) with the least '
            'regularization value per unit of cost (groups kept whole).')
    if not self.reached:
      text += ' The target cannot be reached with one channel per group left.'
    return text

  def as_dict(self) -> Dict[str, Any]:
    return {'target_cost': self.target_cost, 'trained_cost': self.trained_cost,
            'exported_cost': self.cost, 'completed': self.completed,
            'reached': self.reached, 'removed_channels': dict(self.removed),
            'refilled_channels': dict(self.refilled),
            'structure': dict(self.counts)}


class _MaskedCost:
  """The network cost as a function of per-group alive masks (NumPy)."""

  def __init__(self, network_regularizer):
    self._manager = network_regularizer.op_regularizer_manager
    calculator = getattr(network_regularizer, '_calculator', None)
    if calculator is None and hasattr(network_regularizer, 'get_calculator'):
      calculator = network_regularizer.get_calculator()
    if calculator is None:
      raise ValueError(
          'Completion to a target needs a network regularizer with a CostCalculator '
          f'(the morph_net ones). Received: {type(network_regularizer).__name__}.')
    self._resource = calculator._resource_function  # pylint: disable=protected-access
    ops = sorted(calculator._default_ops(), key=lambda op: op.name)  # pylint: disable=protected-access
    self.leaves: List[Any] = []
    self._leaf_index: Dict[int, int] = {}
    self._terms = []  # (op, input regularizer or channel count, output ...)
    for op in ops:
      if op.type not in cost_calculator.SUPPORTED_OPS:
        continue
      tensor = (op.outputs[0] if op.type == 'ConcatV2'
                else cost_calculator.get_input_activation(op))
      sides = []
      for side_tensor, side_op in ((tensor, tensor.op), (op.outputs[0], op)):
        regularizer = self._manager.get_regularizer(side_op)
        if regularizer is None:
          channels = side_tensor.shape[-1] if side_tensor.shape.rank else None
          sides.append(float(channels or 0))
        else:
          self._collect_leaves(regularizer)
          sides.append(regularizer)
      self._terms.append((op, sides[0], sides[1]))
    self.values = []
    self.alive = []
    for leaf in self.leaves:
      values = np.abs(np.asarray(leaf.regularization_vector, np.float64)).reshape(-1)
      if not np.all(np.isfinite(values)):
        raise ValueError(
            'The regularization vectors hold NaN or infinite values (a diverged '
            'training); no structure can be completed from them.')
      self.values.append(values)
      self.alive.append(np.asarray(leaf.alive_vector).astype(bool).reshape(-1))
    self._op_cache: Dict[Tuple[str, float, float], float] = {}

  def _collect_leaves(self, regularizer) -> None:
    if isinstance(regularizer, concat_and_slice_regularizers.ConcatRegularizer):
      for member in regularizer.regularizers:
        self._collect_leaves(member)
    elif isinstance(regularizer, concat_and_slice_regularizers.SlicingReferenceRegularizer):
      self._collect_leaves(regularizer._get_regularizer_to_slice())  # pylint: disable=protected-access
    elif id(regularizer) not in self._leaf_index:
      self._leaf_index[id(regularizer)] = len(self.leaves)
      self.leaves.append(regularizer)

  def mask_of(self, regularizer, masks: List[np.ndarray]) -> np.ndarray:
    if isinstance(regularizer, concat_and_slice_regularizers.ConcatRegularizer):
      return np.concatenate([self.mask_of(m, masks) for m in regularizer.regularizers])
    if isinstance(regularizer, concat_and_slice_regularizers.SlicingReferenceRegularizer):
      whole = self.mask_of(regularizer._get_regularizer_to_slice(), masks)  # pylint: disable=protected-access
      begin, size = regularizer._begin, regularizer._size  # pylint: disable=protected-access
      return whole[begin:begin + size]
    return masks[self._leaf_index[id(regularizer)]]

  def _count(self, side, masks) -> float:
    if isinstance(side, float):
      return side
    return float(np.sum(self.mask_of(side, masks)))

  def cost(self, masks: List[np.ndarray]) -> float:
    total = 0.0
    for op, inputs, outputs in self._terms:
      a_in, a_out = self._count(inputs, masks), self._count(outputs, masks)
      key = (op.name, a_in, a_out)
      value = self._op_cache.get(key)
      if value is None:
        value = float(self._resource(op, False, a_in, a_out, 0.0, 0.0))
        self._op_cache[key] = value
      total += value
    return total


def _refill(masked: '_MaskedCost', masks: List[np.ndarray], target: float) -> None:
  """Turns dead channels back on, largest value per unit of cost first, within target."""
  base = masked.cost(masks)
  order = []
  for leaf, (values, alive) in enumerate(zip(masked.values, masks)):
    dead = np.flatnonzero(~alive)
    if not len(dead):
      continue
    trial = list(masks)
    trial[leaf] = masks[leaf].copy()
    trial[leaf][dead[0]] = True
    extra = masked.cost(trial) - base
    if extra <= 0.0:
      continue
    order.extend((-float(values[i]) / extra, leaf, int(i)) for i in dead)
  order.sort()
  for _, leaf, index in order:
    masks[leaf][index] = True
    if masked.cost(masks) > target:
      masks[leaf][index] = False


def complete_to_target(network_regularizer, target_cost: float, *,
                       key_by_layer: bool = True, refill: bool = True) -> Completion:
  """The trained structure, completed (if needed) to cost <= `target_cost`.

  See the module doc for the rule. Evaluated eagerly from the current
  variables.

  Args:
    network_regularizer: a trained network regularizer (built with
      `from_keras_model` when `key_by_layer`).
    target_cost: the target, > 0.
    key_by_layer: key the result by Keras layer names (else by op names).
    refill: when the structure is below the target, turn channels that are
      off back on (see the module doc). Defaults to True.

  Returns:
    A `Completion`.

  Raises:
    ValueError: bad target, or non-finite regularization values.
  """
  target, _ = check_target(target_cost=target_cost)
  from morph_net.keras_integration import layer_structure  # pylint: disable=g-import-not-at-top
  masked = _MaskedCost(network_regularizer)
  masks = [alive.copy() for alive in masked.alive]
  trained_cost = masked.cost(masks)
  order: List[Tuple[float, int, int]] = []
  if trained_cost > target:
    for leaf, (values, alive) in enumerate(zip(masked.values, masked.alive)):
      indices = np.flatnonzero(alive)
      if len(indices) <= 1:
        continue
      # Keep the channel with the largest value; the others are candidates.
      keep = indices[np.argmax(values[indices])]
      candidates = [int(i) for i in indices if i != keep]
      trial = list(masks)
      trial[leaf] = masks[leaf].copy()
      trial[leaf][candidates[0]] = False
      saving = trained_cost - masked.cost(trial)
      if saving <= 0.0:
        continue
      order.extend((float(values[i]) / saving, leaf, i) for i in candidates)
    order.sort()

  def removed_masks(k: int) -> List[np.ndarray]:
    result = [m.copy() for m in masks]
    for _, leaf, index in order[:k]:
      result[leaf][index] = False
    return result

  low, high = 0, len(order)
  if trained_cost > target:
    if masked.cost(removed_masks(high)) > target:
      low = high
    else:
      while low < high:  # smallest k with cost(k) <= target
        middle = (low + high) // 2
        if masked.cost(removed_masks(middle)) <= target:
          high = middle
        else:
          low = middle + 1
  final = removed_masks(low)
  # Put back removed channels, the last removed first, while the cost stays
  # within the target (the last channel in the order may overshoot).
  if 0 < low <= len(order) and masked.cost(final) <= target:
    for _, leaf, index in reversed(order[:low]):
      final[leaf][index] = True
      if masked.cost(final) > target:
        final[leaf][index] = False
  if refill and masked.cost(final) < target:
    _refill(masked, final, target)
  final_cost = masked.cost(final)
  exporter = layer_structure.LayerStructureExporter(
      network_regularizer, key_by='layer' if key_by_layer else 'op')
  graph_ops = _graph_ops(network_regularizer)
  out_masks, counts, removed, refilled = {}, {}, {}, {}
  for key, op_name in exporter.op_names.items():
    regularizer = network_regularizer.op_regularizer_manager.get_regularizer(
        graph_ops(op_name))
    mask = masked.mask_of(regularizer, final)
    trained = masked.mask_of(regularizer, masks)
    out_masks[key] = mask.copy()
    counts[key] = int(mask.sum())
    if int(trained.sum()) > counts[key]:
      removed[key] = int(trained.sum()) - counts[key]
    elif int(trained.sum()) < counts[key]:
      refilled[key] = counts[key] - int(trained.sum())
  return Completion(target_cost=target, trained_cost=trained_cost, cost=final_cost,
                    completed=bool(removed), reached=final_cost <= target,
                    removed=removed, refilled=refilled, counts=counts, masks=out_masks)


def _graph_ops(network_regularizer) -> Callable[[str], tf.Operation]:
  traced = getattr(network_regularizer, 'traced_model', None)
  if traced is not None:
    return traced.graph.get_operation_by_name
  ops = {op.name: op for op in network_regularizer.op_regularizer_manager.ops}
  return ops.__getitem__
