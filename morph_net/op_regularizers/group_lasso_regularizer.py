"""A regularizer that applies group lasso to the weights of a layer.

For a weight tensor `w` and the axes `reduce_dims` that span one output
channel (e.g. `(0, 1, 2)` for a `[kh, kw, in, out]` convolution kernel), the
norm of every channel is

  l2 = sqrt(mean(w**2, axis=reduce_dims))              (an RMS: ||w||_2 / sqrt(n))
  norm = l1_fraction * mean(|w|, axis=reduce_dims) + (1 - l1_fraction) * l2

(just `l2` when `l1_fraction == 0`). The norm is the regularization vector and a
channel is alive iff `norm > threshold` (strict).

The mean of squares is computed as `sum_of_squares(w) / n`. For kernels of
64 Ki elements or more reduced over their leading axes (conv `[kh, kw, in,
out]`, dense `[in, out]`) the sum is taken in two short stages of
`EuclideanNorm` over blocks of rows before the last column sum, without ever
holding `w**2` whole: TensorFlow reduces the leading axis of a matrix 5-8x
slower than a middle axis (VGG16's 25088x4096 kernel: 18 ms against 135 ms
for `reduce_sum(square(w), 0)` on a 2-core machine; see `sum_of_squares`).

Following the lazy-evaluation contract the regularizer keeps the variable
behind the weights (or a `LazySlice` of it, or a TF1 graph tensor) and computes
the norms when they are read.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

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


# Kernels of at least this many elements, reduced over all axes but the last,
# have their sum of squares taken in stages (`_column_sum_of_squares`); below,
# one `reduce_sum(square(w))` is as fast and adds fewer nodes to the graph.
_MIN_STAGED_ELEMENTS = 1 << 16
# Rows reduced per stage: the first factor that divides the rows. Blocks of
# ~16 rows are the fastest middle-axis reductions here (VGG16's dense kernel:
# 4 rows 39 ms, 16 rows 19 ms, 64 rows 55 ms, 256 rows 77 ms).
_ROW_FACTORS = (16, 8, 32, 12, 24, 20, 10, 6, 4, 48, 64)
_STAGES = 2


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
  """`reduce_sum(square(weights), reduce_dims)`, fast on large kernels.

  A float32 kernel of `_MIN_STAGED_ELEMENTS` or more, with static shape,
  reduced over all its axes but the last (conv `[kh, kw, in, out]`, dense
  `[in, out]`), is viewed as a `[rows, columns]` matrix and summed in stages
  (`_column_sum_of_squares`). Its gradient is `2 * weights * upstream` (a
  custom gradient: cheaper than differentiating the stages, and defined where
  a block of rows is all zero). Other kernels are reduced in one op.
  """
  if weights.dtype == tf.float32 and _staged(weights.shape, reduce_dims):
    columns = int(weights.shape[-1])
    return _column_sum_of_squares(tf.reshape(weights, [-1, columns]))
  return tf.reduce_sum(tf.square(weights), axis=reduce_dims)


def _staged(shape: tf.TensorShape, reduce_dims) -> bool:
  """Whether a kernel of `shape` is summed in stages: static, of rank >= 2,
  reduced over all its axes but the last, `_MIN_STAGED_ELEMENTS` or more."""
  rank = shape.rank
  return (rank is not None and rank >= 2 and shape.is_fully_defined()
          and shape.num_elements() >= _MIN_STAGED_ELEMENTS
          and sorted(int(d) % rank for d in reduce_dims) == list(range(rank - 1)))


def _row_factor(rows: int) -> Optional[int]:
  for factor in _ROW_FACTORS:
    if rows % factor == 0 and rows // factor >= 2:
      return factor
  return None


@tf.custom_gradient
def _column_sum_of_squares(matrix):
  """Column sums of `matrix**2` ([rows, columns], static shape).

  Each stage replaces blocks of `f` consecutive rows by their Euclidean norm
  (a reduction over the middle axis of `[rows / f, f, columns]`, which
  TensorFlow runs at close to memory speed and without a temporary for the
  squares); the few remaining rows are squared and summed. At most `_STAGES`
  stages; rows with no factor in `_ROW_FACTORS` are summed directly.
  """
  rows, columns = int(matrix.shape[0]), int(matrix.shape[1])
  norms = matrix
  for _ in range(_STAGES):
    factor = _row_factor(rows)
    if factor is None:
      break
    rows //= factor
    norms = tf.raw_ops.EuclideanNorm(
        input=tf.reshape(norms, [rows, factor, columns]), axis=[1])
  total = tf.reduce_sum(tf.square(norms), 0)

  def grad(upstream):
    return 2.0 * matrix * upstream

  return total, grad


def concat_sums_of_squares(kernels: Sequence[Tuple[tf.Tensor, Sequence[int]]]
                           ) -> tf.Tensor:
  """The `sum_of_squares` vectors of several kernels, concatenated.

  Built in few graph nodes per kernel (the first evaluation of a network's
  cost costs ~0.35 ms per node to trace and optimise): a kernel reduced over
  its leading axes with `_MIN_STAGED_ELEMENTS` or more elements is one
  reshape to `[rows / f, f, columns]` and two `EuclideanNorm`s (over the
  middle axis, then over the first: the fast order); any other kernel is one
  `EuclideanNorm` over `reduce_dims`. Axis and shape constants are shared,
  the norms concatenated and squared once, and one custom gradient covers all
  kernels: `2 * weights * upstream` (defined where a block of rows is zero).

  Args:
    kernels: (float32 weights of static shape, reduce_dims) pairs.

  Returns:
    A float32 vector: the sums of squares of every kept channel, kernel after
    kernel.
  """
  dims = [tuple(sorted(int(d) % w.shape.rank for d in reduce_dims))
          for w, reduce_dims in kernels]

  @tf.custom_gradient
  def forward(*weights):
    constants = {}

    def constant(value):
      key = tuple(value)
      if key not in constants:
        constants[key] = tf.constant(list(value), tf.int32)
      return constants[key]

    norms = []
    sizes = []
    for w, reduced in zip(weights, dims):
      shape = w.shape.as_list()
      rank = len(shape)
      sizes.append(int(np.prod([shape[d] for d in range(rank)
                                if d not in reduced])))
      factor = None
      if _staged(w.shape, reduced):
        rows = int(np.prod(shape[:-1]))
        factor = _row_factor(rows)
      if factor is None:
        norms.append(tf.raw_ops.EuclideanNorm(input=w,
                                              axis=constant(reduced)))
        continue
      blocks = tf.raw_ops.EuclideanNorm(
          input=tf.reshape(w, constant((rows // factor, factor, shape[-1]))),
          axis=constant((1,)))
      norms.append(tf.raw_ops.EuclideanNorm(input=blocks, axis=constant((0,))))
    total = tf.square(norms[0] if len(norms) == 1 else tf.concat(norms, 0))

    def grad(upstream):
      pieces = tf.split(upstream, sizes) if len(sizes) > 1 else [upstream]
      gradients = []
      for w, reduced, piece in zip(weights, dims, pieces):
        broadcast = [1 if d in reduced else -1 for d in range(w.shape.rank)]
        gradients.append(2.0 * w * tf.reshape(piece, broadcast))
      return gradients

    return total, grad

  return forward(*[w for w, _ in kernels])


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
