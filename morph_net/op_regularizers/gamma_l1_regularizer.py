"""An OpRegularizer that applies L1 regularization on batch-norm gammas.

The regularization vector of a batch-norm op's output channels is `|gamma|`
and a channel is alive iff `|gamma| > gamma_threshold` (strict).

Following the lazy-evaluation contract (`framework/lazy_evaluation.py`), the
regularizer keeps the *variable* behind the gamma tensor (or a `LazySlice` of
it, or, for TF1 users with non-variable weights, the graph tensor itself) and
computes its vectors when they are read: once per `tf.compat.v1` graph, and
afresh eagerly and inside every `tf.function` trace.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation
from morph_net.framework import tpu_util


class GammaL1Regularizer(generic_regularizers.OpRegularizer):
  """An OpRegularizer that L1-regularizes batch-norm gamma."""

  def __init__(self, gamma: Any, gamma_threshold: float):
    """Creates an instance.

    Args:
      gamma: The gammas of a batch-norm op: a tensor (a read of a resource
        variable is converted to that variable), a `tf.Variable`, or a
        `lazy_evaluation.LazySlice` of one of these.
      gamma_threshold: A channel is alive iff `|gamma| > gamma_threshold`.
    """
    self._gamma = tpu_util.maybe_convert_to_variable(gamma)
    self._gamma_threshold = gamma_threshold
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    """`|gamma|`, read in the current context."""
    return self._reg_cache.get(
        lambda: tf.abs(lazy_evaluation.materialize(self._gamma)))

  @property
  def alive_vector(self) -> tf.Tensor:
    """`|gamma| > gamma_threshold`, read in the current context."""
    return self._alive_cache.get(
        lambda: self.regularization_vector > self._gamma_threshold)
