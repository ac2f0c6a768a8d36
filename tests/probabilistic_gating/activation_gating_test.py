"""Tests for probabilistic_gating.activation_gating (spec sections 5 and 8.6).

Expected values are derived by hand: masks from their definitions
(sigmoid((logits + eps) / tau), 1[logits + eps > 0], 1[logits > 0] *
sigmoid(logits)) with the noise eps replaced by a known value where a test
needs exact numbers, and keep rates from sigmoid(logits) with a tolerance of
several standard deviations of a binomial mean.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import logistic_sigmoid_source_op_handler as gating_ops
from morph_net.probabilistic_gating import activation_gating


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _gating_ops(graph):
  return [op for op in graph.get_operations() if gating_ops.is_gating_op(op)]


def _const_init(values):
  values = np.asarray(values, np.float32)
  return lambda shape, dtype=None: tf.constant(values)


@pytest.fixture
def zero_noise(monkeypatch):
  """Replaces the logistic noise by zeros, so masks are exact functions of logits."""
  monkeypatch.setattr(activation_gating, '_logistic_noise',
                      lambda shape: tf.zeros(shape, tf.float32))


# ---------------------------------------------------------------------------
# Spec 8.6.
# ---------------------------------------------------------------------------


def test_inference_with_large_log_odds_leaves_activation_unchanged():
  x = tf.constant(np.random.RandomState(1).normal(size=[2, 4, 5, 6]), tf.float32)
  y = activation_gating.logistic_sigmoid_gating(
      x, axis=3, is_training=False, log_odds_init=1000.0)
  # mask = 1[1000 > 0] * sigmoid(1000) = 1 exactly in float32.
  np.testing.assert_array_equal(y.numpy(), x.numpy())


@pytest.mark.parametrize('is_training', [True, False])
def test_exactly_one_gating_op_with_1d_logits_and_mask(is_training):
  graph = tf.Graph()
  with graph.as_default():
    x = tf.ones([1, 3, 3, 7])
    activation_gating.logistic_sigmoid_gating(
        x, axis=3, is_training=is_training, scope='gate')
  ops = _gating_ops(graph)
  assert [op.name for op in ops] == ['gate/LogisticSigmoidGating']
  record = gating_ops.get_gating_op_record(ops[0])
  assert record.is_training is is_training
  logits = graph.get_tensor_by_name(record.logits_name)
  assert logits.shape.as_list() == [7]
  assert ops[0].outputs[0].shape.as_list() == [7]
  assert graph.get_operation_by_name('gate/mask_logits').type == 'VarHandleOp'


def test_gating_op_in_tf_function_trace():
  layer = activation_gating.LogisticSigmoidGating(name='gate')

  @tf.function
  def fn(x):
    with tf.name_scope('conv1'):
      return layer(x, is_training=True)

  graph = fn.get_concrete_function(tf.TensorSpec([1, 3, 3, 4])).graph
  ops = _gating_ops(graph)
  assert [op.name for op in ops] == ['conv1/gate/LogisticSigmoidGating']
  assert gating_ops.get_gating_op_record(ops[0]).gate is layer


def test_no_gating_op_eagerly_nor_with_zero_temperature_in_training():
  graph = tf.Graph()
  with graph.as_default():
    y = activation_gating.logistic_sigmoid_gating(
        tf.ones([1, 2, 2, 3]), axis=3, is_training=True, temperature=0.0)
  # Spec 9.13: with tau == 0 the hard sample is not a gating op (no source).
  assert _gating_ops(graph) == []
  assert y.shape.as_list() == [1, 2, 2, 3]


@pytest.mark.parametrize('straight_through', [False, True])
@pytest.mark.parametrize('logit, expected_mean', [
    (5.5, 0.996), (0.5, 0.6), (-5.5, 0.004), (-1000.0, 0.0), (1000.0, 1.0)])
def test_sampling_statistics(logit, expected_mean, straight_through):
  logits = tf.fill([1000], logit)
  mask = activation_gating._logistic_sigmoid_sample(logits, 0.01, straight_through)
  # Spec 8.6: mean of 1000 samples within 0.07 (binomial std <= 0.016).
  assert float(tf.reduce_mean(mask)) == pytest.approx(expected_mean, abs=0.07)
  assert mask.shape.as_list() == [1000]


def test_mean_keep_rate_matches_sigmoid_of_log_odds():
  log_odds = np.linspace(-3.0, 3.0, 13).astype(np.float32)
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, temperature=0.001, straight_through=True,
      log_odds_init=_const_init(log_odds), keep_first_channel_alive=False)
  x = tf.ones([1, 13])
  samples = np.stack([layer(x, training=True).numpy()[0] for _ in range(2000)])
  # Each channel is kept with probability sigmoid(log_odds); the mean of 2000
  # hard samples has std <= sqrt(0.25 / 2000) = 0.0112: allow 5 std.
  assert set(np.unique(samples)) <= {0.0, 1.0}
  np.testing.assert_allclose(samples.mean(axis=0), _sigmoid(log_odds), atol=0.056)


def test_straight_through_forward_is_hard_with_sigmoid_gradient(zero_noise):
  logits = tf.constant([-1.0, 0.5, 2.0])
  tau = 2.0
  with tf.GradientTape() as tape:
    tape.watch(logits)
    mask = activation_gating._logistic_sigmoid_sample(logits, tau, True)
  # Forward: 1[logits + 0 > 0]; gradient: d/dl sigmoid(l / tau)
  # = s * (1 - s) / tau with s = sigmoid(l / 2).
  np.testing.assert_array_equal(mask.numpy(), [0.0, 1.0, 1.0])
  s = _sigmoid(np.array([-1.0, 0.5, 2.0]) / tau)
  np.testing.assert_allclose(tape.gradient(mask, logits).numpy(),
                             s * (1 - s) / tau, rtol=1e-5)


def test_soft_sample_is_sigmoid_of_noisy_logits_over_tau(zero_noise):
  logits = tf.constant([-1.0, 0.5, 2.0])
  mask = activation_gating._logistic_sigmoid_sample(logits, 0.5, False)
  np.testing.assert_allclose(mask.numpy(), _sigmoid(np.array([-2.0, 1.0, 4.0])),
                             rtol=1e-6)


def test_noise_is_logistic():
  noise = activation_gating._logistic_noise([200000]).numpy()
  # Logistic(0, 1): mean 0, variance pi^2 / 3 = 3.29, P(eps <= 1) = sigmoid(1);
  # the clipping of u to [1e-6, 1 - 1e-6] bounds |eps| by log(1e6) = 13.8.
  assert abs(noise.mean()) < 0.03
  assert noise.var() == pytest.approx(np.pi ** 2 / 3, rel=0.03)
  assert (noise <= 1.0).mean() == pytest.approx(_sigmoid(1.0), abs=0.01)
  assert np.abs(noise).max() <= 13.82


@pytest.mark.parametrize('tau, match', [
    ('hot', '`tau` should be a float or tf.Tensor. Got:'),
    (None, '`tau` should be a float or tf.Tensor. Got:'),
    (-0.5, '`tau` should be positive.'),
])
def test_sample_rejects_bad_tau(tau, match):
  with pytest.raises(ValueError, match=match):
    activation_gating._logistic_sigmoid_sample(tf.zeros([3]), tau, False)


def test_tensor_tau_creates_gating_op():
  graph = tf.Graph()
  with graph.as_default():
    mask = activation_gating._logistic_sigmoid_sample(
        tf.zeros([3]), tf.constant(0.1), False)
  assert mask.op.type == 'Identity' and mask.op.name == 'LogisticSigmoidGating'


# ---------------------------------------------------------------------------
# The layer.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('soft, expected', [
    # 1[l > 0] * sigmoid(l), or 1[l > 0].
    (True, [0.0, 0.0, _sigmoid(0.5), _sigmoid(3.0)]),
    (False, [0.0, 0.0, 1.0, 1.0]),
])
def test_inference_mask_is_deterministic(soft, expected):
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, log_odds_init=_const_init([-2.0, 0.0, 0.5, 3.0]),
      soft_mask_for_inference=soft, keep_first_channel_alive=False)
  x = tf.ones([2, 4])
  first = layer(x).numpy()
  second = layer(x, training=False).numpy()
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, [expected, expected], rtol=1e-6)
  np.testing.assert_allclose(layer.mask.numpy(), expected, rtol=1e-6)


def test_keep_first_channel_alive():
  layer = activation_gating.LogisticSigmoidGating(axis=-1, log_odds_init=-5.0)
  y = layer(tf.fill([1, 3], 2.0), training=False)
  # Inference mask 1[-5 > 0] = 0 everywhere, then max(mask, [1, 0, 0]).
  np.testing.assert_array_equal(y.numpy(), [[2.0, 0.0, 0.0]])


def test_training_flags():
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, log_odds_init=-1000.0, keep_first_channel_alive=False)
  x = tf.ones([1, 2])
  # Logits -1000: the inference mask is 0; a training sample is 0 too (the
  # noise is bounded by 13.8). `is_training` takes precedence over `training`.
  for kwargs in ({'training': True}, {'is_training': True},
                 {'is_training': False, 'training': True}):
    np.testing.assert_array_equal(layer(x, **kwargs).numpy(), [[0.0, 0.0]])
  with pytest.raises(TypeError, match='is_training must be a Python bool'):
    tf.function(lambda flag: layer(x, is_training=flag)).get_concrete_function(
        tf.TensorSpec([], tf.bool))


def test_mask_logits_weight():
  layer = activation_gating.LogisticSigmoidGating(log_odds_init=2.5)
  layer(tf.ones([1, 2, 2, 5]))
  assert [w.name for w in layer.trainable_weights] == ['mask_logits']
  np.testing.assert_allclose(layer.mask_logits.numpy(), [2.5] * 5)
  assert isinstance(layer.logits_variable, tf.Variable)


def test_non_last_axis_broadcasts_along_that_axis():
  layer = activation_gating.LogisticSigmoidGating(
      axis=1, log_odds_init=_const_init([5.0, -5.0]),
      soft_mask_for_inference=False, keep_first_channel_alive=False)
  y = layer(tf.ones([1, 2, 3, 3]), training=False)
  assert layer.mask_logits.shape == (2,)
  np.testing.assert_array_equal(y.numpy()[0, 0], np.ones([3, 3]))
  np.testing.assert_array_equal(y.numpy()[0, 1], np.zeros([3, 3]))


def test_mixed_precision_activation_keeps_its_dtype():
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, log_odds_init=1000.0, dtype='mixed_float16')
  x = tf.ones([1, 3], tf.float16)
  y = layer(x, training=True)
  assert y.dtype == tf.float16
  assert layer.mask_logits.dtype == 'float32'
  np.testing.assert_array_equal(y.numpy(), [[1.0, 1.0, 1.0]])


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(log_odds_init=[1.0, 2.0]), ValueError, 'log_odds_init has unsupported value'),
    (dict(log_odds_init=True), ValueError, 'log_odds_init has unsupported value'),
    (dict(annealing_rate=100.0), ValueError,
     'Must provide global_step if decaying temperature.'),
    (dict(temperature=-1.0), ValueError, '`tau` should be positive.'),
    (dict(axis='channels'), ValueError, 'axis must be an integer'),
])
def test_constructor_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    activation_gating.LogisticSigmoidGating(**kwargs)


def test_build_errors():
  with pytest.raises(ValueError, match='axis 3 is out of range for an input of rank 2'):
    activation_gating.LogisticSigmoidGating()(tf.ones([1, 4]))


def test_log_odds_init_accepts_initializers():
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, log_odds_init=keras.initializers.Constant(-1.5))
  layer(tf.ones([1, 2]))
  np.testing.assert_allclose(layer.mask_logits.numpy(), [-1.5, -1.5])


def test_annealed_temperature():
  step = tf.Variable(2.0)
  layer = activation_gating.LogisticSigmoidGating(
      temperature=1.0, annealing_rate=4.0, global_step=step)
  # 1.0 * 0.1 ** (2 / 4) = 0.316228; follows the variable.
  assert float(layer.temperature) == pytest.approx(0.1 ** 0.5, rel=1e-6)
  step.assign(8.0)
  assert float(layer.temperature) == pytest.approx(0.01, rel=1e-6)


def test_config_round_trip():
  layer = activation_gating.LogisticSigmoidGating(
      axis=-1, temperature=0.5, straight_through=True, log_odds_init=1.5,
      soft_mask_for_inference=False, keep_first_channel_alive=False, name='g')
  clone = activation_gating.LogisticSigmoidGating.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert (clone.axis, clone.temperature, clone.straight_through) == (-1, 0.5, True)


def test_gated_model_saves_and_loads(tmp_path):
  inputs = keras.Input((4,))
  outputs = activation_gating.LogisticSigmoidGating(axis=-1, name='gate')(inputs)
  model = keras.Model(inputs, outputs)
  model.get_layer('gate').mask_logits.assign([1.0, -1.0, 2.0, -2.0])
  path = str(tmp_path / 'gated.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.get_layer('gate').mask_logits.numpy(),
                                [1.0, -1.0, 2.0, -2.0])
  x = np.ones([1, 4], np.float32)
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy())


# ---------------------------------------------------------------------------
# The gating functions.
# ---------------------------------------------------------------------------


def test_add_gating_to_fn_binds_axis_and_is_training():
  calls = []

  def gating_fn(activation, axis, is_training, **kwargs):
    calls.append((axis, is_training, kwargs))
    return activation * 2.0

  gated = activation_gating.add_gating_to_fn(
      lambda x, shift=0.0: x + shift, gating_fn=gating_fn, axis=1,
      is_training=False, temperature=0.3)
  y = gated(tf.constant([1.0]), shift=1.0)
  # (1 + 1) * 2: fn first, then the gating with the bound arguments.
  assert float(y[0]) == 4.0
  assert calls == [(1, False, {'temperature': 0.3})]


def test_gated_relu_activation():
  x = tf.constant([[-1.0, 2.0, 3.0]])
  y = activation_gating.gated_relu_activation(
      axis=-1, is_training=False, log_odds_init=1000.0)(x)
  np.testing.assert_array_equal(y.numpy(), [[0.0, 2.0, 3.0]])


def test_gated_batch_norm_equals_batch_norm():
  keras.backend.clear_session()  # Default layer names start afresh.
  graph = tf.Graph()
  with graph.as_default():
    x = tf.constant(np.random.RandomState(3).normal(size=[2, 3, 4, 5]), tf.float32)
    gated = activation_gating.gated_batch_norm(log_odds_init=100.0)(x)
    plain = activation_gating.BN_FN(x, scope='plain')
    names = {op.name for op in graph.get_operations()}
    init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(init)
      gated_value, plain_value = sess.run([gated, plain])
  assert 'BatchNorm/FusedBatchNormV3' in names
  assert 'logistic_sigmoid_gating/LogisticSigmoidGating' in names
  # A sampled mask with logits 100 is sigmoid((100 + eps) / 0.001) = 1
  # (|eps| <= 13.8): the gated output is the batch norm's.
  np.testing.assert_allclose(gated_value, plain_value, rtol=1e-6, atol=1e-6)


def test_batch_norm_training_and_inference():
  x = tf.constant(np.random.RandomState(4).normal(2.0, 3.0, size=[4, 3, 3, 2]),
                  tf.float32)
  layer = activation_gating.FusedBatchNorm(decay=0.5, epsilon=0.0)
  y = layer(x, is_training=True).numpy()
  # Training: per-channel (x - mean) / std of the batch, gamma 1, beta 0.
  mean = x.numpy().mean(axis=(0, 1, 2))
  std = x.numpy().std(axis=(0, 1, 2))
  np.testing.assert_allclose(y, (x.numpy() - mean) / std, rtol=1e-4, atol=1e-4)
  # Moving mean: 0 * 0.5 + batch mean * 0.5.
  np.testing.assert_allclose(layer.moving_mean.numpy(), mean * 0.5, rtol=1e-5)
  # Inference uses the moving statistics.
  inference = layer(x, is_training=False).numpy()
  expected = (x.numpy() - layer.moving_mean.numpy()) / np.sqrt(
      layer.moving_variance.numpy())
  np.testing.assert_allclose(inference, expected, rtol=1e-4, atol=1e-4)


def test_default_scope_is_counted_per_graph():
  # Issue 14, item 4: as in the original (TF1 Keras counted default names per
  # graph), a fresh graph starts again at `logistic_sigmoid_gating`; Keras 3's
  # process-wide counter would give `logistic_sigmoid_gating_1` here.
  for _ in range(2):
    tf.compat.v1.reset_default_graph()
    graph = tf.compat.v1.get_default_graph()
    with graph.as_default():
      activation = tf.ones([1, 2, 2, 3])
      activation_gating.logistic_sigmoid_gating(activation, 3, True)
      activation_gating.logistic_sigmoid_gating(activation, 3, True)
    gating_ops_in_graph = sorted(op.name for op in graph.get_operations()
                                 if op.name.endswith('/LogisticSigmoidGating'))
    assert gating_ops_in_graph == ['logistic_sigmoid_gating/LogisticSigmoidGating',
                                   'logistic_sigmoid_gating_1/LogisticSigmoidGating']
    # The variables sit next to their gating ops (`<scope>/mask_logits`).
    assert [v.name for v in graph.get_collection('variables')] == [
        'logistic_sigmoid_gating/mask_logits:0', 'logistic_sigmoid_gating_1/mask_logits:0']
  tf.compat.v1.reset_default_graph()
