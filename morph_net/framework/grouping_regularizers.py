"""Regularizers that group other OpRegularizers into one.

When several ops must live or die together (a residual add, a concat member
and its consumer, ...) and more than one of them is a source, the manager
combines their regularizers into one with a grouping regularizer:

* `MaxGroupingRegularizer`: element-wise max of the regularization vectors,
  element-wise OR of the alive vectors;
* `L2GroupingRegularizer`: element-wise L2 norm of the regularization vectors,
  alive iff that norm is `> threshold` (strict).

Grouping regularizers are lazy: they keep their member regularizers and
compute from the members' vectors when read (once per `tf.compat.v1` graph,
afresh eagerly and inside `tf.function`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation

DEFAULT_THRESHOLD = 0.01


def _check_group_size(regularizers_to_group):
  regularizers = list(regularizers_to_group)
  if len(regularizers) < 2:
    raise ValueError(
        'Groups must be of at least size 2. '
        f'Received: {len(regularizers)} regularizer(s): {regularizers!r}.')
  return regularizers


class MaxGroupingRegularizer(generic_regularizers.OpRegularizer):
  """Groups regularizers by the element-wise max (regularization) and OR (alive)."""

  def __init__(
      self, regularizers_to_group: Sequence[generic_regularizers.OpRegularizer]):
    """Creates an instance.

    Args:
      regularizers_to_group: At least two OpRegularizers whose vectors have
        the same length.

    Raises:
      ValueError: fewer than two regularizers are given.
    """
    self._regularizers = _check_group_size(regularizers_to_group)
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(lambda: functools.reduce(
        tf.maximum, [r.regularization_vector for r in self._regularizers]))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(lambda: functools.reduce(
        tf.logical_or, [r.alive_vector for r in self._regularizers]))


class L2GroupingRegularizer(generic_regularizers.OpRegularizer):
  """Groups regularizers by the element-wise L2 norm of their regularization.

  For member regularization vectors r_i, the grouped vector is
  R_j = sqrt(sum_i r_ij**2) and a channel is alive iff R_j > threshold. The
  members' alive vectors are not used. Nesting is associative: grouping
  (r1, r2) and then r3 gives the same vector as grouping r1, r2, r3 at once.
  """

  def __init__(
      self, regularizers_to_group: Sequence[generic_regularizers.OpRegularizer],
      threshold: float = DEFAULT_THRESHOLD):
    """Creates an instance.

    Args:
      regularizers_to_group: At least two OpRegularizers whose vectors have
        the same length.
      threshold: A channel is alive iff the grouped norm is `> threshold`.
        Defaults to `DEFAULT_THRESHOLD`.

    Raises:
      ValueError: fewer than two regularizers are given.
    """
    self._regularizers = _check_group_size(regularizers_to_group)
    self._threshold = threshold
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(lambda: tf.sqrt(tf.add_n(
        [lazy_square(r.regularization_vector) for r in self._regularizers])))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(
        lambda: self.regularization_vector > self._threshold)


def lazy_square(tensor: tf.Tensor) -> tf.Tensor:
  """Computes the square of a tensor in a lazy way.

  If `tensor` is produced by a `Sqrt` op (in a `tf.compat.v1` graph or a
  `tf.function` trace), its radicand is returned instead of squaring the
  square root, which is both cheaper and exact. Eager tensors are squared.

  Args:
    tensor: A float tensor.

  Returns:
    A tensor with the element-wise square of `tensor`.
  """
  if not tf.executing_eagerly() and hasattr(tensor, 'op'):
    op = tensor.op
    if op is not None and op.type == 'Sqrt':
      return op.inputs[0]
  return tf.square(tensor)
