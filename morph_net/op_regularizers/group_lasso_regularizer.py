"""A regularizer that applies group lasso to the weights of a layer.

For a weight tensor `w` and the axes `reduce_dims` that span one output
channel (e.g. `(0, 1, 2)` for a `[kh, kw, in, out]` convolution kernel), the
norm of every channel is

  l2 = sqrt(mean(w**2, axis=reduce_dims))              (an RMS: ||w||_2 / sqrt(n))
  norm = l1_fraction * mean(|w|, axis=reduce_dims) + (1 - l1_fraction) * l2

(just `l2` when `l1_fraction == 0`). The norm is the regularization vector and a
channel is alive iff `norm > threshold` (strict).

Following the lazy-evaluation contract the regularizer keeps the variable
behind the weights (or a `LazySlice` of it, or a TF1 graph tensor) and computes
the norms when they are read.
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation
from morph_net.framework import tpu_util


class GroupLassoRegularizer(generic_regularizers.OpRegularizer):
  """A regularizer for convolutions and matmuls, based on group lasso."""

  def __init__(self, weight_tensor: Any, reduce_dims: Sequence[int],
               threshold: float, l1_fraction: float = 0.0):
    """Creates an instance.

    Args:
      weight_tensor: The weights of the op: a tensor (a read of a resource
        variable is converted to that variable), a `tf.Variable`, or a
        `lazy_evaluation.LazySlice` of one of these.
      reduce_dims: The axes of `weight_tensor` reduced to obtain one norm per
        output channel, e.g. `(0, 1, 2)` for a `[kh, kw, in, out]` kernel.
        Exactly one axis must remain.
      threshold: A channel is alive iff its norm is `> threshold`.
      l1_fraction: The weight of the L1 term of the norm, in [0.0, 1.0].

    Raises:
      ValueError: `l1_fraction` is outside [0.0, 1.0], or `reduce_dims` are
        not distinct axes of `weight_tensor` leaving exactly one axis.
    """
    if not 0.0 <= l1_fraction <= 1.0:
      raise ValueError(
          f'l1_fraction should be in [0.0, 1.0], not {l1_fraction:e}. '
          f'Received: l1_fraction={l1_fraction!r}.')
    self._weight_tensor = tpu_util.maybe_convert_to_variable(weight_tensor)
    self._reduce_dims = _check_reduce_dims(
        reduce_dims, lazy_evaluation.static_shape(self._weight_tensor).rank)
    self._threshold = threshold
    self._l1_fraction = l1_fraction
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  def _compute_norm(self) -> tf.Tensor:
    weights = lazy_evaluation.materialize(self._weight_tensor)
    l2_norm = tf.sqrt(
        tf.reduce_mean(tf.square(weights), axis=self._reduce_dims))
    if self._l1_fraction > 0.0:
      l1_norm = tf.reduce_mean(tf.abs(weights), axis=self._reduce_dims)
      return (self._l1_fraction * l1_norm +
              (1.0 - self._l1_fraction) * l2_norm)
    return l2_norm

  @property
  def regularization_vector(self) -> tf.Tensor:
    """The norm of every output channel, read in the current context."""
    return self._reg_cache.get(self._compute_norm)

  @property
  def alive_vector(self) -> tf.Tensor:
    """`norm > threshold`, read in the current context."""
    return self._alive_cache.get(
        lambda: self.regularization_vector > self._threshold)


def _check_reduce_dims(reduce_dims, rank):
  """Returns `reduce_dims` as a tuple after checking them against `rank`."""
  try:
    dims = tuple(int(d) for d in reduce_dims)
  except TypeError:
    raise TypeError(
        'reduce_dims must be a sequence of ints. '
        f'Received: reduce_dims={reduce_dims!r}.') from None
  if rank is None:
    return dims
  normalized = [d + rank if d < 0 else d for d in dims]
  if (any(not 0 <= d < rank for d in normalized)
      or len(set(normalized)) != len(normalized)
      or len(normalized) != rank - 1):
    raise ValueError(
        'reduce_dims must be distinct axes of the weight tensor leaving '
        f'exactly one (output-channel) axis. Received: reduce_dims={dims!r} '
        f'for weights of rank {rank}.')
  return dims
