"""OpRegularizer stubs with fixed values, for tests.

Stubs store numpy values and create constants when read, so one stub works in
any `tf.compat.v1` graph, eagerly and inside `tf.function` (in a graph the same
constant tensors are returned on repeated reads).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import lazy_evaluation

IMAGE_SHAPE = (1, 17, 19, 3)


class OpRegularizerStub(generic_regularizers.OpRegularizer):
  """An OpRegularizer with constant regularization and alive vectors."""

  def __init__(self, regularization_vector: Sequence[float],
               alive_vector: Sequence[bool]):
    """Creates an instance.

    Args:
      regularization_vector: The float values of the regularization vector.
      alive_vector: The bool values of the alive vector.
    """
    self._regularization_values = np.asarray(regularization_vector, np.float32)
    self._alive_values = np.asarray(alive_vector, np.bool_)
    self._reg_cache = lazy_evaluation.PerGraphCache()
    self._alive_cache = lazy_evaluation.PerGraphCache()

  @property
  def regularization_vector(self) -> tf.Tensor:
    return self._reg_cache.get(
        lambda: tf.constant(self._regularization_values, tf.float32))

  @property
  def alive_vector(self) -> tf.Tensor:
    return self._alive_cache.get(
        lambda: tf.constant(self._alive_values, tf.bool))

  def __repr__(self):
    return (f'OpRegularizerStub({self._regularization_values.tolist()}, '
            f'{self._alive_values.tolist()})')


class OpRegularizerStubFactory:
  """Creates stub regularizers for ops from dicts keyed by op-name prefixes."""

  def __init__(self, alive_stub_dict: Mapping[str, Sequence[bool]],
               reg_stub_dict: Mapping[str, Sequence[float]]):
    """Creates an instance.

    Args:
      alive_stub_dict: op-name prefix (e.g. a scope `'conv1'`) → alive values.
      reg_stub_dict: op-name prefix → regularization values (same keys).
    """
    self._alive_stub_dict = alive_stub_dict
    self._reg_stub_dict = reg_stub_dict

  def create_conv2d_regularizer(self, conv_op: tf.Operation,
                                manager: Optional[Any] = None) -> OpRegularizerStub:
    """Returns the stub whose key is a prefix of `conv_op`'s name.

    Args:
      conv_op: The op to regularize.
      manager: Unused; kept for signature compatibility.

    Raises:
      ValueError: no key is a prefix of the op name.
    """
    del manager  # Unused.
    for key in self._reg_stub_dict:
      if conv_op.name.startswith(key):
        return OpRegularizerStub(self._reg_stub_dict[key],
                                 self._alive_stub_dict[key])
    raise ValueError(
        f'No regularizer for {conv_op.name}. Received: op {conv_op.name!r}; '
        f'stub keys (op-name prefixes): {sorted(self._reg_stub_dict)}.')


def image_stub() -> tf.Tensor:
  """A constant zero image of shape [1, 17, 19, 3], in the current context."""
  return tf.constant(np.zeros(IMAGE_SHAPE, np.float32))
