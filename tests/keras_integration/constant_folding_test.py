"""Folding the constant outputs of removed channels (shrink_model, transfer_weights=True).

Every model here has dead channels whose BatchNormalization gamma is exactly 0 and
whose beta is random (positive, so that it passes the ReLU): those channels output
the constant relu(beta). The shrunk model must compute what the original computes.
"""

import logging

import keras
import numpy as np
import pytest

from morph_net.keras_integration import constant_folding
from morph_net.keras_integration import shrink

L = keras.layers
RNG = np.random.default_rng(0)


def _randomize(model, dead):
  """Random weights and BN statistics; gamma 0 on `dead` = {bn name: channel ids}."""
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      n = layer.gamma.shape[0]
      gamma = RNG.uniform(0.5, 1.5, n)
      gamma[dead.get(layer.name, [])] = 0.0
      layer.gamma.assign(gamma.astype(np.float32))
      layer.beta.assign(RNG.uniform(0.2, 0.8, n).astype(np.float32))
      layer.moving_mean.assign(RNG.normal(0, 0.5, n).astype(np.float32))
      layer.moving_variance.assign(RNG.uniform(0.5, 2.0, n).astype(np.float32))
    elif layer.weights and not isinstance(layer, L.BatchNormalization):
      layer.set_weights([RNG.normal(0, 0.5, w.shape).astype(np.float32)
                         for w in layer.get_weights()])


def _mask(width, dead):
  mask = np.ones(width, bool)
  mask[dead] = False
  return mask


def _inputs(model, n=4):
  return RNG.normal(0, 1, (n,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)


def _max_diff(model, small, x):
  return float(np.max(np.abs(np.asarray(model(x, training=False))
                             - np.asarray(small(x, training=False)))))


def _conv_bn_relu(x, filters, kernel, name, padding='valid', use_bias=False):
  x = L.Conv2D(filters, kernel, padding=padding, use_bias=use_bias, name=name)(x)
  return L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))


def test_dense_consumer_exact():
  inputs = keras.Input((6,))
  x = L.Dense(5, name='d1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  model = keras.Model(inputs, L.Dense(3, name='out')(x))
  _randomize(model, {'d1_bn': [1, 3]})
  small = shrink.shrink_model(model, {'d1': _mask(5, [1, 3])}, transfer_weights=True)
  assert small.get_layer('d1').units == 3
  x = _inputs(model)
  assert _max_diff(model, small, x) < 1e-5
  # The folded bias is out.bias + relu(beta[dead]) @ out.kernel[dead] (written out).
  beta = np.asarray(model.get_layer('d1_bn').beta)[[1, 3]]
  kernel = np.asarray(model.get_layer('out').kernel)[[1, 3]]
  expected = np.asarray(model.get_layer('out').bias) + beta @ kernel
  np.testing.assert_allclose(np.asarray(small.get_layer('out').bias), expected, atol=1e-5)


def test_without_folding_the_outputs_differ(monkeypatch):
  """The constants matter: skipping the fold changes the outputs (guards the test)."""
  inputs = keras.Input((6,))
  x = L.Dense(5, name='d1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  model = keras.Model(inputs, L.Dense(3, name='out')(x))
  _randomize(model, {'d1_bn': [1, 3]})
  monkeypatch.setattr(constant_folding, 'fold_removed_constants', lambda *a: None)
  small = shrink.shrink_model(model, {'d1': _mask(5, [1, 3])}, transfer_weights=True)
  assert _max_diff(model, small, _inputs(model)) > 1e-2


@pytest.mark.parametrize('kernel', [1, 3])
def test_conv_consumer_with_bias_exact(kernel):
  """1x1 and 3x3 'valid' consumers (with a bias) are exact."""
  inputs = keras.Input((7, 7, 3))
  x = _conv_bn_relu(inputs, 6, 1, 'c1')
  x = L.Conv2D(4, kernel, padding='valid', use_bias=True, name='c2')(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  _randomize(model, {'c1_bn': [0, 2, 5]})
  small = shrink.shrink_model(model, {'c1': _mask(6, [0, 2, 5])}, transfer_weights=True)
  assert _max_diff(model, small, _inputs(model)) < 1e-5


def test_conv_consumer_without_bias_folds_into_bn_moving_mean():
  inputs = keras.Input((7, 7, 3))
  x = _conv_bn_relu(inputs, 6, 3, 'c1')
  x = _conv_bn_relu(x, 4, 3, 'c2')
  model = keras.Model(inputs, L.Dense(2, name='out')(L.Flatten()(x)))
  _randomize(model, {'c1_bn': [1, 4]})
  small = shrink.shrink_model(model, {'c1': _mask(6, [1, 4])}, transfer_weights=True)
  assert _max_diff(model, small, _inputs(model)) < 1e-5
  # moving_mean' = moving_mean - sum over taps of kernel[..., dead, :]^T relu(beta[dead]).
  beta = np.asarray(model.get_layer('c1_bn').beta)[[1, 4]]
  kernel = np.asarray(model.get_layer('c2').kernel)[:, :, [1, 4], :].sum(axis=(0, 1))
  expected = np.asarray(model.get_layer('c2_bn').moving_mean) - beta @ kernel
  np.testing.assert_allclose(np.asarray(small.get_layer('c2_bn').moving_mean), expected,
                             atol=1e-5)


def test_sequential_flatten_dense_exact():
  model = keras.Sequential([
      keras.Input((6, 6, 2)), L.Conv2D(5, 3, use_bias=False, name='c1'),
      L.BatchNormalization(name='c1_bn'), L.ReLU(), L.MaxPooling2D(), L.Flatten(),
      L.Dropout(0.5), L.Dense(3, name='out')])
  _randomize(model, {'c1_bn': [0, 3]})
  small = shrink.shrink_model(model, {'c1': _mask(5, [0, 3])}, transfer_weights=True)
  assert isinstance(small, keras.Sequential)
  assert _max_diff(model, small, _inputs(model)) < 1e-5


def test_concat_inputs_and_removed_concat_branch_exact():
  inputs = keras.Input((5, 5, 3))
  a = _conv_bn_relu(inputs, 4, 1, 'a')
  b = _conv_bn_relu(inputs, 3, 1, 'b')
  c = _conv_bn_relu(inputs, 2, 1, 'c')
  x = L.Concatenate(name='cat')([a, b, c])
  x = L.Conv2D(4, 1, name='mix')(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  _randomize(model, {'a_bn': [1], 'b_bn': [0, 2], 'c_bn': [0, 1]})
  # Branch c is removed as a whole (width 0): the Concatenate drops it.
  result = shrink.rebuild(model, {'a': _mask(4, [1]), 'b': _mask(3, [0, 2]),
                                  'c': _mask(2, [0, 1])}, transfer_weights=True)
  assert 'c' in result.vanished_layers
  assert _max_diff(model, result.model, _inputs(model)) < 1e-5


def _residual(skip_kind):
  """x -> stem; branch a (1x1) -> b (1x1) -> b_bn; Add(skip, b_bn) -> relu -> GAP -> Dense."""
  inputs = keras.Input((5, 5, 3))
  stem = _conv_bn_relu(inputs, 4, 1, 'stem')
  y = _conv_bn_relu(stem, 3, 1, 'a')
  y = L.BatchNormalization(name='b_bn')(L.Conv2D(4, 1, use_bias=False, name='b')(y))
  if skip_kind == 'projection':  # skip: conv + BN that feed only the Add.
    skip = L.BatchNormalization(name='proj_bn')(L.Conv2D(4, 1, name='proj')(stem))
    x = L.ReLU(name='res_relu')(L.Add(name='add')([skip, y]))
  elif skip_kind == 'linear':  # nothing non-linear between the Add and the consumer.
    x = L.Add(name='add')([stem, y])
  else:  # identity skip from a ReLU, and a ReLU after the Add: cannot fold.
    x = L.ReLU(name='res_relu')(L.Add(name='add')([stem, y]))
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, L.Dense(2, name='out')(x))


@pytest.mark.parametrize('skip_kind', ['projection', 'linear'])
def test_removed_residual_branch_constant_folded(skip_kind):
  model = _residual(skip_kind)
  _randomize(model, {'a_bn': [0, 1, 2]})
  result = shrink.rebuild(model, {'a': _mask(3, [0, 1, 2])}, transfer_weights=True)
  assert 'add' in result.removed_merges and 'b' in result.vanished_layers
  assert _max_diff(model, result.model, _inputs(model)) < 1e-5


def test_removed_residual_branch_before_relu_warns(caplog):
  model = _residual('identity')
  _randomize(model, {'a_bn': [0, 1, 2]})
  with caplog.at_level(logging.WARNING):
    shrink.shrink_model(model, {'a': _mask(3, [0, 1, 2])}, transfer_weights=True)
  text = caplog.text
  assert "['a']" in text and "['res_relu']" in text and 'not linear' in text


def test_depthwise_then_pointwise_exact():
  inputs = keras.Input((6, 6, 2))
  x = _conv_bn_relu(inputs, 5, 1, 'c1')
  x = L.DepthwiseConv2D(3, depth_multiplier=2, name='dw')(x)
  x = L.Conv2D(3, 1, use_bias=False, name='pw')(x)
  x = L.BatchNormalization(name='pw_bn')(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  _randomize(model, {'c1_bn': [1, 2]})
  small = shrink.shrink_model(model, {'c1': _mask(5, [1, 2])}, transfer_weights=True)
  assert small.get_layer('dw').output.shape[-1] == 6
  assert _max_diff(model, small, _inputs(model)) < 1e-5


def test_separable_consumer_exact():
  inputs = keras.Input((6, 6, 2))
  x = _conv_bn_relu(inputs, 4, 1, 'c1')
  x = L.SeparableConv2D(3, 3, depth_multiplier=2, name='sep')(x)
  model = keras.Model(inputs, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  _randomize(model, {'c1_bn': [0, 3]})
  small = shrink.shrink_model(model, {'c1': _mask(4, [0, 3])}, transfer_weights=True)
  assert _max_diff(model, small, _inputs(model)) < 1e-5


def test_same_padding_exact_inside_and_known_error_at_the_corner(caplog, monkeypatch):
  """border='interior': exact away from the border; at a corner hidden taps are missing.

  At output (0, 0) of a 3x3 'same' conv, taps in kernel row 0 and column 0 read
  the zero padding. The original conv sees 0 there for the dead channels too, so
  the shrunk model (whose bias holds all 9 taps) is off by
  sum over hidden taps (dy, dx) of relu(beta[dead]) @ kernel[dy, dx, dead, :].
  """
  inputs = keras.Input((6, 6, 2))
  x = _conv_bn_relu(inputs, 4, 1, 'c1')
  model = keras.Model(inputs, L.Conv2D(3, 3, padding='same', name='c2')(x))
  _randomize(model, {'c1_bn': [1, 2]})
  monkeypatch.setattr(constant_folding, 'DEFAULT_BORDER', 'interior')
  with caplog.at_level(logging.WARNING):
    small = shrink.shrink_model(model, {'c1': _mask(4, [1, 2])}, transfer_weights=True)
  assert "'same'-padded" in caplog.text and "['c2']" in caplog.text
  assert 'exact away from the borders' in caplog.text
  x = _inputs(model)
  diff = np.asarray(small(x)) - np.asarray(model(x))
  assert np.max(np.abs(diff[:, 1:-1, 1:-1])) < 1e-5
  beta = np.asarray(model.get_layer('c1_bn').beta)[[1, 2]]
  kernel = np.asarray(model.get_layer('c2').kernel)[:, :, [1, 2], :]
  hidden = [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]
  corner = sum(beta @ kernel[dy, dx] for dy, dx in hidden)
  np.testing.assert_allclose(diff[:, 0, 0], np.broadcast_to(corner, (len(x), 3)), atol=1e-5)
  # The border error is bounded by the sum of |W . c| over the non-centre taps.
  bound = sum(np.abs(beta @ kernel[dy, dx]) for dy in range(3) for dx in range(3)
              if (dy, dx) != (1, 1))
  assert np.all(np.abs(diff) <= bound + 1e-5)


def test_cross_channel_layer_warns(caplog):
  inputs = keras.Input((6,))
  x = L.Dense(5, name='d1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  x = L.LayerNormalization(name='ln')(x)
  model = keras.Model(inputs, L.Dense(3, name='out')(x))
  _randomize(model, {'d1_bn': [1, 3]})
  with caplog.at_level(logging.WARNING):
    shrink.shrink_model(model, {'d1': _mask(5, [1, 3])}, transfer_weights=True)
  assert "['d1']" in caplog.text and "['ln']" in caplog.text and "'out'" in caplog.text


def test_report_names_folded_layers():
  inputs = keras.Input((6,))
  x = L.Dense(5, name='d1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  model = keras.Model(inputs, L.Dense(3, name='out')(x))
  _randomize(model, {'d1_bn': [0]})
  masks = {'d1': _mask(5, [0])}
  small = shrink.shrink_model(model, masks)  # No transfer: nothing folded.
  for old, new in ((model.get_layer('d1'), small.get_layer('d1')),):
    assert new.units == 4 and old.units == 5
  shrunk = shrink.shrink_model(model, masks, transfer_weights=True)
  report = constant_folding.fold_removed_constants(model, shrunk, masks)
  assert report.folded == {'out': ['bias']} and not report.not_folded


@pytest.mark.parametrize('conv, shape', [
    (lambda: L.Conv2D(3, 3, padding='same', name='c2'), (6, 6, 2)),
    (lambda: L.Conv2D(3, 3, strides=2, padding='same', name='c2'), (6, 6, 2)),
    (lambda: L.Conv2D(3, (3, 5), strides=2, padding='same', dilation_rate=1, name='c2'),
     (7, 5, 2)),
    (lambda: L.Conv1D(3, 3, padding='causal', dilation_rate=2, name='c2'), (9, 2)),
])
def test_same_padding_mean_mode_is_exact_on_average(conv, shape):
  """border='mean': the shrunk output equals the original's on average over positions."""
  inputs = keras.Input(shape)
  x = L.Dense(4, name='c1')(inputs)  # Per position, like a 1x1 conv.
  x = L.ReLU()(L.BatchNormalization(name='c1_bn')(x))
  model = keras.Model(inputs, conv()(x))
  _randomize(model, {'c1_bn': [0, 3]})
  masks = {'c1': _mask(4, [0, 3])}
  assert constant_folding.DEFAULT_BORDER == 'mean'  # The default.
  small = shrink.shrink_model(model, masks, transfer_weights=True)
  x = _inputs(model)
  diff = np.asarray(small(x)) - np.asarray(model(x))
  axes = tuple(range(1, diff.ndim - 1))
  np.testing.assert_allclose(diff.mean(axis=axes), 0.0, atol=1e-5)
  assert np.abs(diff).max() > 1e-3  # Not exact position by position.


def test_bad_border_mode():
  model = _residual('linear')
  with pytest.raises(ValueError, match="border must be 'interior' or 'mean'. Received: "
                     "border='edge'"):
    constant_folding.fold_removed_constants(model, model, {}, border='edge')


class _Double(keras.layers.Layer):
  """A user layer without weights: its channel arithmetic is unknown to the folder."""

  def call(self, inputs):
    return inputs * 2.0


def test_unknown_weightless_layer_warns(caplog):
  """A layer whose channel arithmetic is unknown blocks the fold, loudly."""
  inputs = keras.Input((6,))
  x = L.Dense(5, name='d1')(inputs)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  x = _Double(name='double')(x)
  model = keras.Model(inputs, L.Dense(3, name='out')(x))
  _randomize(model, {'d1_bn': [2]})
  with caplog.at_level(logging.WARNING):
    shrink.shrink_model(model, {'d1': _mask(5, [2])}, transfer_weights=True)
  assert "['double']" in caplog.text and "layer 'out'" in caplog.text
