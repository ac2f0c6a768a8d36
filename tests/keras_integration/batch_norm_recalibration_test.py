"""recalibrate_batch_norm: moving statistics equal the data's, computed with NumPy."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.keras_integration import batch_norm_recalibration as recalibration

L = keras.layers
EPS = 1e-3  # Keras' BatchNormalization default epsilon.


def _two_bn_model():
  inputs = keras.Input((4, 4, 3))
  x = L.BatchNormalization(name='bn1')(inputs)
  x = L.Dense(5, name='dense')(x)  # Per position: x @ W + b.
  x = L.BatchNormalization(name='bn2')(x)
  x = L.Dropout(0.5)(x)
  outputs = L.Dense(2, name='logits')(L.GlobalAveragePooling2D()(x))
  model = keras.Model(inputs, outputs)
  rng = np.random.default_rng(1)
  for name in ('bn1', 'bn2'):
    layer = model.get_layer(name)
    n = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 2, n).astype(np.float32))
    layer.beta.assign(rng.normal(0, 1, n).astype(np.float32))
  return model


def _data(n=50):
  rng = np.random.default_rng(2)
  return (rng.normal(3.0, 2.0, (n, 4, 4, 3)) * np.array([1, 5, 0.1])).astype(np.float32)


def _expected(model, x):
  """Statistics of bn1's and bn2's inputs, by hand: bn2 sees bn1's recalibrated output."""
  x = x.astype(np.float64)
  mean1, var1 = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  bn1 = model.get_layer('bn1')
  y = (x - mean1) / np.sqrt(var1 + EPS) * np.asarray(bn1.gamma) + np.asarray(bn1.beta)
  dense = model.get_layer('dense')
  z = y @ np.asarray(dense.kernel, np.float64) + np.asarray(dense.bias)
  return (mean1, var1), (z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2)))


def _check(model, expected, atol=1e-4):
  for name, (mean, var) in zip(('bn1', 'bn2'), expected):
    layer = model.get_layer(name)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-4, atol=atol)


def test_statistics_equal_numpy_on_all_batches():
  model, x = _two_bn_model(), _data()
  counts = recalibration.recalibrate_batch_norm(model, x, batch_size=7)  # 8 batches, last 1.
  assert counts == {'bn1': 50 * 16, 'bn2': 50 * 16}
  _check(model, _expected(model, x))


def test_steps_limit_the_batches_and_labels_are_ignored():
  model, x = _two_bn_model(), _data()
  recalibration.recalibrate_batch_norm(model, (x, np.zeros(len(x))), 2, batch_size=10)
  _check(model, _expected(model, x[:20]))


def test_dataset_of_pairs():
  model, x = _two_bn_model(), _data()
  dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(16)
  counts = recalibration.recalibrate_batch_norm(model, dataset, steps=3)
  assert counts['bn1'] == 48 * 16
  _check(model, _expected(model, x[:48]))


def test_inference_after_recalibration_is_normalized():
  """bn1's output has mean beta and std gamma (up to epsilon) on the data."""
  model, x = _two_bn_model(), _data()
  recalibration.recalibrate_batch_norm(model, x)
  bn1 = model.get_layer('bn1')
  out = np.asarray(keras.Model(model.input, bn1.output)(x), np.float64)
  np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), np.asarray(bn1.beta), atol=1e-4)
  var = x.astype(np.float64).var(axis=(0, 1, 2))
  np.testing.assert_allclose(out.std(axis=(0, 1, 2)),
                             np.asarray(bn1.gamma) * np.sqrt(var / (var + EPS)), rtol=1e-4)


def test_sequential_model():
  model = keras.Sequential([keras.Input((3,)), L.BatchNormalization(name='bn'), L.Dense(1, name='out')])
  x = np.random.default_rng(3).normal(1, 3, (40, 3)).astype(np.float32)
  recalibration.recalibrate_batch_norm(model, x)
  np.testing.assert_allclose(np.asarray(model.get_layer('bn').moving_variance),
                             x.astype(np.float64).var(axis=0), rtol=1e-4)


@pytest.mark.parametrize('kwargs, match', [
    (dict(steps=0), 'steps must be a positive integer or None. Received: steps=0'),
    (dict(batch_size=1.5), 'batch_size must be a positive integer. Received: batch_size=1.5'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    recalibration.recalibrate_batch_norm(_two_bn_model(), _data(), **kwargs)


def test_shared_bn_and_empty_data_rejected():
  inputs = keras.Input((3,))
  bn = L.BatchNormalization(name='shared')
  model = keras.Model(inputs, bn(L.Dense(3, name='mid')(bn(inputs))))
  with pytest.raises(ValueError, match="'shared' is called 2 times in the model"):
    recalibration.recalibrate_batch_norm(model, np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match='got no data'):
    recalibration.recalibrate_batch_norm(_two_bn_model(), iter([]))
  with pytest.raises(TypeError, match='Received: str'):
    recalibration.recalibrate_batch_norm('model', [])


def _randomize_bns(layers, seed=4):
  rng = np.random.default_rng(seed)
  for layer in layers:
    n = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 2, n).astype(np.float32))
    layer.beta.assign(rng.normal(0, 1, n).astype(np.float32))
    # Stale statistics, far from the data's: recalibration must replace them.
    layer.moving_mean.assign(np.full(n, 7.0, np.float32))
    layer.moving_variance.assign(np.full(n, 0.01, np.float32))


def _nested_model():
  """bn1 -> dense -> backbone(inner_dense -> inner_bn -> relu -> inner_dense2 -> inner_bn2)
  -> head (Sequential: head_dense -> head_bn) -> pool -> logits."""
  inner_in = keras.Input((4, 4, 5))
  y = L.BatchNormalization(name='inner_bn')(L.Dense(6, name='inner_dense')(inner_in))
  y = L.Dense(4, name='inner_dense2')(L.ReLU()(y))
  backbone = keras.Model(inner_in, L.BatchNormalization(name='inner_bn2')(y), name='backbone')
  head = keras.Sequential([keras.Input((4, 4, 4)), L.Dense(3, name='head_dense'),
                           L.BatchNormalization(name='head_bn')], name='head')
  inputs = keras.Input((4, 4, 3))
  x = L.Dense(5, name='dense')(L.BatchNormalization(name='bn1')(inputs))
  x = head(backbone(x))
  model = keras.Model(inputs, L.Dense(2, name='logits')(L.GlobalAveragePooling2D()(x)))
  _randomize_bns([model.get_layer('bn1'), backbone.get_layer('inner_bn'),
                  backbone.get_layer('inner_bn2'), head.get_layer('head_bn')])
  return model


def _numpy_bn(layer, x):
  """Recalibrated BN in inference on x (float64): returns (output, (mean, var))."""
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  out = (x - mean) / np.sqrt(var + EPS) * np.asarray(layer.gamma) + np.asarray(layer.beta)
  return out, (mean, var)


def _numpy_dense(layer, x):
  return x @ np.asarray(layer.kernel, np.float64) + np.asarray(layer.bias, np.float64)


def test_nested_functional_and_sequential_models_are_recalibrated():
  """Every BN, top-level or nested, ends with its input's statistics, by NumPy."""
  model, x = _nested_model(), _data()
  backbone, head = model.get_layer('backbone'), model.get_layer('head')
  counts = recalibration.recalibrate_batch_norm(model, x, batch_size=16)
  assert counts == {name: 50 * 16 for name in
                    ('bn1', 'backbone/inner_bn', 'backbone/inner_bn2', 'head/head_bn')}
  # The chain by hand, each BN normalizing with the statistics of its own input.
  y, stats1 = _numpy_bn(model.get_layer('bn1'), x.astype(np.float64))
  y = _numpy_dense(model.get_layer('dense'), y)
  y, stats2 = _numpy_bn(backbone.get_layer('inner_bn'),
                        _numpy_dense(backbone.get_layer('inner_dense'), y))
  y = _numpy_dense(backbone.get_layer('inner_dense2'), np.maximum(y, 0))
  y, stats3 = _numpy_bn(backbone.get_layer('inner_bn2'), y)
  _, stats4 = _numpy_bn(head.get_layer('head_bn'), _numpy_dense(head.get_layer('head_dense'), y))
  for layer, (mean, var) in ((model.get_layer('bn1'), stats1),
                             (backbone.get_layer('inner_bn'), stats2),
                             (backbone.get_layer('inner_bn2'), stats3),
                             (head.get_layer('head_bn'), stats4)):
    np.testing.assert_allclose(np.asarray(layer.moving_mean), mean, rtol=1e-4, atol=1e-4,
                               err_msg=layer.name)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), var, rtol=1e-4, atol=1e-4,
                               err_msg=layer.name)


@pytest.mark.slow  # ~17 s on 2 shared cores: 52 BN levels, a partial forward pass each.
def test_mobilenet_v2_backbone_inside_a_model_with_a_head():
  """keras.applications MobileNetV2 as a layer: its BNs and the head's BN match the
  statistics of their inputs, computed by running the (recalibrated) model's own
  sub-graphs in inference mode."""
  backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                            include_top=False, weights=None)
  inputs = keras.Input((32, 32, 3))
  x = L.BatchNormalization(name='head_bn')(L.Dense(4, name='head_dense')(backbone(inputs)))
  model = keras.Model(inputs, L.Dense(2, name='logits')(L.GlobalAveragePooling2D()(x)))
  x = np.random.default_rng(5).normal(0.5, 1.0, (12, 32, 32, 3)).astype(np.float32)
  counts = recalibration.recalibrate_batch_norm(model, x, batch_size=5)
  bns = [layer for layer in backbone.layers if isinstance(layer, L.BatchNormalization)]
  assert len(bns) == 52  # MobileNetV2: bn_Conv1, 16 blocks of 2 or 3, Conv_1_bn.
  assert set(counts) == {f'{backbone.name}/{bn.name}' for bn in bns} | {'head_bn'}
  for name in ('bn_Conv1', 'block_6_project_BN', 'Conv_1_bn'):
    layer = backbone.get_layer(name)
    seen = np.asarray(keras.Model(backbone.input, layer.input)(x, training=False), np.float64)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), seen.mean(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), seen.var(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-5, err_msg=name)
  head_bn = model.get_layer('head_bn')
  seen = np.asarray(keras.Model(model.input, head_bn.input)(x, training=False), np.float64)
  np.testing.assert_allclose(np.asarray(head_bn.moving_mean), seen.mean(axis=(0, 1, 2)),
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(np.asarray(head_bn.moving_variance), seen.var(axis=(0, 1, 2)),
                             rtol=1e-3, atol=1e-5)


class _Block(L.Layer):
  """A subclassed layer holding a BN: its call cannot be walked."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.dense = L.Dense(3, name='hidden_dense')
    self.bn = L.BatchNormalization(name='hidden_bn')

  def call(self, x, training=None):
    return self.bn(self.dense(x), training=training)


def test_bn_in_a_subclassed_layer_is_left_with_a_warning(caplog):
  inputs = keras.Input((3,))
  model = keras.Model(inputs, L.Dense(1)(_Block(name='block')(
      L.BatchNormalization(name='bn')(inputs))))
  x = np.random.default_rng(6).normal(2, 3, (40, 3)).astype(np.float32)
  with caplog.at_level(logging.WARNING):
    counts = recalibration.recalibrate_batch_norm(model, x)
  assert counts == {'bn': 40}
  assert "'block' (hidden_bn)" in caplog.text and 'not recalibrated' in caplog.text
  hidden = model.get_layer('block').bn
  np.testing.assert_array_equal(np.asarray(hidden.moving_mean), np.zeros(3))  # untouched
  np.testing.assert_array_equal(np.asarray(hidden.moving_variance), np.ones(3))
  np.testing.assert_allclose(np.asarray(model.get_layer('bn').moving_variance),
                             x.astype(np.float64).var(axis=0), rtol=1e-4)


def test_nested_model_called_twice_rejected():
  inner_in = keras.Input((3,))
  inner = keras.Model(inner_in, L.BatchNormalization(name='inner_bn')(inner_in), name='inner')
  inputs = keras.Input((3,))
  model = keras.Model(inputs, inner(inner(inputs)))
  with pytest.raises(ValueError, match="'inner/inner_bn' is called 2 times"):
    recalibration.recalibrate_batch_norm(model, np.zeros((4, 3), np.float32))
