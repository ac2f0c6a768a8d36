"""Tests for ConstantOpRegularizer."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import constant_op_regularizer


@pytest.mark.parametrize('size', [0, 1, 7])
def test_zeros_and_all_alive(size):
  reg = constant_op_regularizer.ConstantOpRegularizer(size)
  reg_vector = reg.regularization_vector
  assert reg_vector.dtype == tf.float32
  assert reg.alive_vector.dtype == tf.bool
  np.testing.assert_array_equal(reg_vector.numpy(), np.zeros(size))
  np.testing.assert_array_equal(reg.alive_vector.numpy(), np.ones(size, bool))


def test_works_in_graph_and_tf_function():
  reg = constant_op_regularizer.ConstantOpRegularizer(3)
  with tf.Graph().as_default():
    assert reg.alive_vector is reg.alive_vector
    assert reg.alive_vector.shape.as_list() == [3]
    with tf.compat.v1.Session() as sess:
      np.testing.assert_array_equal(sess.run(reg.regularization_vector), [0.0] * 3)
  alive_count = tf.function(lambda: tf.reduce_sum(tf.cast(reg.alive_vector, tf.int32)))()
  assert alive_count.numpy() == 3


def test_negative_size():
  with pytest.raises(ValueError, match='size must be a non-negative.*Received: size=-1'):
    constant_op_regularizer.ConstantOpRegularizer(-1)
