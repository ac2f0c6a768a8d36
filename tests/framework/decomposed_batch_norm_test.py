"""Tests for batch norm lowered to element-wise ops (decomposed_batch_norm*).

Networks use the raw `tf.nn.batch_normalization`, which emits, under the
name scope `<scope>/batchnorm`:
  add = variance + eps; Rsqrt = rsqrt(add); mul = Rsqrt * gamma;
  mul_1 = x * mul (the source op); mul_2 = mean * mul; sub = beta - mul_2;
  add_1 = mul_1 + sub.
Every test runs in both graph modes (`mode` fixture).

FLOP coefficients on the [1, 8, 8, 3] image with SAME padding, stride 1:
a 3x3 conv has 2 * 8*8 * 3*3 = 1152 FLOPs per (input, output) channel pair,
a 1x1 conv 2 * 8*8 = 128.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import decomposed_batch_norm
from morph_net.framework import decomposed_batch_norm_source_op_handler as dbn_handler
from morph_net.framework import grouping_op_handler
from morph_net.network_regularizers import flop_regularizer
from morph_net.testing import dummy_decorator
from tests import graph_modes

IMAGE_SHAPE = [1, 8, 8, 3]
C3X3 = 2 * 8 * 8 * 3 * 3  # 1152
C1X1 = 2 * 8 * 8  # 128


def _conv(x, var, scope, kernel, filters, dtype=tf.float32):
  shape = [kernel, kernel, int(x.shape[-1]), filters]
  rng = np.random.RandomState(len(scope))
  weights = var(scope + '/weights', rng.normal(0.0, 0.1, shape))
  return tf.nn.conv2d(tf.cast(x, dtype), tf.cast(weights, dtype), 1, 'SAME')


def _bn(x, var, scope, gamma, scale=True):
  """`tf.nn.batch_normalization` with variables; gamma=None with scale=False."""
  channels = int(x.shape[-1])
  mean = var(scope + '/mean', np.zeros(channels))
  variance = var(scope + '/variance', np.ones(channels))
  beta = var(scope + '/beta', np.zeros(channels))
  gamma_var = var(scope + '/gamma', gamma) if scale else None
  return tf.nn.batch_normalization(x, mean, variance, beta, gamma_var, 1e-3)


def _conv_bn(x, var, scope, kernel, filters, gamma, scale=True, dtype=tf.float32):
  with tf.name_scope(scope):
    y = _conv(x, var, scope, kernel, filters, dtype)
    y = _bn(y, var, scope, gamma, scale)
    return tf.nn.relu(y)


def _two_conv_net(gamma1, gamma2, scale1=True, dtype=tf.float32):
  """image -> conv1 (3x3, 4) -> bn -> relu -> conv2 (3x3, 5) -> bn -> relu."""

  def net_fn(image, var):
    x = _conv_bn(image, var, 'conv1', 3, 4, gamma1, scale1, dtype)
    return _conv_bn(x, var, 'conv2', 3, 5, gamma2, True, dtype)

  return net_fn


def _op_names(ops):
  return sorted(op.name for op in ops)


# ---------------------------------------------------------------------------
# Pattern matching.
# ---------------------------------------------------------------------------


def test_match_finds_only_x_times_scale(mode):
  built = graph_modes.build(mode, _two_conv_net([1.0] * 4, [1.0] * 5), IMAGE_SHAPE)
  found = decomposed_batch_norm.match(built.op('conv1/batchnorm/mul_1'))
  assert found is not None
  assert found.op is built.op('conv1/batchnorm/mul_1')
  assert found.activation_index == 0  # x * scale
  assert found.scale_op is built.op('conv1/batchnorm/mul')
  assert found.gamma.op.type == 'ReadVariableOp'
  assert found.gamma.shape.as_list() == [4]
  # rsqrt * gamma, mean * scale, the conv and the ReLU are not sources.
  for name in ('conv1/batchnorm/mul', 'conv1/batchnorm/mul_2', 'conv1/Conv2D',
               'conv1/Relu'):
    assert decomposed_batch_norm.match(built.op(name)) is None, name
    assert not decomposed_batch_norm.match_unscaled(built.op(name)), name


def test_plain_products_are_not_batch_norms(mode):

  def net_fn(image, var):
    with tf.name_scope('conv1'):
      x = _conv(image, var, 'conv1', 3, 4)
    with tf.name_scope('gate'):
      # x * vector, where the vector is not rsqrt(.) * gamma.
      gated = tf.multiply(x, var('gate/w', np.ones(4)), name='gated')
      squared = tf.multiply(x, x, name='squared')
      rsqrt_only = tf.multiply(tf.math.rsqrt(x), x, name='rsqrt_of_activation')
    return gated + squared + rsqrt_only

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  for name in ('gate/gated', 'gate/squared', 'gate/rsqrt_of_activation'):
    assert decomposed_batch_norm.match(built.op(name)) is None, name
    assert not decomposed_batch_norm.match_unscaled(built.op(name)), name


def test_match_looks_through_mixed_precision_casts(mode):
  # Conv in float16, batch-norm vectors in float32: the scale reaches mul_1
  # through a Cast (conv1/batchnorm/Cast).
  built = graph_modes.build(
      mode, _two_conv_net([1.0] * 4, [1.0] * 5, dtype=tf.float16), IMAGE_SHAPE)
  mul_1 = built.op('conv1/batchnorm/mul_1')
  assert mul_1.inputs[1].op.type == 'Cast'  # the pattern really has a Cast
  found = decomposed_batch_norm.match(mul_1)
  assert found is not None
  assert found.gamma.dtype == tf.float32
  assert found.scale_op is built.op('conv1/batchnorm/mul')


def test_unscaled_batch_norm_matches_only_match_unscaled(mode):
  built = graph_modes.build(
      mode, _two_conv_net(None, [1.0] * 5, scale1=False), IMAGE_SHAPE)
  # Without gamma: mul = x * rsqrt, mul_1 = mean * rsqrt.
  x_times_rsqrt = built.op('conv1/batchnorm/mul')
  assert decomposed_batch_norm.match(x_times_rsqrt) is None
  assert decomposed_batch_norm.match_unscaled(x_times_rsqrt)
  assert not decomposed_batch_norm.match_unscaled(built.op('conv1/batchnorm/mul_1'))
  # The scaled batch norm of conv2 is not unscaled.
  assert not decomposed_batch_norm.match_unscaled(built.op('conv2/batchnorm/mul_1'))
  assert decomposed_batch_norm.match(built.op('conv2/batchnorm/mul_1')) is not None


def _broadcast_net(broadcast_shape):
  """conv (3x3, 4) on an 8x8 image -> batch norm with vectors reshaped."""

  def net_fn(image, var):
    with tf.name_scope('conv1'):
      x = _conv(image, var, 'conv1', 3, 4)
      with tf.name_scope('bn'):
        vectors = [tf.reshape(var('conv1/' + name, value), broadcast_shape)
                   for name, value in (('mean', np.zeros(4)),
                                       ('variance', np.ones(4)),
                                       ('gamma', np.ones(4)))]
        mean, variance, gamma = vectors
        scale = tf.multiply(tf.math.rsqrt(variance + 1e-3), gamma, name='scale')
        y = tf.multiply(x, scale, name='x_scale')
        shift = tf.multiply(mean, scale, name='mean_scale')
        return tf.nn.relu(y - shift)

  return net_fn


def test_channels_last_broadcast_reshape_is_looked_through(mode):
  # Keras 3 with an explicit axis (axis=3) reshapes the vectors to [1,1,1,C].
  built = graph_modes.build(mode, _broadcast_net([1, 1, 1, 4]), IMAGE_SHAPE)
  found = decomposed_batch_norm.match(built.op('conv1/bn/x_scale'))
  assert found is not None
  assert found.gamma.shape.as_list() == [4]  # the vector, not the reshape
  # mean * scale has a [1,1,1,C] "activation" that is really a statistic.
  for name in ('conv1/bn/scale', 'conv1/bn/mean_scale'):
    assert decomposed_batch_norm.match(built.op(name)) is None, name
    assert not decomposed_batch_norm.match_unscaled(built.op(name)), name


def test_channels_first_reshape_is_not_matched(mode):
  # [1, C, 1, 1] broadcasts over axis 1: not channels-last, even when the
  # activation's last dimension happens to equal C.

  def net_fn(image, var):
    with tf.name_scope('conv1'):
      x = _conv(image, var, 'conv1', 3, 8)  # [1, 8, 8, 8]: W == C == 8
      gamma = tf.reshape(var('conv1/gamma', np.ones(8)), [1, 8, 1, 1])
      variance = tf.reshape(var('conv1/variance', np.ones(8)), [1, 8, 1, 1])
      scale = tf.multiply(tf.math.rsqrt(variance), gamma, name='scale')
      return tf.multiply(x, scale, name='x_scale')

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  assert decomposed_batch_norm.match(built.op('conv1/x_scale')) is None


# ---------------------------------------------------------------------------
# The source handler inside Gamma regularizers.
# ---------------------------------------------------------------------------


def test_handler_dispatches_per_op(mode):
  built = graph_modes.build(mode, _two_conv_net([1.0] * 4, [1.0] * 5), IMAGE_SHAPE)
  handler = dbn_handler.DecomposedBatchNormSourceOpHandler(0.1)
  assert not handler.is_source_op  # as a type, Mul is not a source
  assert handler.is_passthrough
  source = handler.handler_for_op(built.op('conv1/batchnorm/mul_1'))
  assert source.is_source_op
  fallback = handler.handler_for_op(built.op('conv1/batchnorm/mul_2'))
  assert isinstance(fallback, grouping_op_handler.GroupingOpHandler)
  assert not fallback.is_source_op


@pytest.mark.parametrize('dtype', [tf.float32, tf.float16], ids=['float32', 'mixed'])
def test_gamma_flops_on_two_convs(mode, dtype):
  gamma1 = [0.8, 0.8, 0.05, -0.7]  # threshold 0.1 -> 3 alive, sum|g| = 2.35
  gamma2 = [0.5, 0.0, 0.0, -0.3, 0.2]  # 3 alive, sum|g| = 1.0
  built = graph_modes.build(mode, _two_conv_net(gamma1, gamma2, dtype=dtype),
                            IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  manager = reg.op_regularizer_manager
  sources = [op for op in manager.ops if manager.is_source_op(op)]
  assert _op_names(sources) == ['conv1/batchnorm/mul_1', 'conv2/batchnorm/mul_1']
  # The conv shares its batch norm's regularizer.
  conv1, conv2 = built.op('conv1/Conv2D'), built.op('conv2/Conv2D')
  assert manager.get_regularizer(conv1) is manager.get_regularizer(
      built.op('conv1/batchnorm/mul_1'))
  assert manager.get_regularizer(conv2) is manager.get_regularizer(
      built.op('conv2/batchnorm/mul_1'))
  cost, term, alive1, reg1 = built.evaluate(lambda: (
      reg.get_cost(), reg.get_regularization_term(),
      manager.get_regularizer(conv1).alive_vector,
      manager.get_regularizer(conv1).regularization_vector))
  np.testing.assert_array_equal(alive1, [True, True, False, True])
  np.testing.assert_allclose(reg1, [0.8, 0.8, 0.05, 0.7], rtol=1e-6)
  # conv1: 1152 * A_in(3) * A_out(3); conv2: 1152 * 3 * 3.
  assert cost == pytest.approx(C3X3 * 3 * 3 + C3X3 * 3 * 3)
  # conv1: 1152 * (3 * 2.35 + 3 * 0); conv2: 1152 * (3 * 1.0 + 3 * 2.35).
  assert term == pytest.approx(C3X3 * (3 * 2.35) + C3X3 * (3 * 1.0 + 3 * 2.35),
                               rel=1e-5)


def test_residual_add_groups_both_branches(mode):
  gamma_a = [1.0, 0.0, 0.0, 1.0]
  gamma_b = [0.0, 1.0, 0.0, 1.0]

  def net_fn(image, var):
    with tf.name_scope('conv_a'):
      a = _bn(_conv(image, var, 'conv_a', 3, 4), var, 'conv_a', gamma_a)
    with tf.name_scope('conv_b'):
      b = _bn(_conv(image, var, 'conv_b', 1, 4), var, 'conv_b', gamma_b)
    return tf.nn.relu(tf.add(a, b, name='add'))

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  manager = reg.op_regularizer_manager
  conv_a, conv_b = built.op('conv_a/Conv2D'), built.op('conv_b/Conv2D')
  assert manager.get_regularizer(conv_a) is manager.get_regularizer(conv_b)
  alive, vector, cost = built.evaluate(lambda: (
      manager.get_regularizer(conv_a).alive_vector,
      manager.get_regularizer(conv_a).regularization_vector, reg.get_cost()))
  np.testing.assert_array_equal(alive, [True, True, False, True])  # OR
  np.testing.assert_allclose(vector, [1.0, 1.0, 0.0, 1.0])  # max
  # Both convs see 3 alive outputs: 1152 * 3 * 3 + 128 * 3 * 3.
  assert cost == pytest.approx(C3X3 * 3 * 3 + C1X1 * 3 * 3)


def test_batch_norm_after_concat_is_sliced(mode):
  gamma = [0.5, 0.0, 0.0, 0.6, 0.7]

  def net_fn(image, var):
    with tf.name_scope('conv1'):
      a = _conv(image, var, 'conv1', 1, 2)
    with tf.name_scope('conv2'):
      b = _conv(image, var, 'conv2', 1, 3)
    concat = tf.concat([a, b], 3, name='concat')
    with tf.name_scope('bn'):
      return tf.nn.relu(_bn(concat, var, 'bn', gamma))

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  manager = reg.op_regularizer_manager
  conv1, conv2 = built.op('conv1/Conv2D'), built.op('conv2/Conv2D')
  vectors = built.evaluate(lambda: (
      manager.get_regularizer(conv1).regularization_vector,
      manager.get_regularizer(conv2).regularization_vector,
      manager.get_regularizer(conv2).alive_vector, reg.get_cost()))
  np.testing.assert_allclose(vectors[0], [0.5, 0.0])  # gamma[0:2]
  np.testing.assert_allclose(vectors[1], [0.0, 0.6, 0.7])  # gamma[2:5]
  np.testing.assert_array_equal(vectors[2], [False, True, True])
  # conv1: 128 * 3 * 1 alive; conv2: 128 * 3 * 2 alive.
  assert vectors[3] == pytest.approx(C1X1 * 3 * 1 + C1X1 * 3 * 2)


def test_unscaled_batch_norm_warns_and_is_costed_all_alive(mode):
  gamma2 = [1.0, 0.0, 0.0, 0.0, 1.0]  # 2 alive
  built = graph_modes.build(
      mode, _two_conv_net(None, gamma2, scale1=False), IMAGE_SHAPE)
  with mock.patch.object(dbn_handler.logging, 'warning') as warning:
    reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  messages = [call.args[0] % call.args[1:] for call in warning.call_args_list]
  assert any('conv1/batchnorm/mul' in m and 'scale=False' in m for m in messages), messages
  manager = reg.op_regularizer_manager
  assert _op_names(op for op in manager.ops if manager.is_source_op(op)) == [
      'conv2/batchnorm/mul_1']
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is None
  cost = built.evaluate(reg.get_cost)
  # conv1 unregularized: all 4 of its channels; conv2: 1152 * 4 * 2.
  assert cost == pytest.approx(C3X3 * 3 * 4 + C3X3 * 4 * 2)


def test_decorator_scales_the_decomposed_source(mode):
  built = graph_modes.build(mode, _two_conv_net([1.0] * 4, [1.0] * 5), IMAGE_SHAPE)
  plain = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  decorated = flop_regularizer.GammaFlopsRegularizer(
      [built.output.op], 0.1, regularizer_decorator=dummy_decorator.DummyDecorator,
      decorator_parameters={'scale': 0.5})
  plain_term, decorated_term, decorated_cost = built.evaluate(lambda: (
      plain.get_regularization_term(), decorated.get_regularization_term(),
      decorated.get_cost()))
  # conv1: 1152 * (3 * 4 + 4 * 0); conv2: 1152 * (4 * 5 + 5 * 4); x 0.5.
  assert plain_term == pytest.approx(C3X3 * 12 + C3X3 * 40)
  assert decorated_term == pytest.approx(0.5 * (C3X3 * 12 + C3X3 * 40))
  assert decorated_cost == pytest.approx(C3X3 * 3 * 4 + C3X3 * 4 * 5)


def test_fused_and_decomposed_batch_norms_together(mode):
  # Sanity check: a FusedBatchNormV3 (tf.compat.v1 op) is still a source next
  # to a decomposed one.

  def net_fn(image, var):
    with tf.name_scope('conv1'):
      x = _conv(image, var, 'conv1', 3, 4)
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('conv1/gamma', [1.0, 0.0, 1.0, 0.0]), var('conv1/beta', np.zeros(4)),
          is_training=True)
      x = tf.nn.relu(x)
    return _conv_bn(x, var, 'conv2', 3, 5, [1.0, 1.0, 1.0, 0.0, 0.0])

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], 0.1)
  manager = reg.op_regularizer_manager
  sources = [op for op in manager.ops if manager.is_source_op(op)]
  assert sorted(op.type for op in sources) == ['FusedBatchNormV3', 'Mul']
  cost = built.evaluate(reg.get_cost)
  # conv1: 1152 * 3 * 2 alive; conv2: 1152 * 2 * 3.
  assert cost == pytest.approx(C3X3 * 3 * 2 + C3X3 * 2 * 3)
