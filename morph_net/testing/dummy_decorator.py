"""A trivial OpRegularizer decorator, for tests: scales the regularization."""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation


class DummyDecorator(generic_regularizers.OpRegularizer):
  """Multiplies the regularization vector by `scale`; keeps the alive vector.

  Lazy like the regularizer it wraps: the scaled vector is computed when read.
  """

  def __init__(self, regularizer_object: generic_regularizers.OpRegularizer,
               scale: float):
    """Creates an instance.

    Args:
      regularizer_object: The OpRegularizer to decorate.
      scale: Factor applied to the regularization vector.
    """
    self._regularizer_object = regularizer_object
    self._scale = scale
    self._reg_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(
        lambda: self._scale * self._regularizer_object.regularization_vector)

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._regularizer_object.alive_vector
