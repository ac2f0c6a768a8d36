"""Tests for the test helpers OpRegularizerStub, its factory, image_stub and DummyDecorator."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.testing import dummy_decorator
from morph_net.testing import op_regularizer_stub


def test_stub_values_eagerly_and_in_a_graph():
  stub = op_regularizer_stub.OpRegularizerStub([0.1, 0.3], [False, True])
  assert stub.regularization_vector.dtype == tf.float32
  assert stub.alive_vector.dtype == tf.bool
  np.testing.assert_allclose(stub.regularization_vector.numpy(), [0.1, 0.3])
  with tf.Graph().as_default():
    assert stub.alive_vector is stub.alive_vector
    with tf.compat.v1.Session() as sess:
      np.testing.assert_array_equal(sess.run(stub.alive_vector), [False, True])


def test_factory_matches_op_name_prefix():
  factory = op_regularizer_stub.OpRegularizerStubFactory(
      {'conv1': [True, False], 'conv2': [False, False, True]},
      {'conv1': [0.5, 0.1], 'conv2': [0.0, 0.2, 0.9]})
  with tf.Graph().as_default():
    with tf.name_scope('conv2'):
      conv = tf.nn.conv2d(op_regularizer_stub.image_stub(), tf.ones([1, 1, 3, 3]), 1, 'SAME')
    stub = factory.create_conv2d_regularizer(conv.op)
    with tf.compat.v1.Session() as sess:
      np.testing.assert_allclose(sess.run(stub.regularization_vector), [0.0, 0.2, 0.9])
      np.testing.assert_array_equal(sess.run(stub.alive_vector), [False, False, True])
    with tf.name_scope('conv3'):
      other = tf.identity(conv)
    with pytest.raises(ValueError, match=r'No regularizer for conv3/Identity\. Received'):
      factory.create_conv2d_regularizer(other.op)


def test_image_stub():
  image = op_regularizer_stub.image_stub()
  assert image.shape.as_list() == [1, 17, 19, 3]
  assert not np.any(image.numpy())


def test_dummy_decorator_scales_regularization_only():
  gamma = tf.Variable([0.2, -0.8])

  class _GammaRegularizer:
    regularization_vector = property(lambda self: tf.abs(gamma))
    alive_vector = property(lambda self: tf.abs(gamma) > 0.5)

  decorated = dummy_decorator.DummyDecorator(_GammaRegularizer(), 0.5)
  # 0.5 * |[0.2, -0.8]| = [0.1, 0.4]; alive unchanged (|g| > 0.5).
  np.testing.assert_allclose(decorated.regularization_vector.numpy(), [0.1, 0.4])
  np.testing.assert_array_equal(decorated.alive_vector.numpy(), [False, True])
  gamma.assign([1.0, 0.0])
  np.testing.assert_allclose(decorated.regularization_vector.numpy(), [0.5, 0.0])
  np.testing.assert_array_equal(decorated.alive_vector.numpy(), [True, False])
