"""Tests for the lazy-evaluation contract (framework/lazy_evaluation.py)."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import lazy_evaluation
from morph_net.op_regularizers import gamma_l1_regularizer


def test_regularizer_over_variable_follows_assign_eagerly():
  gamma = tf.Variable([0.5, -0.1, 2.0])
  reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.2)
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False, True])
  gamma.assign([0.0, 0.3, -0.3])
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.0, 0.3, 0.3])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [False, True, True])


def test_regularizer_over_variable_inside_tf_function():
  gamma = tf.Variable([0.5, -0.1, 2.0])
  reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.2)
  seen_graphs = []

  @tf.function
  def step(new_gamma):
    gamma.assign(new_gamma)
    seen_graphs.append(reg.regularization_vector.graph)
    return tf.reduce_sum(reg.regularization_vector)

  # |[1, -2, 3]| sums to 6 after the assign inside the same trace.
  assert step(tf.constant([1.0, -2.0, 3.0])).numpy() == pytest.approx(6.0)
  assert step(tf.constant([0.0, 0.0, 0.5])).numpy() == pytest.approx(0.5)
  assert all(getattr(g, 'building_function', False) for g in seen_graphs)
  # Eagerly afterwards: no tensor of the trace leaks out.
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.0, 0.0, 0.5])


def test_regularizer_in_tf1_graph_returns_the_same_tensor():
  with tf.Graph().as_default() as graph:
    gamma = tf.compat.v1.get_variable(
        'gamma', initializer=tf.constant([0.5, -0.1]), use_resource=True)
    reg = gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.2)
    first = reg.regularization_vector
    assert reg.regularization_vector is first
    assert first.graph is graph


def test_graph_tensor_regularizer_read_eagerly_raises():
  with tf.Graph().as_default():
    reg = gamma_l1_regularizer.GammaL1Regularizer(tf.constant([0.5, -0.1]), 0.2)
  with pytest.raises(ValueError, match=r'cannot be evaluated outside that graph\. '
                     r"Received: tensor 'Const:0', which is not backed by a tf.Variable, "
                     r'read eagerly'):
    _ = reg.alive_vector


def test_graph_tensor_regularizer_read_in_another_graph_raises():
  with tf.Graph().as_default():
    reg = gamma_l1_regularizer.GammaL1Regularizer(tf.constant([0.5, -0.1]), 0.2)
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='read in another graph'):
      _ = reg.alive_vector


def test_materialize():
  variable = tf.Variable([1.0, 2.0])
  value = lazy_evaluation.materialize(variable)
  assert isinstance(value, tf.Tensor)
  np.testing.assert_array_equal(value.numpy(), [1.0, 2.0])
  assert lazy_evaluation.materialize(lambda: tf.constant(3.0)).numpy() == 3.0
  tensor = tf.constant([4.0])
  assert lazy_evaluation.materialize(tensor) is tensor


@pytest.mark.parametrize('axis, begin, size, expected', [
    (0, 1, 1, [[3.0, 4.0, 5.0]]),  # row 1 of [[0, 1, 2], [3, 4, 5]]
    (1, 1, 2, [[1.0, 2.0], [4.0, 5.0]]),  # columns 1..2
])
def test_lazy_slice_reads_when_called(axis, begin, size, expected):
  variable = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
  lazy = lazy_evaluation.LazySlice(variable, begin, size, axis)
  np.testing.assert_array_equal(lazy().numpy(), expected)
  variable.assign(variable + 10.0)
  np.testing.assert_array_equal(lazy().numpy(), np.asarray(expected) + 10.0)
  expected_shape = [2, 3]
  expected_shape[axis] = size
  assert lazy_evaluation.static_shape(lazy).as_list() == expected_shape


def test_static_shape_does_not_read():
  with tf.Graph().as_default():
    tensor = tf.compat.v1.placeholder(tf.float32, [None, 4])
    before = len(tf.compat.v1.get_default_graph().get_operations())
    assert lazy_evaluation.static_shape(tensor).as_list() == [None, 4]
    assert len(tf.compat.v1.get_default_graph().get_operations()) == before
  assert lazy_evaluation.static_shape(tf.Variable(tf.ones([3, 5]))).as_list() == [3, 5]


def test_per_graph_cache():
  cache = lazy_evaluation.PerGraphCache()
  calls = []

  def compute():
    calls.append(1)
    return tf.constant(len(calls))

  cache.get(compute)
  cache.get(compute)
  assert len(calls) == 2  # eagerly: recomputed every time
  with tf.Graph().as_default():
    first = cache.get(compute)
    assert cache.get(compute) is first
  assert len(calls) == 3  # once for the graph
  tf.function(lambda: cache.get(compute))()
  assert len(calls) == 4  # tf.function traces recompute
