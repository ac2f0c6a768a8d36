"""An OpRegularizer for probabilistic (logistic-sigmoid) gates (FiGS).

A gate keeps channel i with probability sigmoid(logits[i]). The regularization
vector is the gate's mask (`regularize_on_mask=True`, the default) or the keep
probabilities sigmoid(logits); a channel is alive iff the mask (or, with
`mask_as_alive_vector=False`, the probability) is `>= alive_threshold`
(inclusive, unlike the strict thresholds of the Gamma and GroupLasso
regularizers).

Following the lazy-evaluation contract (`framework/lazy_evaluation.py`), the
logits are kept as their `tf.Variable` (or a `LazySlice` of it) and the mask
as a recipe: a graph tensor (for `tf.compat.v1` graphs, evaluated in that
graph), a variable, or a zero-argument callable with a static `shape` that
computes it in the current context. See
`framework/logistic_sigmoid_source_op_handler.py` for what the mask is when
the analysed graph is a `tf.function` trace.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation
from morph_net.framework import tpu_util


def _rank(value: Any, name: str) -> int:
  try:
    shape = lazy_evaluation.static_shape(value)
  except (AttributeError, TypeError, ValueError):
    raise TypeError(
        f'{name} must be a tensor, a variable, a LazySlice or a callable with a '
        f'static `shape`. Received: {name}={value!r}.') from None
  return shape.rank


class ProbGatingRegularizer(generic_regularizers.OpRegularizer):
  """An OpRegularizer for the channels of a logistic-sigmoid gate."""

  def __init__(self, logits: Any, mask: Any, regularize_on_mask: bool = True,
               alive_threshold: float = 0.1, mask_as_alive_vector: bool = True):
    """Creates an instance.

    Args:
      logits: the gate's log-odds, rank 1: a tensor (a read of a resource
        variable is converted to that variable), a `tf.Variable`, or a
        `lazy_evaluation.LazySlice` of one of these.
      mask: the gate's mask, rank 1, same length: a tensor, a variable, a
        LazySlice, or a zero-argument callable with a static `shape`.
      regularize_on_mask: the regularization vector is the mask (True) or
        sigmoid(logits) (False).
      alive_threshold: a channel is alive iff its value is
        `>= alive_threshold`.
      mask_as_alive_vector: aliveness is decided on the mask (True) or on
        sigmoid(logits) (False).

    Raises:
      ValueError: `logits` or `mask` is not rank 1.
    """
    self._logits = tpu_util.maybe_convert_to_variable(logits)
    self._mask = mask
    logits_rank = _rank(self._logits, 'logits')
    if logits_rank != 1:
      raise ValueError(
          'logits tensor should be 1D: one log-odds per channel. Received: '
          f'logits of rank {logits_rank} ({self._logits!r}).')
    mask_rank = _rank(self._mask, 'mask')
    if mask_rank != 1:
      raise ValueError(
          'mask tensor should be 1D: one mask value per channel. Received: '
          f'mask of rank {mask_rank} ({self._mask!r}).')
    self._regularize_on_mask = regularize_on_mask
    self._alive_threshold = alive_threshold
    self._mask_as_alive_vector = mask_as_alive_vector
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  def _mask_value(self) -> tf.Tensor:
    return tf.cast(lazy_evaluation.materialize(self._mask), tf.float32)

  def _probability(self) -> tf.Tensor:
    return tf.sigmoid(tf.cast(lazy_evaluation.materialize(self._logits), tf.float32))

  @property
  def regularization_vector(self) -> tf.Tensor:
    """The mask, or sigmoid(logits), read in the current context."""
    return self._reg_cache.get(
        lambda: self._mask_value() if self._regularize_on_mask else self._probability())

  @property
  def alive_vector(self) -> tf.Tensor:
    """`(mask or sigmoid(logits)) >= alive_threshold`, in the current context."""
    def compute():
      value = self._mask_value() if self._mask_as_alive_vector else self._probability()
      return value >= self._alive_threshold
    return self._alive_cache.get(compute)

  @property
  def is_probabilistic(self) -> bool:
    """True: the vectors are probabilities (see ProbabilisticGroupingRegularizer)."""
    return True
