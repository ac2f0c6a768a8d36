"""Tests for GroupLassoRegularizer (spec 8.3), against a numpy recomputation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from morph_net.op_regularizers import group_lasso_regularizer
from tests import graph_modes


def _conv_net(weights):
  def net(image, var):
    with tf.name_scope('conv'):
      return tf.nn.conv2d(image, var('w', weights), 1, 'SAME')
  return net, 'conv/Conv2D', [1, 9, 9, 3]


def _transposed_net(weights):
  def net(image, var):
    with tf.name_scope('deconv'):
      return tf.nn.conv2d_transpose(image, var('w', weights), [1, 18, 18, 13], 2)
  return net, 'deconv/conv2d_transpose', [1, 9, 9, 3]


def _fc_net(weights):
  def net(image, var):
    with tf.name_scope('fc'):
      return tf.matmul(image, var('w', weights))
  return net, 'fc/MatMul', [2, 3]


CASES = {
    # conv kernel [kh, kw, in, out]: one norm per output channel.
    'conv': (_conv_net, (7, 5, 3, 13), (0, 1, 2)),
    # transposed-conv kernel [kh, kw, out, in]: reduce all but axis 2.
    'transposed_conv': (_transposed_net, (7, 5, 13, 3), (0, 1, 3)),
    # FC [in, out].
    'fc': (_fc_net, (3, 4), (0,)),
}


def _numpy_norm(w, reduce_dims, l1_fraction):
  l2 = np.sqrt(np.mean(w ** 2, axis=reduce_dims))
  l1 = np.mean(np.abs(w), axis=reduce_dims)
  return l1_fraction * l1 + (1 - l1_fraction) * l2


@pytest.mark.parametrize('l1_fraction', [0.0, 0.5])
@pytest.mark.parametrize('case', sorted(CASES))
def test_random_weights_match_numpy(mode, case, l1_fraction):
  make_net, shape, reduce_dims = CASES[case]
  weights = np.random.RandomState(7).normal(size=shape).astype(np.float32)
  net, op_name, image_shape = make_net(weights)
  built = graph_modes.build(mode, net, image_shape)
  # For N(0, 1) weights E|w| = sqrt(2/pi) and the RMS is ~1, so this threshold
  # sits at the expected norm and splits the channels into alive and dead.
  threshold = (1 - l1_fraction) + l1_fraction * math.sqrt(2 / math.pi)
  reg = group_lasso_regularizer.GroupLassoRegularizer(
      built.op(op_name).inputs[1], reduce_dims, threshold, l1_fraction)
  reg_vector, alive = built.evaluate(lambda: (reg.regularization_vector, reg.alive_vector))
  expected = _numpy_norm(weights, reduce_dims, l1_fraction)
  np.testing.assert_allclose(reg_vector, expected, rtol=1e-5)
  np.testing.assert_array_equal(alive, expected > threshold)
  assert alive.any() and not alive.all()


def test_threshold_is_strict():
  # All-ones [1, 1, 3, 2] kernel: RMS over (0, 1, 2) = sqrt(3 * 1 / 3) = 1.
  weights = tf.Variable(np.ones([1, 1, 3, 2], np.float32))
  at = group_lasso_regularizer.GroupLassoRegularizer(weights, (0, 1, 2), 1.0)
  below = group_lasso_regularizer.GroupLassoRegularizer(weights, (0, 1, 2), 0.999)
  np.testing.assert_allclose(at.regularization_vector.numpy(), [1.0, 1.0])
  np.testing.assert_array_equal(at.alive_vector.numpy(), [False, False])
  np.testing.assert_array_equal(below.alive_vector.numpy(), [True, True])


def test_l1_fraction_one_is_the_mean_absolute_value():
  # Columns [3, -4] and [0, 2]: mean |w| = 3.5 and 1.
  weights = tf.Variable([[3.0, 0.0], [-4.0, 2.0]])
  reg = group_lasso_regularizer.GroupLassoRegularizer(weights, (0,), 1.2, l1_fraction=1.0)
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [3.5, 1.0])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False])


def test_eager_values_follow_the_variable():
  weights = tf.Variable([[3.0, 0.0], [-4.0, 0.0]])
  reg = group_lasso_regularizer.GroupLassoRegularizer(weights, (0,), 1.0)
  # RMS of column 0 = sqrt((9 + 16) / 2) = sqrt(12.5); column 1 = 0.
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [math.sqrt(12.5), 0.0],
                             rtol=1e-6)
  weights.assign([[0.0, 2.0], [0.0, 2.0]])
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.0, 2.0])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [False, True])


@pytest.mark.parametrize('l1_fraction', [-0.1, 1.5])
def test_bad_l1_fraction(l1_fraction):
  with pytest.raises(ValueError, match=r'l1_fraction should be in \[0.0, 1.0\], not .*'
                     r'Received: l1_fraction=' + str(l1_fraction)):
    group_lasso_regularizer.GroupLassoRegularizer(
        tf.Variable(tf.ones([3, 4])), (0,), 0.1, l1_fraction)


@pytest.mark.parametrize('reduce_dims', [(0,), (0, 3), (1, 1), (0, 1, 2), ()])
def test_bad_reduce_dims(reduce_dims):
  with pytest.raises(ValueError, match=r'reduce_dims must be distinct axes.*Received: '
                     r'reduce_dims=.* for weights of rank 3'):
    group_lasso_regularizer.GroupLassoRegularizer(
        tf.Variable(tf.ones([2, 3, 4])), reduce_dims, 0.1)


def test_negative_reduce_dims_are_axes():
  # reduce_dims (-3, -2) of a rank-3 tensor are axes (0, 1): mean of 2*3 ones.
  reg = group_lasso_regularizer.GroupLassoRegularizer(
      tf.Variable(tf.ones([2, 3, 4])), (-3, -2), 0.1)
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [1.0] * 4)


@pytest.mark.parametrize('shape,blocked', [((3, 3, 160, 1500), True),
                                           ((2000, 1000), False)])
def test_large_kernels_are_summed_in_blocks(monkeypatch, shape, blocked):
  # With the blocking threshold lowered to 2**21 elements, a [3, 3, 160, 1500]
  # kernel (2,160,000 elements, reduced over its leading axes) is summed in
  # 174-row blocks (2**18 // 1500): 8 blocks in a while loop + a 48-row
  # remainder; [2000, 1000] (2,000,000 < 2**21 = 2,097,152) is not. Reference: float64
  # numpy RMS; gradient of sum(norm): d sqrt(s / n) / dw = w / (n * norm).
  monkeypatch.setattr(group_lasso_regularizer, '_MIN_BLOCKED_ELEMENTS', 2**21)
  rng = np.random.default_rng(3)
  weights_np = rng.normal(size=shape).astype(np.float32)
  weights = tf.Variable(weights_np)
  dims = tuple(range(len(shape) - 1))
  reg = group_lasso_regularizer.GroupLassoRegularizer(weights, dims, 1.0)
  n = np.prod(shape[:-1])
  expected = np.sqrt(np.sum(weights_np.astype(np.float64) ** 2, axis=dims) / n)
  with tf.GradientTape() as tape:
    norm = reg.regularization_vector
    total = tf.reduce_sum(norm)
  np.testing.assert_allclose(norm.numpy(), expected, rtol=1e-5)
  graph = tf.function(lambda: reg.regularization_vector).get_concrete_function().graph
  assert any(op.type.endswith('While')
             for op in graph.get_operations()) == blocked
  np.testing.assert_allclose(tape.gradient(total, weights).numpy(),
                             weights_np / (n * expected), rtol=1e-4, atol=1e-9)


def test_blocked_sum_in_a_v1_graph_session(monkeypatch):
  # The same blocked path built in a tf.compat.v1 graph (threshold lowered to
  # 2**21; 4500x1000: 17 blocks of 262 rows + 46): values and gradient
  # (d sqrt(s / n) / dw = w / (n * norm)) read with a session.
  monkeypatch.setattr(group_lasso_regularizer, '_MIN_BLOCKED_ELEMENTS', 2**21)
  rng = np.random.default_rng(4)
  weights_np = rng.normal(size=(4500, 1000)).astype(np.float32)
  expected = np.sqrt(np.mean(weights_np.astype(np.float64) ** 2, axis=0))
  graph = tf.Graph()
  with graph.as_default():
    weights = tf.compat.v1.get_variable('w', initializer=weights_np,
                                        use_resource=True)
    reg = group_lasso_regularizer.GroupLassoRegularizer(weights, (0,), 1.0)
    norm = reg.regularization_vector
    grad = tf.compat.v1.gradients(tf.reduce_sum(norm), weights)[0]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      norm_value, grad_value = sess.run([norm, grad])
  np.testing.assert_allclose(norm_value, expected, rtol=1e-5)
  np.testing.assert_allclose(grad_value, weights_np / (4500 * expected),
                             rtol=1e-4, atol=1e-9)
