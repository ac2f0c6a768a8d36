"""Groups probabilistic OpRegularizers: P(at least one member keeps a channel).

Used by the LogisticSigmoid network regularizers as the manager's
`create_grouping_regularizer`. When several gates share channels (a residual
add of two gated branches, a gated concat member and its consumer, ...), a
channel of the group survives if any gate keeps it. With per-member keep
probabilities p_i (their regularization vectors), the group's vector is

    1 - prod_i (1 - p_i)

and its alive vector is the element-wise OR of the members' alive vectors.

Beyond the original, the grouped regularizer is itself `is_probabilistic`, so
groups may be nested; the result does not depend on the nesting order.
"""

from __future__ import annotations

import functools
from typing import Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation


class ProbabilisticGroupingRegularizer(generic_regularizers.OpRegularizer):
  """Groups probabilistic regularizers by 1 - prod(1 - p) and OR."""

  def __init__(
      self, regularizers_to_group: Sequence[generic_regularizers.OpRegularizer]):
    """Creates an instance.

    Args:
      regularizers_to_group: at least two OpRegularizers with a truthy
        `is_probabilistic` attribute and vectors of the same length.

    Raises:
      ValueError: fewer than two regularizers are given, or one of them is not
        probabilistic.
    """
    regularizers = list(regularizers_to_group)
    if len(regularizers) < 2:
      raise ValueError(
          'Groups must be of at least size 2. '
          f'Received: {len(regularizers)} regularizer(s): {regularizers!r}.')
    for regularizer in regularizers:
      if not getattr(regularizer, 'is_probabilistic', False):
        raise ValueError(
            'Regularizer is not probabilistic: ProbabilisticGroupingRegularizer '
            'combines keep probabilities (regularizers with a truthy '
            '`is_probabilistic`, e.g. ProbGatingRegularizer). Received: '
            f'{regularizer!r} of type {type(regularizer).__name__}. Use '
            'MaxGroupingRegularizer for other regularizers.')
    self._regularizers = regularizers
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    """1 - prod_i(1 - p_i): the probability that at least one member is on."""
    def compute():
      all_off = functools.reduce(
          tf.multiply, [1.0 - r.regularization_vector for r in self._regularizers])
      return 1.0 - all_off
    return self._reg_cache.get(compute)

  @property
  def alive_vector(self) -> tf.Tensor:
    """Element-wise OR of the members' alive vectors."""
    return self._alive_cache.get(lambda: functools.reduce(
        tf.logical_or, [r.alive_vector for r in self._regularizers]))

  @property
  def is_probabilistic(self) -> bool:
    return True
