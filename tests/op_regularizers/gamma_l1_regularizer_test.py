"""Tests for GammaL1Regularizer: values, strict threshold, lazy evaluation."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import lazy_evaluation
from morph_net.op_regularizers import gamma_l1_regularizer
from tests import graph_modes

GAMMAS = [-0.3, 0.5, 0.0, 1.2, -0.9]
# |gamma| = [0.3, 0.5, 0.0, 1.2, 0.9]; alive iff |gamma| > 0.3 (strict, so
# the first channel, exactly at the threshold, is dead).
EXPECTED_REG = [0.3, 0.5, 0.0, 1.2, 0.9]
EXPECTED_ALIVE = [False, True, False, True, True]


def _bn_net(image, var):
  with tf.name_scope('bn'):
    gamma = var('gamma', GAMMAS)
    beta = var('beta', [0.0] * 5)
    return tf.compat.v1.nn.fused_batch_norm(image, gamma, beta, is_training=True)[0]


def test_values_from_a_batch_norm_gamma(mode):
  built = graph_modes.build(mode, _bn_net, [1, 2, 2, 5])
  gamma = built.op('bn/FusedBatchNormV3').inputs[1]
  reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.3)
  reg_vector, alive = built.evaluate(lambda: (reg.regularization_vector, reg.alive_vector))
  np.testing.assert_allclose(reg_vector, EXPECTED_REG, rtol=1e-6)
  np.testing.assert_array_equal(alive, EXPECTED_ALIVE)


def test_lazy_slice_of_a_variable():
  gamma = tf.Variable(GAMMAS)
  reg = gamma_l1_regularizer.GammaL1Regularizer(lazy_evaluation.LazySlice(gamma, 1, 3), 0.3)
  # gamma[1:4] = [0.5, 0.0, 1.2].
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.5, 0.0, 1.2])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False, True])


def test_eager_values_follow_the_variable():
  gamma = tf.Variable(GAMMAS)
  reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.3)
  np.testing.assert_array_equal(reg.alive_vector.numpy(), EXPECTED_ALIVE)
  gamma.assign([0.0, -2.0, 0.31, 0.1, 0.3])
  # |new gamma| = [0, 2, 0.31, 0.1, 0.3] > 0.3 → [F, T, T, F, F].
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.0, 2.0, 0.31, 0.1, 0.3])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [False, True, True, False, False])


def test_same_object_works_inside_tf_function():
  gamma = tf.Variable(GAMMAS)
  reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.3)

  @tf.function
  def count_alive():
    return tf.reduce_sum(tf.cast(reg.alive_vector, tf.int32))

  assert count_alive().numpy() == 3  # EXPECTED_ALIVE has three True.
  gamma.assign([1.0] * 5)
  assert count_alive().numpy() == 5  # Same trace, new variable values.


def test_graph_mode_returns_the_same_tensors():
  with tf.Graph().as_default():
    gamma = tf.compat.v1.get_variable(
        'gamma', initializer=tf.constant(GAMMAS), use_resource=True)
    reg = gamma_l1_regularizer.GammaL1Regularizer(gamma.read_value(), 0.3)
    assert reg.regularization_vector is reg.regularization_vector
    assert reg.alive_vector is reg.alive_vector


def test_graph_tensor_regularizer_cannot_be_read_eagerly():
  with tf.Graph().as_default():
    gamma = tf.constant(GAMMAS)  # Not backed by a variable.
    reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.3)
    with tf.compat.v1.Session() as sess:
      np.testing.assert_array_equal(sess.run(reg.alive_vector), EXPECTED_ALIVE)
  with pytest.raises(ValueError, match='cannot be evaluated outside that graph'):
    _ = reg.regularization_vector
