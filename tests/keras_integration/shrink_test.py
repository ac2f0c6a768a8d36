"""Tests of shrink_model: reduced widths, topology morphing, costs, weight transfer.

FLOP costs are GammaFlopsRegularizer.get_cost() of the reduced model (fresh
weights: every gamma is 1, so every channel is alive), batch 1, with the
formulas of API_SPEC 3.2: conv 2*S_out*K*C_in*C_out, depthwise 2*S_out*K*C_out,
MatMul 2*C_in*C_out; Add, Concatenate, BN and ReLU cost no FLOPs.
"""

import json
import re

import keras
import numpy as np
import pytest

from morph_net.examples import models
from morph_net.framework import generic_regularizers
from morph_net.keras_integration import shrink
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer

L = keras.layers


def _flops(model):
  return float(GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2).get_cost())


def _conv_bn_relu(x, filters, kernel, name, relu=True):
  x = L.Conv2D(filters, kernel, padding='same', use_bias=False, name=name)(x)
  x = L.BatchNormalization(name=f'{name}_bn')(x)
  return L.ReLU(name=f'{name}_relu')(x) if relu else x


def _chain():
  image = keras.Input((8, 8, 3), name='image')
  x = _conv_bn_relu(image, 8, 3, 'c1')
  x = _conv_bn_relu(x, 12, 3, 'c2')
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(5, name='logits')(x), name='chain')


def _residual():
  image = keras.Input((8, 8, 3), name='image')
  stem = _conv_bn_relu(image, 8, 3, 'stem')
  branch = _conv_bn_relu(stem, 6, 3, 'a')
  branch = _conv_bn_relu(branch, 8, 3, 'b', relu=False)
  x = L.Add(name='add')([stem, branch])
  x = L.ReLU(name='add_relu')(x)
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='residual')


def _concat():
  image = keras.Input((8, 8, 3), name='image')
  p = _conv_bn_relu(image, 4, 1, 'p')
  q = _conv_bn_relu(image, 6, 3, 'q')
  t = _conv_bn_relu(image, 2, 1, 't')
  x = L.Concatenate(name='cat')([p, q, t])
  x = _conv_bn_relu(x, 5, 1, 'r')
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='concat')


def _depthwise():
  image = keras.Input((8, 8, 3), name='image')
  x = _conv_bn_relu(image, 6, 3, 'c1')
  x = L.DepthwiseConv2D(3, depth_multiplier=2, padding='same', use_bias=False, name='dw')(x)
  x = L.ReLU(name='dw_relu')(L.BatchNormalization(name='dw_bn')(x))
  x = L.SeparableConv2D(7, 3, padding='same', use_bias=False, name='sep')(x)
  x = L.ReLU(name='sep_relu')(L.BatchNormalization(name='sep_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='depthwise')


def _dense_head_layers():
  return [L.Dense(16, name='d1'), L.BatchNormalization(name='d1_bn'), L.ReLU(name='d1_relu'),
          L.Dense(8, name='d2'), L.BatchNormalization(name='d2_bn'), L.ReLU(name='d2_relu'),
          L.Dense(3, name='logits')]


def _dense_head():
  x = inputs = keras.Input((10,), name='features')
  for layer in _dense_head_layers():
    x = layer(x)
  return keras.Model(inputs, x, name='dense_head')


def _layer_names(model):
  return [layer.name for layer in model.layers]


# ---------------------------------------------------------------------------
# Widths and costs on hand-built structures.


def test_plain_chain_widths_and_cost():
  reduced = shrink.shrink_model(_chain(), {'c1': 3, 'c2': 7})
  assert reduced.get_layer('c1').filters == 3
  assert reduced.get_layer('c2').filters == 7
  assert tuple(reduced.get_layer('c2_bn').gamma.shape) == (7,)
  assert tuple(reduced.get_layer('logits').kernel.shape) == (7, 5)
  assert reduced.name == 'chain'
  assert _layer_names(reduced) == _layer_names(_chain())
  # c1: 2*64*9*3*3 = 10368; c2: 2*64*9*3*7 = 24192; logits: 2*7*5 = 70.
  assert _flops(reduced) == 10368 + 24192 + 70


def test_seed_cost_is_unchanged_by_an_empty_structure():
  rebuilt = shrink.shrink_model(_chain(), {})
  # c1: 2*64*9*3*8 = 27648; c2: 2*64*9*8*12 = 110592; logits 2*12*5 = 120.
  assert _flops(rebuilt) == 27648 + 110592 + 120


def test_structure_from_exported_file(tmp_path):
  path = tmp_path / 'learned_structure' / 'alive_40'
  path.parent.mkdir()
  path.write_text(json.dumps({'c1': 2, 'c2': 9}, indent=2, sort_keys=True))
  reduced = shrink.shrink_model(_chain(), str(path))
  assert (reduced.get_layer('c1').filters, reduced.get_layer('c2').filters) == (2, 9)


def test_width_zero_in_plain_chain_names_the_layer():
  with pytest.raises(ValueError, match=r"\['c1'\] would get width 0.*plain chain"):
    shrink.shrink_model(_chain(), {'c1': 0})


def test_residual_with_dead_branch_keeps_the_skip():
  result = shrink.rebuild(_residual(), {'stem': 5, 'a': 0, 'b': 5})
  reduced = result.model
  assert _layer_names(reduced) == ['image', 'stem', 'stem_bn', 'stem_relu', 'add_relu',
                                   'pool', 'logits']
  assert result.removed_merges == ['add']
  assert set(result.vanished_layers) == {'a', 'a_bn', 'a_relu', 'b', 'b_bn'}
  # stem: 2*64*9*3*5 = 17280; logits: 2*5*4 = 40 (the branch and the Add are gone).
  assert _flops(reduced) == 17280 + 40


def test_residual_with_live_branch():
  reduced = shrink.shrink_model(_residual(), {'stem': 5, 'a': 2, 'b': 5})
  assert isinstance(reduced.get_layer('add'), L.Add)
  # stem 2*64*9*3*5 = 17280; a 2*64*9*5*2 = 11520; b 2*64*9*2*5 = 11520; logits 2*5*4 = 40.
  assert _flops(reduced) == 17280 + 11520 + 11520 + 40


def test_residual_with_different_widths_is_rejected():
  with pytest.raises(ValueError, match=r"Add layer 'add' merges inputs that would get "
                                       r"different widths \['5', '4'\]"):
    shrink.shrink_model(_residual(), {'stem': 5, 'a': 2, 'b': 4})


def test_concat_with_a_dead_input_keeps_the_others():
  reduced = shrink.shrink_model(_concat(), {'p': 0, 'q': 3, 't': 2, 'r': 4})
  assert [t.shape[-1] for t in reduced.get_layer('cat').input] == [3, 2]
  assert tuple(reduced.get_layer('r').kernel.shape) == (1, 1, 5, 4)
  assert 'p' not in _layer_names(reduced)
  # q 2*64*9*3*3 = 10368; t 2*64*1*3*2 = 768; r 2*64*1*5*4 = 2560; logits 2*4*3 = 24.
  assert _flops(reduced) == 10368 + 768 + 2560 + 24


def test_concat_left_with_one_input_is_removed():
  result = shrink.rebuild(_concat(), {'p': 0, 'q': 3, 't': 0, 'r': 4})
  assert result.removed_merges == ['cat']
  assert tuple(result.model.get_layer('r').kernel.shape) == (1, 1, 3, 4)
  # q 2*64*9*3*3 = 10368; r 2*64*1*3*4 = 1536; logits 2*4*3 = 24.
  assert _flops(result.model) == 10368 + 1536 + 24


def test_concat_with_every_input_dead_is_an_error():
  with pytest.raises(ValueError, match=r"\['p', 'q', 't'\] would get width 0"):
    shrink.shrink_model(_concat(), {'p': 0, 'q': 0, 't': 0})


def test_depthwise_stack_follows_its_input():
  structure = {'c1': 3, 'dw/depthwise': 6, 'sep': 3, 'sep/depthwise': 6}
  reduced = shrink.shrink_model(_depthwise(), structure)
  assert tuple(reduced.get_layer('dw').kernel.shape) == (3, 3, 3, 2)   # m kept
  assert tuple(reduced.get_layer('sep').depthwise_kernel.shape) == (3, 3, 6, 1)
  assert tuple(reduced.get_layer('sep').pointwise_kernel.shape) == (1, 1, 6, 3)
  # c1 2*64*9*3*3 = 10368; dw 2*64*9*(3*2) = 6912; sep depthwise 2*64*9*6 = 6912;
  # sep pointwise 2*64*1*6*3 = 2304; logits 2*3*3 = 18.
  assert _flops(reduced) == 10368 + 6912 + 6912 + 2304 + 18


def test_dense_head_functional_and_sequential():
  structure = {'d1': 5, 'd2': 2}
  functional = shrink.shrink_model(_dense_head(), structure)
  sequential_model = keras.Sequential([keras.Input((10,))] + _dense_head_layers(), name='seq')
  sequential = shrink.shrink_model(sequential_model, structure)
  assert isinstance(sequential, keras.Sequential)
  assert sequential.name == 'seq'
  for reduced in (functional, sequential):
    shapes = [tuple(reduced.get_layer(n).kernel.shape) for n in ('d1', 'd2', 'logits')]
    assert shapes == [(10, 5), (5, 2), (2, 3)]
    # 2*10*5 + 2*5*2 + 2*2*3 = 100 + 20 + 12.
    assert _flops(reduced) == 132


def test_flatten_multiplies_the_width_by_the_spatial_positions():
  model = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(6, 3, padding='same', name='c'),
                            L.BatchNormalization(), L.ReLU(), L.Flatten(),
                            L.Dense(3, name='logits')])
  reduced = shrink.shrink_model(model, {'c': 2})
  # 4*4 positions * 2 channels.
  assert tuple(reduced.get_layer('logits').kernel.shape) == (32, 3)


def test_widths_may_exceed_the_original():
  widened = shrink.shrink_model(_chain(), {'c1': 10, 'c2': 20})
  assert (widened.get_layer('c1').filters, widened.get_layer('c2').filters) == (10, 20)


def test_layers_producing_the_outputs_keep_their_width():
  assert shrink.output_width_layers(_chain()) == ['logits']
  image = keras.Input((4, 4, 3))
  fcn = keras.Model(image, _conv_bn_relu(image, 6, 1, 'head'))
  assert shrink.output_width_layers(fcn) == ['head']
  # GroupLasso regularizers export the classifier too: its width stays 5.
  reduced = shrink.shrink_model(_chain(), {'c2': 7, 'logits': 2})
  assert reduced.get_layer('logits').units == 5
  reduced = shrink.shrink_model(_chain(), {'logits': [True, False] * 2 + [True]})
  assert reduced.get_layer('logits').units == 5


def test_masks_of_an_add_group_are_ored():
  stem = [True, True, False, False, True, False, False, False]
  b = [True, False, True, False, True, False, False, False]
  reduced = shrink.shrink_model(_residual(), {'stem': stem, 'b': b})
  # OR = [T, T, T, F, T, F, F, F]: 4 channels on both sides of the Add.
  assert reduced.get_layer('stem').filters == 4
  assert reduced.get_layer('b').filters == 4
  assert reduced.get_layer('a').filters == 6


# ---------------------------------------------------------------------------
# Errors.


def test_unknown_layer_in_file_names_the_file_and_layer(tmp_path):
  path = tmp_path / 'alive_7'
  path.write_text(json.dumps({'c1': 3, 'nope': 2}))
  with pytest.raises(ValueError, match=re.escape(f"structure file '{path}' names 1 layer(s) "
                                                 "that are not in model 'chain': ['nope']")):
    shrink.shrink_model(_chain(), str(path))


def test_op_names_get_a_hint():
  with pytest.raises(ValueError, match='Keys must be Keras layer names'):
    shrink.shrink_model(_chain(), {'chain_1/c1_1/convolution': 3})


def test_layer_whose_width_cannot_be_set():
  with pytest.raises(ValueError, match=r"width for layer 'c1_bn', a BatchNormalization, "
                                       r"whose output width cannot be set"):
    shrink.shrink_model(_chain(), {'c1_bn': 3})


def test_depthwise_layer_keyed_by_its_plain_name():
  with pytest.raises(ValueError, match=r"'dw/depthwise' is accepted"):
    shrink.shrink_model(_depthwise(), {'dw': 4})


def test_depthwise_key_on_a_plain_conv():
  with pytest.raises(ValueError, match=r"'c1' is a Conv2D, which has no depthwise part"):
    shrink.shrink_model(_chain(), {'c1/depthwise': 3})


def test_mask_of_the_wrong_length():
  with pytest.raises(ValueError, match='has 5 entries, but the layer has 8 channels'):
    shrink.shrink_model(_chain(), {'c1': [True] * 5})


def test_channel_masks_need_a_keras_built_regularizer():
  class GraphRegularizer(generic_regularizers.NetworkRegularizer):

    def get_regularization_term(self, ops=None):
      return 0.0

    def get_cost(self, ops=None):
      return 0.0

  with pytest.raises(ValueError, match='need a regularizer built with from_keras_model'):
    shrink.shrink_model(_chain(), GraphRegularizer())


def test_transfer_weights_needs_masks():
  with pytest.raises(ValueError, match='transfer_weights=True needs per-channel masks'):
    shrink.shrink_model(_chain(), {'c1': 3}, transfer_weights=True)


def test_structure_of_a_wrong_type():
  with pytest.raises(TypeError, match='Received: structure of type int'):
    shrink.shrink_model(_chain(), 3)


def test_subclassed_model_is_rejected():
  class Net(keras.Model):

    def __init__(self):
      super().__init__()
      self.conv = L.Conv2D(3, 1)

    def call(self, x):
      return self.conv(x)

  net = Net()
  net(np.zeros((1, 4, 4, 3), np.float32))
  with pytest.raises(TypeError, match='subclassed model'):
    shrink.shrink_model(net, {})


def test_unbuilt_sequential_is_rejected():
  with pytest.raises(ValueError, match='is not built'):
    shrink.shrink_model(keras.Sequential([L.Dense(3, name='d')]), {'d': 2})


def test_reshape_mixing_channels_and_positions_is_rejected():
  image = keras.Input((4, 4, 3))
  x = _conv_bn_relu(image, 4, 1, 'c')
  x = L.Reshape((8, 8), name='reshape')(x)  # 4*4*4 = 8*8: channels mixed with positions.
  model = keras.Model(image, L.Dense(2)(x))
  with pytest.raises(ValueError, match=r"Layer 'reshape' \(Reshape\) cannot follow a change "
                                       r"of its input width from \[4\] to \[2\]"):
    shrink.shrink_model(model, {'c': 2})


def test_vanished_input_of_a_multiply_is_an_error():
  image = keras.Input((4, 4, 3))
  a = _conv_bn_relu(image, 4, 1, 'a')
  b = _conv_bn_relu(image, 4, 1, 'b')
  x = L.Multiply(name='mul')([a, b])
  model = keras.Model(image, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
  with pytest.raises(ValueError, match=r"\['a'\] would get width 0, but their output reaches "
                                       r"layer 'mul' \(Multiply\), which cannot drop an input"):
    shrink.shrink_model(model, {'a': 0})


# ---------------------------------------------------------------------------
# Weight transfer.


def _kill_channels(model, rng, dead_fraction=0.4):
  """Random BN statistics; gamma = beta = 0 on a random subset of each BN's channels."""
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      c = layer.gamma.shape[0]
      dead = rng.random(c) < dead_fraction
      gamma = rng.uniform(0.5, 1.5, c)
      beta = rng.uniform(-0.5, 0.5, c)
      gamma[dead] = 0.0
      beta[dead] = 0.0
      layer.gamma.assign(gamma.astype('float32'))
      layer.beta.assign(beta.astype('float32'))
      layer.moving_mean.assign(rng.normal(size=c).astype('float32'))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype('float32'))


def _check_same_outputs(model, reduced, input_shape, rng):
  x = rng.normal(size=(4,) + input_shape).astype('float32')
  expected = np.asarray(model(x, training=False))
  actual = np.asarray(reduced(x, training=False))
  np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_transfer_from_regularizer_gives_the_same_outputs():
  rng = np.random.default_rng(0)
  model = models.small_cnn((16, 16, 3), width=8)
  _kill_channels(model, rng)
  regularizer = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=0.1)
  masks = shrink.channel_masks(regularizer)
  reduced = shrink.shrink_model(model, regularizer, transfer_weights=True)
  total = sum(len(m) for m in masks.values())
  alive = sum(int(m.sum()) for m in masks.values())
  assert alive < total  # Some channels were removed, so the test can fail.
  for name, mask in masks.items():
    assert reduced.get_layer(name).filters == int(mask.sum())
  _check_same_outputs(model, reduced, (16, 16, 3), rng)


def test_transfer_copies_the_surviving_slices():
  model = _chain()
  mask1 = np.array([True, False, True, False, False, True, True, False])
  mask2 = np.arange(12) % 3 == 0
  reduced = shrink.shrink_model(model, {'c1': mask1, 'c2': mask2}, transfer_weights=True)
  old_kernel = np.asarray(model.get_layer('c2').kernel)
  np.testing.assert_array_equal(np.asarray(reduced.get_layer('c2').kernel),
                                old_kernel[:, :, mask1][..., mask2])
  np.testing.assert_array_equal(np.asarray(reduced.get_layer('logits').kernel),
                                np.asarray(model.get_layer('logits').kernel)[mask2])
  np.testing.assert_array_equal(np.asarray(reduced.get_layer('logits').bias),
                                np.asarray(model.get_layer('logits').bias))


def test_transfer_through_flatten_in_a_sequential_model():
  rng = np.random.default_rng(1)
  model = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(6, 3, padding='same', name='c'),
                            L.BatchNormalization(name='bn'), L.ReLU(), L.Flatten(),
                            L.Dense(3, name='logits')])
  mask = np.array([True, False, True, True, False, True])
  bn = model.get_layer('bn')
  bn.gamma.assign(np.where(mask, 1.3, 0.0).astype('float32'))
  bn.beta.assign(np.where(mask, 0.2, 0.0).astype('float32'))
  reduced = shrink.shrink_model(model, {'c': mask}, transfer_weights=True)
  assert tuple(reduced.get_layer('logits').kernel.shape) == (4 * 4 * 4, 3)
  _check_same_outputs(model, reduced, (4, 4, 2), rng)


def test_transfer_through_depthwise_and_separable():
  rng = np.random.default_rng(2)
  model = _depthwise()
  _kill_channels(model, rng, dead_fraction=0.3)
  # Kill whole groups too: c1's channel k feeds dw channels 2k and 2k+1.
  for k in (1, 4):
    for name, channels in (('c1_bn', [k]), ('dw_bn', [2 * k, 2 * k + 1])):
      bn = model.get_layer(name)
      for variable in (bn.gamma, bn.beta):
        values = np.asarray(variable)
        values[channels] = 0.0
        variable.assign(values)
  regularizer = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=0.1)
  masks = shrink.channel_masks(regularizer)
  assert not masks['c1'][1] and not masks['c1'][4]
  reduced = shrink.shrink_model(model, regularizer, transfer_weights=True)
  assert reduced.get_layer('dw').kernel.shape[2] == int(masks['c1'].sum())
  _check_same_outputs(model, reduced, (8, 8, 3), rng)


def _kill_application_channels(model, rng):
  for layer in model.layers:
    if isinstance(layer, L.BatchNormalization):
      c = layer.gamma.shape[0]
      dead = rng.random(c) < 0.5
      layer.gamma.assign(np.where(dead, 0.0, rng.uniform(0.5, 1.5, c)).astype('float32'))
      layer.beta.assign(np.where(dead, 0.0, rng.uniform(-0.2, 0.2, c)).astype('float32'))


@pytest.mark.slow
@pytest.mark.parametrize('builder', ['MobileNetV2', 'ResNet50'])
def test_keras_applications_transfer(builder):
  rng = np.random.default_rng(3)
  model = getattr(keras.applications, builder)(
      weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
  _kill_application_channels(model, rng)
  regularizer = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=0.1)
  seed_cost = float(regularizer.get_cost())
  reduced = shrink.shrink_model(model, regularizer, transfer_weights=True)
  assert len(reduced.layers) <= len(model.layers)
  reduced_cost = _flops(reduced)
  # The reduced model's cost (all its channels alive) is the cost MorphNet
  # predicted for the learned structure.
  assert reduced_cost == pytest.approx(seed_cost, rel=1e-6)
  assert reduced.count_params() < model.count_params()
  x = rng.normal(size=(2, 32, 32, 3)).astype('float32')
  np.testing.assert_allclose(np.asarray(reduced(x, training=False)),
                             np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-4)
