"""An OpRegularizer for ops without a regularizer: zeros, all channels alive."""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation


class ConstantOpRegularizer(generic_regularizers.OpRegularizer):
  """A regularizer with zero regularization and every channel alive.

  The manager uses it to pad the unregularized slices of an op that has a
  regularizer on other slices. The constants are created when read, in the
  current context (once per `tf.compat.v1` graph).
  """

  def __init__(self, size: int):
    """Creates an instance.

    Args:
      size: Number of channels.

    Raises:
      ValueError: `size` is negative.
    """
    if int(size) < 0:
      raise ValueError(
          f'size must be a non-negative number of channels. Received: size={size!r}.')
    self._size = int(size)
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(lambda: tf.zeros([self._size], tf.float32))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(lambda: tf.ones([self._size], tf.bool))
