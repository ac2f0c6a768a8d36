"""Uniform width expansion under a cost target (MorphNet, Algorithm 1, step 2).

Given learned widths O' (a structure of alive counts) and a target cost ζ in a
resource (FLOPs, model size, latency on a named hardware, ...), find the
largest width multiplier ω whose rounded widths round(ω·O') keep the network
within the target:

  expansion = expand_structure(model, 'train/learned_structure/alive_5000',
                               target_cost=seed_flops,
                               cost_fn=regularizer_cost_fn(GammaFlopsRegularizer,
                                                           gamma_threshold=1e-2))
  bigger = shrink_model(model, expansion.widths)   # fresh weights, retrain it

Rounding rule: a layer of learned width w > 0 gets `max(1, floor(ω·w + 1/2))`
(round half up, at least one channel), computed exactly with rational
arithmetic (`fractions.Fraction(ω)`), so a float ω gives the same widths
everywhere. Width 0 stays 0 (the layer stays removed). Layers that share
channels (both sides of a residual Add, a depthwise layer and its input) have
the same learned count and therefore the same rounded width. Only the layers of
the structure are scaled; the others keep their width, and so do the layers
producing the model's outputs (e.g. the classifier; `output_width_layers`).
`<layer>/depthwise` keys are ignored (a depthwise width follows its input).

Costs are measured by `cost_fn` on freshly built models (`shrink_model` of the
seed), i.e. with fresh weights: with `regularizer_cost_fn` every channel is
alive as long as the threshold is below the initial gammas (1) or kernel norms
(pass `threshold=0.0` for GroupLasso regularizers). The cost must not decrease
when widths grow (true of FLOPs, model size and latency).

Search: the widths are a step function of ω that changes only at the
breakpoints (n + 1/2) / w. The search brackets the target by doubling or
halving ω, then bisects over the breakpoints in the bracket, so the result is
exact: the expanded cost never exceeds the target, and the next breakpoint
(one rounding step up: at least one layer one channel wider) exceeds it.
Every distinct width vector is costed once (memoized).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from fractions import Fraction
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import keras
import numpy as np

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import shrink
from morph_net.keras_integration import structure_io

CostFn = Callable[[keras.Model], float]


@dataclasses.dataclass(frozen=True)
class ExpansionResult:
  """The expanded structure and the costs around it.

  Attributes:
    widths: the expanded structure `{layer name: width}` = round(ω·O').
    width_multiplier: a multiplier ω giving `widths` (the middle of the range
      of multipliers that give them, safe from float rounding).
    min_width_multiplier: the smallest multiplier giving `widths` (inclusive;
      ~0 when every width is 1).
    next_width_multiplier: the next rounding step (exclusive end of the
      range): the smallest multiplier giving wider widths, `next_widths`.
    next_widths: the widths one rounding step up.
    target_cost: the target ζ.
    seed_cost: cost of the seed network (the model as given, all widths).
    shrunk_cost: cost of the learned structure O' (ω = 1).
    expanded_cost: cost of `widths`, <= `target_cost`.
    next_cost: cost of `next_widths`, > `target_cost`.
    evaluations: how many models were costed.
  """
  widths: Dict[str, int]
  width_multiplier: float
  min_width_multiplier: float
  next_width_multiplier: float
  next_widths: Dict[str, int]
  target_cost: float
  seed_cost: float
  shrunk_cost: float
  expanded_cost: float
  next_cost: float
  evaluations: int

  def as_dict(self) -> Dict[str, Any]:
    """A JSON-serializable dict of the result."""
    return dataclasses.asdict(self)


def regularizer_cost_fn(regularizer_class: type, *args: Any,
                        input_shape: Any = None, **kwargs: Any) -> CostFn:
  """A cost function: `regularizer_class.from_keras_model(model, ...).get_cost()`.

  Example:
    flops = regularizer_cost_fn(GammaFlopsRegularizer, gamma_threshold=1e-2)
    latency = regularizer_cost_fn(GroupLassoLatencyRegularizer, threshold=0.0,
                                  hardware='V100')

  Args:
    regularizer_class: a network regularizer class (it has `from_keras_model`).
    *args: its arguments after `output_boundary` (e.g. the threshold).
    input_shape: passed to `from_keras_model` (needed for subclassed models or
      unknown spatial sizes).
    **kwargs: its keyword arguments.

  Returns:
    `cost_fn(model) -> float`.
  """
  if not (isinstance(regularizer_class, type)
          and issubclass(regularizer_class, generic_regularizers.NetworkRegularizer)):
    raise TypeError(
        'regularizer_class must be a NetworkRegularizer class such as '
        f'GammaFlopsRegularizer. Received: {regularizer_class!r}.')

  def cost_fn(model: keras.Model) -> float:
    regularizer = regularizer_class.from_keras_model(
        model, *args, input_shape=input_shape, **kwargs)
    return float(regularizer.get_cost())

  return cost_fn


def learned_counts(structure: shrink.StructureLike) -> Dict[str, int]:
  """Alive counts of a structure: a dict/file of counts or masks, or a regularizer."""
  if isinstance(structure, generic_regularizers.NetworkRegularizer):
    return layer_structure.LayerStructureExporter(structure).alive_counts()
  entries = structure_io.load_structure(structure)
  return {k: (int(np.count_nonzero(v)) if isinstance(v, np.ndarray) else int(v))
          for k, v in entries.items()}


def scale_structure(structure: Mapping[str, int], width_multiplier: Any) -> Dict[str, int]:
  """Rounded widths `max(1, floor(ω·w + 1/2))` (0 stays 0), see the module doc.

  Args:
    structure: `{layer name: learned width}`; `<layer>/depthwise` keys are
      dropped.
    width_multiplier: ω > 0 (int, float or Fraction; used exactly).

  Returns:
    `{layer name: width}`.
  """
  omega = _as_fraction(width_multiplier)
  result = {}
  for key, width in structure.items():
    if key.endswith(structure_io.DEPTHWISE_SUFFIX):
      continue
    result[key] = 0 if width == 0 else max(1, math.floor(omega * width + Fraction(1, 2)))
  return result


def _as_fraction(value: Any) -> Fraction:
  if isinstance(value, bool) or not isinstance(value, (numbers.Rational, float)):
    raise TypeError(f'width_multiplier must be a number. Received: {value!r}.')
  if not (math.isfinite(float(value)) and value > 0):
    raise ValueError(f'width_multiplier must be finite and > 0. Received: {value!r}.')
  return Fraction(value)


def _check_target(target_cost: Any) -> float:
  if isinstance(target_cost, bool) or not isinstance(target_cost, numbers.Real):
    raise TypeError(f'target_cost must be a number. Received: target_cost={target_cost!r}.')
  target = float(target_cost)
  if not (math.isfinite(target) and target > 0):
    raise ValueError(
        f'target_cost must be finite and > 0. Received: target_cost={target_cost!r}.')
  return target


def _float_at_least(value: Fraction) -> float:
  """The smallest float >= value (so that Fraction(result) >= value)."""
  result = float(value)
  if Fraction(result) < value:
    result = math.nextafter(result, math.inf)
  return result


def _previous_breakpoint(widths, omega: Fraction) -> Fraction:
  """The largest breakpoint (n + 1/2) / w <= omega (n >= 1), or 0 if none."""
  best = Fraction(0)
  for w in widths:
    n = math.floor(omega * w - Fraction(1, 2))
    if n >= 1:
      best = max(best, Fraction(2 * n + 1, 2 * w))
  return best


def expand_structure(model: keras.Model, structure: shrink.StructureLike,
                     target_cost: float, cost_fn: CostFn, *,
                     max_width_multiplier: float = 64.0) -> ExpansionResult:
  """Finds the largest width multiplier whose rounded widths meet the target.

  Args:
    model: the seed model (its topology and the widths of layers outside the
      structure).
    structure: the learned widths O': `{layer name: alive count}` (or masks),
      a structure file, or a trained regularizer built on `model`.
    target_cost: the target ζ, in `cost_fn`'s unit.
    cost_fn: `cost_fn(model) -> float`, e.g. `regularizer_cost_fn(...)`.
    max_width_multiplier: give up (ValueError) if the cost stays within the
      target up to this multiplier. Defaults to 64.

  Returns:
    An ExpansionResult.

  Raises:
    ValueError: the target is below the cost of the smallest network (every
      scaled layer at width 1), the structure has no layer of width > 0, or the
      target is not reached below `max_width_multiplier`.
  """
  target = _check_target(target_cost)
  if not callable(cost_fn):
    raise TypeError(f'cost_fn must be callable. Received: {cost_fn!r}.')
  pinned = set(shrink.output_width_layers(model))
  counts = {k: w for k, w in scale_structure(learned_counts(structure), 1).items()
            if k not in pinned}
  scalable = sorted({w for w in counts.values() if w > 0})
  if not scalable:
    raise ValueError(
        'The structure has no layer of width > 0 to expand. Received: '
        f'{counts!r}.')
  memo: Dict[Tuple[Tuple[str, int], ...], float] = {}

  def cost_of(widths: Mapping[str, int]) -> float:
    key = tuple(sorted(widths.items()))
    if key not in memo:
      memo[key] = float(cost_fn(shrink.shrink_model(model, dict(widths))))
    return memo[key]

  def cost_at(omega: Fraction) -> float:
    return cost_of(scale_structure(counts, omega))

  seed_cost = cost_of({})
  shrunk_cost = cost_at(Fraction(1))
  # Below 1 / (2·max w) every scaled width is 1: the cheapest network.
  lowest = Fraction(1, 2 * scalable[-1])
  if cost_at(lowest) > target:
    raise ValueError(
        f'target_cost={target!r} is below the cost of the smallest network with this '
        f'structure ({cost_at(lowest)!r}, every scaled layer at width 1). Raise the '
        'target or leave more layers out of the structure.')
  limit = Fraction(max_width_multiplier)
  lo = Fraction(1)
  if shrunk_cost <= target:
    hi = lo * 2
    while cost_at(hi) <= target:
      if hi >= limit:
        raise ValueError(
            f'The cost stays within target_cost={target!r} up to width multiplier '
            f'{float(hi)} (cost {cost_at(hi)!r}); the scaled layers hardly drive '
            'the cost. Raise max_width_multiplier or check the cost function.')
      lo, hi = hi, hi * 2
  else:
    hi = lo
    lo = hi / 2
    while cost_at(lo) > target:
      hi, lo = lo, max(lo / 2, lowest)
  # Breakpoints (n + 1/2) / w in (lo, hi]: where some width grows by one.
  breakpoints = set()
  for w in scalable:
    first = max(1, math.ceil(lo * w - Fraction(1, 2)))
    for n in range(first, math.floor(hi * w - Fraction(1, 2)) + 1):
      point = Fraction(2 * n + 1, 2 * w)
      if lo < point <= hi:
        breakpoints.add(point)
  candidates = [lo] + sorted(breakpoints)
  good, bad = 0, len(candidates) - 1  # cost(candidates[good]) <= target < cost(bad)
  while bad - good > 1:
    middle = (good + bad) // 2
    if cost_at(candidates[middle]) <= target:
      good = middle
    else:
      bad = middle
  best, following = candidates[good], candidates[bad]
  start = _previous_breakpoint(scalable, best)
  return ExpansionResult(
      widths=scale_structure(counts, best),
      width_multiplier=float((start + following) / 2),
      min_width_multiplier=float(start),
      next_width_multiplier=_float_at_least(following),
      next_widths=scale_structure(counts, following),
      target_cost=target,
      seed_cost=seed_cost,
      shrunk_cost=shrunk_cost,
      expanded_cost=cost_at(best),
      next_cost=cost_at(following),
      evaluations=len(memo),
  )


def expand_model(model: keras.Model, structure: shrink.StructureLike,
                 target_cost: float, cost_fn: CostFn, *,
                 max_width_multiplier: float = 64.0,
                 name: Optional[str] = None) -> Tuple[keras.Model, ExpansionResult]:
  """`expand_structure`, then the expanded model (fresh weights) built from it."""
  result = expand_structure(model, structure, target_cost, cost_fn,
                            max_width_multiplier=max_width_multiplier)
  return shrink.shrink_model(model, result.widths, name=name), result
