"""OpRegularizers that concatenate and slice other regularizers.

* `ConcatRegularizer` stacks the vectors of several regularizers (e.g. the
  per-slice regularizers of an op with several OpSlices, or the inputs of a
  concat);
* `SlicingReferenceRegularizer` is a window `[begin, begin + size)` of a
  regularizer that is obtained through a callable when first needed.

Both are lazy: vectors are computed from the members when read (once per
`tf.compat.v1` graph, afresh eagerly and inside `tf.function`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation


class ConcatRegularizer(generic_regularizers.OpRegularizer):
  """An OpRegularizer that concatenates others, to reflect a concatenation op."""

  def __init__(
      self,
      regularizers_to_concatenate: Sequence[generic_regularizers.OpRegularizer]):
    """Creates an instance.

    The members' vectors are read once, in the current context, to check
    their dimensions.

    Args:
      regularizers_to_concatenate: OpRegularizers whose regularization and
        alive vectors are rank 1 with compatible lengths.

    Raises:
      ValueError: a member's vectors are not rank 1 or differ in length.
    """
    self._regularizers = list(regularizers_to_concatenate)
    for regularizer in self._regularizers:
      if not generic_regularizers.dimensions_are_compatible(regularizer):
        raise ValueError(
            'Bad regularizer: dimensions are not compatible. Both vectors of '
            'every concatenated regularizer must be rank 1 with the same '
            f'length. Received: {regularizer!r} with regularization_vector '
            f'shape {regularizer.regularization_vector.shape} and '
            f'alive_vector shape {regularizer.alive_vector.shape}.')
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularizers(self):
    """The concatenated regularizers, in order."""
    return list(self._regularizers)

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(lambda: tf.concat(
        [r.regularization_vector for r in self._regularizers], axis=0))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(lambda: tf.concat(
        [r.alive_vector for r in self._regularizers], axis=0))


class SlicingReferenceRegularizer(generic_regularizers.OpRegularizer):
  """An OpRegularizer that slices a segment of another regularizer.

  The regularizer to slice is obtained by calling `get_regularizer_to_slice`
  when a vector is first read (it may not exist yet when this object is
  created), and the callable is called again in every evaluation context.
  """

  def __init__(
      self,
      get_regularizer_to_slice: Callable[[], generic_regularizers.OpRegularizer],
      begin: int, size: int):
    """Creates an instance.

    Args:
      get_regularizer_to_slice: A zero-argument callable returning the
        OpRegularizer to slice.
      begin: First channel of the slice.
      size: Number of channels of the slice.
    """
    self._get_regularizer_to_slice = get_regularizer_to_slice
    self._begin = begin
    self._size = size
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  def _slice(self, vector: tf.Tensor) -> tf.Tensor:
    return tf.slice(vector, [self._begin], [self._size])

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(lambda: self._slice(
        self._get_regularizer_to_slice().regularization_vector))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(lambda: self._slice(
        self._get_regularizer_to_slice().alive_vector))
