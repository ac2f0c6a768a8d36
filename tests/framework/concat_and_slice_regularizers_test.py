"""Tests for ConcatRegularizer and SlicingReferenceRegularizer (spec 8.2)."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import concat_and_slice_regularizers
from morph_net.framework import generic_regularizers
from morph_net.testing import op_regularizer_stub

CONTEXTS = ('graph', 'eager', 'function')

R1, A1 = [0.1, 0.3, 0.6, 0.2], [False, True, True, False]
R2, A2 = [0.2, 0.4, 0.5], [False, True, False]


def _evaluate_in(context, fn):
  """Runs `fn` in a fresh TF1 graph + session, eagerly, or in a tf.function."""
  if context == 'graph':
    with tf.Graph().as_default():
      tensors = fn()
      with tf.compat.v1.Session() as sess:
        return sess.run(tensors)
  if context == 'function':
    fn = tf.function(fn)
  return tf.nest.map_structure(lambda t: t.numpy(), fn())


def _vectors(reg):
  return lambda: (reg.regularization_vector, reg.alive_vector)


def test_concat_in_every_context():
  reg = concat_and_slice_regularizers.ConcatRegularizer([
      op_regularizer_stub.OpRegularizerStub(R1, A1),
      op_regularizer_stub.OpRegularizerStub(R2, A2)])
  for context in CONTEXTS:
    reg_vector, alive = _evaluate_in(context, _vectors(reg))
    np.testing.assert_allclose(reg_vector, R1 + R2)  # list concatenation
    np.testing.assert_array_equal(alive, A1 + A2)


class _BadShapeRegularizer(generic_regularizers.OpRegularizer):

  def __init__(self, reg_shape, alive_shape):
    self._reg_shape, self._alive_shape = reg_shape, alive_shape

  @property
  def regularization_vector(self):
    return tf.zeros(self._reg_shape)

  @property
  def alive_vector(self):
    return tf.ones(self._alive_shape, tf.bool)


@pytest.mark.parametrize('reg_shape, alive_shape', [([3], [4]), ([2, 2], [2, 2])])
def test_concat_rejects_incompatible_dimensions(reg_shape, alive_shape):
  good = op_regularizer_stub.OpRegularizerStub(R2, A2)
  with pytest.raises(ValueError, match='Bad regularizer: dimensions are not compatible.*'
                     'Received:'):
    concat_and_slice_regularizers.ConcatRegularizer(
        [good, _BadShapeRegularizer(reg_shape, alive_shape)])


def test_slicing_reference_in_every_context():
  reg = concat_and_slice_regularizers.SlicingReferenceRegularizer(
      lambda: op_regularizer_stub.OpRegularizerStub(R1, A1), 1, 2)
  for context in CONTEXTS:
    reg_vector, alive = _evaluate_in(context, _vectors(reg))
    np.testing.assert_allclose(reg_vector, [0.3, 0.6])  # R1[1:3]
    np.testing.assert_array_equal(alive, [True, True])  # A1[1:3]


def test_slicing_reference_gets_the_regularizer_only_when_read():
  calls = []
  target = {}

  def get_regularizer():
    calls.append(1)
    return target['reg']

  reg = concat_and_slice_regularizers.SlicingReferenceRegularizer(get_regularizer, 2, 2)
  assert not calls  # The regularizer to slice does not exist yet.
  target['reg'] = op_regularizer_stub.OpRegularizerStub(R1, A1)
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.6, 0.2])  # R1[2:4]
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False])
  assert calls


def test_slicing_reference_follows_a_variable():
  gamma = tf.Variable([1.0, 2.0, 3.0])

  class _VariableRegularizer(generic_regularizers.OpRegularizer):
    regularization_vector = property(lambda self: tf.convert_to_tensor(gamma))
    alive_vector = property(lambda self: gamma > 1.5)

  reg = concat_and_slice_regularizers.SlicingReferenceRegularizer(_VariableRegularizer, 0, 2)
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [False, True])
  gamma.assign([2.0, 0.0, 0.0])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False])


def test_graph_mode_returns_the_same_tensors():
  concat = concat_and_slice_regularizers.ConcatRegularizer([
      op_regularizer_stub.OpRegularizerStub(R1, A1),
      op_regularizer_stub.OpRegularizerStub(R2, A2)])
  sliced = concat_and_slice_regularizers.SlicingReferenceRegularizer(lambda: concat, 3, 2)
  with tf.Graph().as_default():
    for reg in (concat, sliced):
      assert reg.regularization_vector is reg.regularization_vector
      assert reg.alive_vector is reg.alive_vector
    with tf.compat.v1.Session() as sess:
      # (R1 + R2)[3:5] = [0.2, 0.2].
      np.testing.assert_allclose(sess.run(sliced.regularization_vector), [0.2, 0.2])
