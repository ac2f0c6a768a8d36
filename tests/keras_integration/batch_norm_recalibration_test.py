"""recalibrate_batch_norm: moving statistics equal the data's, computed with NumPy."""

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
