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


def _euclidean_norm_ops(fn) -> int:
  graph = tf.function(fn).get_concrete_function().graph
  return sum(op.type == 'EuclideanNorm' for op in graph.get_operations())


# Stages per kernel, by the rule of `_column_sum_of_squares`: the rows (the
# product of the reduced leading axes) are divided by the first of 16, 8, 32,
# 12, 24, 20, 10, 6, 4, 48, 64 that leaves at least 2 rows, at most twice.
@pytest.mark.parametrize('shape,stages', [
    ((3, 3, 160, 1500), 2),  # 1440 rows -> 90 (/16) -> 9 (/10).
    ((4096, 64), 2),         # 4096 -> 256 -> 16.
    ((147, 1000), 0),        # 147 = 3 * 7 * 7: no factor, one column sum.
    ((100, 300), 0),         # 30,000 < 2**16 elements: one reduce op.
    ((2, 8, 5000), 1),       # 16 rows -> 2 (/8) -> none (2 / f < 2).
])
def test_large_kernels_are_summed_in_stages(shape, stages):
  # Reference: float64 numpy RMS over the leading axes; gradient of sum(norm):
  # d sqrt(s / n) / dw = w / (n * norm).
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
  np.testing.assert_allclose(norm.numpy(), expected, rtol=1e-6)
  assert _euclidean_norm_ops(lambda: reg.regularization_vector) == stages
  np.testing.assert_allclose(tape.gradient(total, weights).numpy(),
                             weights_np / (n * expected), rtol=1e-5, atol=1e-9)


def test_staged_gradient_is_finite_where_a_block_of_rows_is_zero():
  # Rows 0-15 of a [4096, 64] kernel are zero: the first stage's norm of that
  # block is 0, where EuclideanNorm's own gradient (w / norm) would be 0 / 0.
  # The gradient of sum(sum_of_squares) is 2 * w: 0 on those rows.
  weights_np = np.random.default_rng(5).normal(size=(4096, 64)).astype(
      np.float32)
  weights_np[:16] = 0.0
  weights = tf.Variable(weights_np)
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(group_lasso_regularizer.sum_of_squares(
        tf.convert_to_tensor(weights), (0,)))
  grad = tape.gradient(total, weights).numpy()
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, 2.0 * weights_np, rtol=1e-6)
  np.testing.assert_allclose(
      total.numpy(), np.sum(weights_np.astype(np.float64) ** 2), rtol=1e-6)


def test_staged_sum_in_a_v1_graph_session():
  # The staged path built in a tf.compat.v1 graph (4800x1000: 4800 rows ->
  # 300 -> 25 (/12)): values and gradient (d sqrt(s / n) / dw = w / (n *
  # norm)) read with a session.
  rng = np.random.default_rng(4)
  weights_np = rng.normal(size=(4800, 1000)).astype(np.float32)
  expected = np.sqrt(np.mean(weights_np.astype(np.float64) ** 2, axis=0))
  graph = tf.Graph()
  with graph.as_default():
    weights = tf.compat.v1.get_variable('w', initializer=weights_np,
                                        use_resource=True)
    reg = group_lasso_regularizer.GroupLassoRegularizer(weights, (0,), 1.0)
    norm = reg.regularization_vector
    grad = tf.compat.v1.gradients(tf.reduce_sum(norm), weights)[0]
    assert sum(op.type == 'EuclideanNorm'
               for op in graph.get_operations()) == 2
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      norm_value, grad_value = sess.run([norm, grad])
  np.testing.assert_allclose(norm_value, expected, rtol=1e-6)
  np.testing.assert_allclose(grad_value, weights_np / (4800 * expected),
                             rtol=1e-5, atol=1e-9)


# (shape, reduce_dims, EuclideanNorm ops): staged kernels (>= 2**16 elements,
# reduced over the leading axes, rows with a factor) take 2, any other 1.
_KERNELS = [((3, 3, 64, 128), (0, 1, 2), 2),   # 576 rows / 16.
            ((4096, 40), (0,), 2),             # 4096 rows / 16.
            ((3, 3, 8, 16), (0, 1, 2), 1),     # 1,152 elements: small.
            ((2, 2, 300, 70), (0, 1, 3), 1),   # Keeps axis 2 (an input side).
            ((600, 200), (-1,), 1),            # Keeps axis 0.
            ((147, 1000), (0,), 1)]            # 147 rows: no factor.


def _concat_reference(arrays):
  sums = []
  for array, (shape, dims, _) in zip(arrays, _KERNELS):
    sums.append(np.sum(array.astype(np.float64) ** 2,
                       axis=tuple(d % len(shape) for d in dims)))
  return np.concatenate(sums)


def test_concat_sums_of_squares_values_gradient_and_nodes():
  # Reference: float64 numpy sums of squares, kernel after kernel; gradient
  # of sum(c * sums) is 2 * c * w broadcast over the reduced axes. Rows 0-15
  # of the [4096, 40] kernel are zero (a zero block of the first stage).
  rng = np.random.default_rng(11)
  arrays = [rng.normal(size=shape).astype(np.float32)
            for shape, _, _ in _KERNELS]
  arrays[1][:16] = 0.0
  variables = [tf.Variable(a) for a in arrays]
  expected = _concat_reference(arrays)
  weights = rng.uniform(0.5, 2.0, expected.shape).astype(np.float32)

  def total_of():
    return group_lasso_regularizer.concat_sums_of_squares(
        [(tf.convert_to_tensor(v), dims)
         for v, (_, dims, _) in zip(variables, _KERNELS)])

  with tf.GradientTape() as tape:
    total = total_of()
    loss = tf.reduce_sum(weights * total)
  np.testing.assert_allclose(total.numpy(), expected, rtol=1e-6)
  offset = 0
  for array, (shape, dims, _), grad in zip(
      arrays, _KERNELS, tape.gradient(loss, variables)):
    grad = grad.numpy()
    kept = [d for d in range(len(shape))
            if d not in {r % len(shape) for r in dims}][0]
    size = shape[kept]
    broadcast = [1] * len(shape)
    broadcast[kept] = size
    c = weights[offset:offset + size].reshape(broadcast)
    offset += size
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, 2.0 * c * array, rtol=1e-6)
  graph = tf.function(total_of).get_concrete_function().graph
  types = [op.type for op in graph.get_operations()]
  assert types.count('EuclideanNorm') == sum(n for _, _, n in _KERNELS)
  # Shared constants, one per distinct value: reshapes (36, 16, 128) and
  # (256, 16, 40); axes (1,), (0,), (0, 1, 2), (0, 1, 3) (the (600, 200)
  # kernel's (1,) and the 147-row kernel's (0,) are shared); and the
  # concat's axis.
  assert types.count('Const') == 7


def test_concat_sums_of_squares_in_a_v1_graph_session():
  rng = np.random.default_rng(12)
  arrays = [rng.normal(size=shape).astype(np.float32)
            for shape, _, _ in _KERNELS]
  graph = tf.Graph()
  with graph.as_default():
    tensors = [tf.constant(a) for a in arrays]
    total = group_lasso_regularizer.concat_sums_of_squares(
        [(t, dims) for t, (_, dims, _) in zip(tensors, _KERNELS)])
    grads = tf.compat.v1.gradients(tf.reduce_sum(total), tensors)
    with tf.compat.v1.Session() as sess:
      total_value, grad_values = sess.run([total, grads])
  np.testing.assert_allclose(total_value, _concat_reference(arrays), rtol=1e-6)
  for grad, array in zip(grad_values, arrays):
    np.testing.assert_allclose(grad, 2.0 * array, rtol=1e-6)
