"""A regularizer that applies group lasso to the weights of a layer.

For a weight tensor `w` and the axes `reduce_dims` that span one output
channel (e.g. `(0, 1, 2)` for a `[kh, kw, in, out]` convolution kernel), the
norm of every channel is

  l2 = sqrt(mean(w**2, axis=reduce_dims))              (an RMS: ||w||_2 / sqrt(n))
  norm = l1_fraction * mean(|w|, axis=reduce_dims) + (1 - l1_fraction) * l2

(just `l2` when `l1_fraction == 0`). The norm is the regularization vector and a
channel is alive iff `norm > threshold` (strict).

The mean of squares is computed as `sum_of_squares(w) / n`: for large kernels
(>= 32 MiB) reduced over their leading axes (VGG's 25088x4096 dense kernel) the
sum is accumulated block by block (`sum_of_squares`), so that `w**2` is never
held whole (VGG16: ~3x faster than `reduce_mean(square(w))`).

Following the lazy-evaluation contract the regularizer keeps the variable
behind the weights (or a `LazySlice` of it, or a TF1 graph tensor) and computes
the norms when they are read.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

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

  @property
  def reduce_dims(self) -> tuple:
    """The reduced axes of the weights."""
    return self._reduce_dims

  @property
  def weight_source(self) -> Any:
    """The variable (or `LazySlice`, or graph tensor) behind the weights."""
    return self._weight_tensor

  @property
  def threshold(self) -> float:
    """A channel is alive iff its norm is `> threshold`."""
    return self._threshold

  @property
  def l1_fraction(self) -> float:
    """The weight of the L1 term of the norm."""
    return self._l1_fraction

  def _compute_norm(self) -> tf.Tensor:
    weights = lazy_evaluation.materialize(self._weight_tensor)
    l2_norm = rms(weights, self._reduce_dims)
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


# Kernels of at least this many elements (32 MiB of float32), reduced over all
# axes but the last, have their sum of squares accumulated in blocks of
# ~_BLOCK_ELEMENTS elements (1 MiB: the squares of a block stay in cache).
# Smaller kernels are squared whole: a loop costs ~30 ms of tracing, more than
# it saves on them (VGG16: only the two 4096-wide dense kernels are blocked).
_MIN_BLOCKED_ELEMENTS = 1 << 23
_BLOCK_ELEMENTS = 1 << 18


def reduced_count(shape: tf.TensorShape, reduce_dims) -> Optional[int]:
  """Number of elements reduced into one channel, or None if not static."""
  count = 1
  for d in reduce_dims:
    size = shape[d]
    if size is None:
      return None
    count *= int(size)
  return count


def rms(weights: tf.Tensor, reduce_dims) -> tf.Tensor:
  """`sqrt(mean(weights**2, reduce_dims))`, as `sqrt(sum_of_squares / n)`."""
  count = reduced_count(weights.shape, reduce_dims)
  if count is None:  # A dynamic shape: the mean counts at run time.
    return tf.sqrt(tf.reduce_mean(tf.square(weights), axis=reduce_dims))
  return tf.sqrt(sum_of_squares(weights, reduce_dims) / float(count))


def sum_of_squares(weights: tf.Tensor, reduce_dims) -> tf.Tensor:
  """`reduce_sum(square(weights), reduce_dims)` without squaring large kernels whole.

  A float32 kernel of `_MIN_BLOCKED_ELEMENTS` or more, reduced over all its
  axes but the last (conv `[kh, kw, in, out]`, dense `[in, out]`), is summed
  in row blocks inside a `tf.while_loop`; its gradient is `2 * weights *
  upstream` (a custom gradient: the loop's own gradient would rebuild the
  kernel once per block).
  """
  shape = weights.shape
  rank = shape.rank
  if (rank is not None and rank >= 2 and shape.is_fully_defined()
      and weights.dtype == tf.float32
      and shape.num_elements() >= _MIN_BLOCKED_ELEMENTS
      and sorted(d % rank for d in reduce_dims) == list(range(rank - 1))):
    columns = int(shape[-1])
    return _blocked_column_sum_of_squares(
        tf.reshape(weights, [-1, columns]))
  return tf.reduce_sum(tf.square(weights), axis=reduce_dims)


@tf.custom_gradient
def _blocked_column_sum_of_squares(matrix):
  """Column sums of `matrix**2` ([rows, columns], static), block by block."""
  rows, columns = int(matrix.shape[0]), int(matrix.shape[1])
  block_rows = max(1, _BLOCK_ELEMENTS // columns)
  num_blocks = rows // block_rows
  blocks = tf.reshape(matrix[:num_blocks * block_rows],
                      [num_blocks, block_rows, columns])

  def body(i, total):
    return i + 1, total + tf.reduce_sum(tf.square(blocks[i]), 0)

  _, total = tf.while_loop(lambda i, _: i < num_blocks, body,
                           (tf.constant(0), tf.zeros([columns], tf.float32)))
  if num_blocks * block_rows < rows:
    total = total + tf.reduce_sum(
        tf.square(matrix[num_blocks * block_rows:]), 0)

  def grad(upstream):
    return 2.0 * matrix * upstream

  return total, grad


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
