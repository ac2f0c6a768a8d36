"""Analysis and costs of today's layer patterns on Keras models (issue 11).

Conv1D (dilated too), Dense on feature maps, grouped convolutions, channel
splits and spatial crops: `get_cost()` equals the independent per-layer count of
`flop_count` (which never imports morph_net), with all channels alive and
with dead channels (gamma 0, consistent within tied groups) counted by hand.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from morph_net.keras_integration import shrink
from morph_net.keras_integration.layer_structure import LayerStructureExporter
from morph_net.network_regularizers import flop_regularizer
from tests.keras_integration import flop_count

L = keras.layers
THRESHOLD = 0.5


def _kill(model, name, channels):
  layer = model.get_layer(name)
  gamma = np.ones(layer.gamma.shape[0], np.float32)
  gamma[list(channels)] = 0.0
  layer.gamma.assign(gamma)


def _cost(model, cls=flop_regularizer.GammaFlopsRegularizer, threshold=THRESHOLD):
  reg = cls.from_keras_model(model, threshold)
  return reg, float(reg.get_cost())


def _audio_model():
  inputs = keras.Input((32, 4))
  x = L.Conv1D(8, 5, padding='same', name='c1')(inputs)
  x = L.BatchNormalization(name='bn1')(x)
  x = L.ReLU()(x)
  x = L.Conv1D(8, 3, padding='same', dilation_rate=2, name='c2')(x)
  x = L.BatchNormalization(name='bn2')(x)
  x = L.ReLU()(x)
  x = L.Conv1D(6, 3, strides=2, name='c3')(x)  # valid: 32 -> 15
  x = L.BatchNormalization(name='bn3')(x)
  x = L.GlobalAveragePooling1D()(x)
  return keras.Model(inputs, L.Dense(3, name='head')(x))


def test_conv1d_audio_model():
  model = _audio_model()
  # c1 2*32*5*4*8; c2 (dilated, SAME) 2*32*3*8*8; c3 2*15*3*8*6; head 2*6*3.
  expected = 2 * 32 * 5 * 4 * 8 + 2 * 32 * 3 * 8 * 8 + 2 * 15 * 3 * 8 * 6 + 2 * 6 * 3
  assert flop_count.model_flops(model) == expected
  _, cost = _cost(model)
  assert cost == expected
  _kill(model, 'bn1', [0, 3, 5])  # 5 alive
  _kill(model, 'bn2', [1, 2])  # 6 alive
  _kill(model, 'bn3', [4])  # 5 alive
  reduced = (flop_count.layer_flops(model.get_layer('c1'), out_channels=5)
             + flop_count.layer_flops(model.get_layer('c2'), in_channels=5, out_channels=6)
             + flop_count.layer_flops(model.get_layer('c3'), in_channels=6, out_channels=5)
             + flop_count.layer_flops(model.get_layer('head'), in_channels=5))
  reg, cost = _cost(model)
  assert cost == reduced
  assert float(reg.get_regularization_term()) > 0


def test_group_lasso_on_conv1d_reads_the_kernel():
  model = _audio_model()
  reg, cost = _cost(model, flop_regularizer.GroupLassoFlopsRegularizer, 0.0)
  assert cost == flop_count.model_flops(model)
  kernel = model.get_layer('c2').kernel
  kernel.assign(np.zeros(kernel.shape, np.float32))
  # c2's outputs dead: c2 and c3 (its input side) vanish.
  assert float(reg.get_cost()) == (flop_count.layer_flops(model.get_layer('c1'))
                                   + flop_count.layer_flops(model.get_layer('head')))


def test_dense_on_feature_map():
  inputs = keras.Input((8, 8, 16))
  x = L.Dense(32, name='d1')(inputs)
  x = L.BatchNormalization(name='bn')(x)
  model = keras.Model(inputs, L.Dense(8, name='d2')(x))
  # 2 * rows * C_in * C_out, rows = 8*8: 2*64*16*32 + 2*64*32*8.
  expected = 2 * 64 * 16 * 32 + 2 * 64 * 32 * 8  # 98304
  assert flop_count.model_flops(model) == expected
  assert _cost(model)[1] == expected
  _kill(model, 'bn', range(10))  # 22 alive
  assert _cost(model)[1] == 2 * 64 * 16 * 22 + 2 * 64 * 22 * 8


def _grouped_model(groups, filters=16):
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(16, 1, name='c1')(inputs)
  x = L.BatchNormalization(name='bn1')(x)
  x = L.ReLU()(x)
  x = L.Conv2D(filters, 3, padding='same', groups=groups, name='grouped')(x)
  x = L.BatchNormalization(name='bn2')(x)
  x = L.ReLU()(x)
  return keras.Model(inputs, L.Conv2D(4, 1, name='c3')(x))


@pytest.mark.parametrize('groups', [2, 4])
def test_grouped_conv_block(groups):
  model = _grouped_model(groups)
  expected = flop_count.model_flops(model)
  # c1 2*64*3*16; grouped 2*64*9*16*16/g; c3 2*64*16*4.
  assert expected == 2 * 64 * 3 * 16 + 2 * 64 * 9 * 16 * 16 // groups + 2 * 64 * 16 * 4
  assert _cost(model)[1] == expected
  a, b = 16 // groups, 16 // groups
  # Positions 0 and 2 of every input group dead, position 1 of every output group.
  _kill(model, 'bn1', [k * a + i for k in range(groups) for i in (0, 2)])
  _kill(model, 'bn2', [k * b + 1 for k in range(groups)])
  alive_in, alive_out = groups * (a - 2), groups * (b - 1)
  reduced = (flop_count.layer_flops(model.get_layer('c1'), out_channels=alive_in)
             + flop_count.layer_flops(model.get_layer('grouped'), in_channels=alive_in,
                                      out_channels=alive_out)
             + flop_count.layer_flops(model.get_layer('c3'), in_channels=alive_out))
  # The grouped term is 2*64*9*a'*b'*g with a', b' alive per group.
  assert (flop_count.layer_flops(model.get_layer('grouped'), in_channels=alive_in,
                                 out_channels=alive_out)
          == 2 * 64 * 9 * (a - 2) * (b - 1) * groups)
  reg, cost = _cost(model)
  assert cost == reduced
  # Exported widths follow the tied groups: equal per-group widths.
  counts = LayerStructureExporter(reg).alive_counts()
  assert counts['c1'] == alive_in
  assert counts['grouped'] == alive_out


def test_grouped_conv_with_one_channel_per_group_is_depthwise():
  model = _grouped_model(16, filters=32)  # multiplier 2
  assert _cost(model)[1] == flop_count.model_flops(model)
  # Input channel c feeds outputs 2c, 2c+1: dead together through bn1 and bn2.
  _kill(model, 'bn1', [3, 7])
  _kill(model, 'bn2', [6, 7, 14, 15])
  reduced = (flop_count.layer_flops(model.get_layer('c1'), out_channels=14)
             + flop_count.layer_flops(model.get_layer('grouped'), in_channels=14)
             + flop_count.layer_flops(model.get_layer('c3'), in_channels=28))
  assert _cost(model)[1] == reduced


def test_csp_split_block():
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(16, 1, name='c0')(inputs)
  x = L.BatchNormalization(name='bn0')(x)
  x = L.ReLU()(x)
  a, b = keras.ops.split(x, 2, axis=-1)
  y = L.Conv2D(8, 3, padding='same', name='c1')(b)
  y = L.BatchNormalization(name='bn1')(y)
  y = L.Add()([y, b])
  x = L.Concatenate()([a, y])
  model = keras.Model(inputs, L.Conv2D(4, 1, name='c2')(x))
  expected = flop_count.model_flops(model)
  assert expected == 2 * 64 * 3 * 16 + 2 * 64 * 9 * 8 * 8 + 2 * 64 * 16 * 4
  assert _cost(model)[1] == expected
  # Half a: channels 0..7 of bn0; half b: 8..15, added to bn1 (grouped: a
  # channel dies only if dead in both).
  _kill(model, 'bn0', [0, 1, 2, 8, 9, 10])  # a: 5 alive
  _kill(model, 'bn1', [0, 1, 5])  # with b's dead 0, 1, 2: 0 and 1 dead -> 6 alive
  reduced = (flop_count.layer_flops(model.get_layer('c0'), out_channels=5 + 6)
             + flop_count.layer_flops(model.get_layer('c1'), in_channels=6, out_channels=6)
             + flop_count.layer_flops(model.get_layer('c2'), in_channels=5 + 6))
  assert _cost(model)[1] == reduced


def test_convnext_style_block_analyses_without_warnings(caplog):
  # Grouped depthwise conv (groups == C), LayerNorm, pointwise Dense MLP with
  # GELU (a Mul by a scalar 0.5) and Softmax head: exact cost, no warning.
  inputs = keras.Input((8, 8, 16))
  x = L.Conv2D(16, 7, padding='same', groups=16, name='dw')(inputs)
  x = L.LayerNormalization(epsilon=1e-6)(x)
  x = L.Dense(32, activation='gelu', name='pw1')(x)
  x = L.Dense(16, name='pw2')(x)
  x = L.Add()([inputs, x])
  x = L.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, L.Dense(4, activation='softmax', name='head')(x))
  # dw 2*64*49*16; pw1 2*64*16*32; pw2 2*64*32*16; head 2*16*4.
  expected = 2 * 64 * 49 * 16 + 2 * 64 * 16 * 32 + 2 * 64 * 32 * 16 + 2 * 16 * 4
  assert flop_count.model_flops(model) == expected
  with caplog.at_level('WARNING'):
    _, cost = _cost(model, flop_regularizer.GroupLassoFlopsRegularizer, 0.0)
  assert cost == expected
  assert 'no op handler' not in caplog.text
  assert 'Unknown number of channels' not in caplog.text


def test_separable_conv1d_dilated():
  inputs = keras.Input((24, 4))
  x = L.Conv1D(6, 1, name='c1')(inputs)
  x = L.BatchNormalization(name='bn1')(x)
  x = L.SeparableConv1D(5, 3, padding='same', dilation_rate=2, name='sep')(x)
  x = L.BatchNormalization(name='bn2')(x)
  model = keras.Model(inputs, L.Conv1D(2, 1, name='c3')(x))
  # c1 2*24*4*6; sep: depthwise 2*24*3*6 + pointwise 2*24*6*5; c3 2*24*5*2.
  expected = 2 * 24 * 4 * 6 + 2 * 24 * 3 * 6 + 2 * 24 * 6 * 5 + 2 * 24 * 5 * 2
  assert flop_count.model_flops(model) == expected
  assert _cost(model)[1] == expected
  _kill(model, 'bn1', [0, 4])  # 4 alive, through the depthwise part
  _kill(model, 'bn2', [2])  # 4 alive
  reduced = (flop_count.layer_flops(model.get_layer('c1'), out_channels=4)
             + flop_count.layer_flops(model.get_layer('sep'), in_channels=4, out_channels=4)
             + flop_count.layer_flops(model.get_layer('c3'), in_channels=4))
  assert _cost(model)[1] == reduced


# ---------------------------------------------------------------------------
# Spatial crops (StridedSlice keeping the channel axis, as in NASNet).


def _cropped_model(crop):
  inputs = keras.Input((8, 8, 3))
  x = L.Conv2D(6, 1, name='c1')(inputs)
  x = L.BatchNormalization(name='bn1')(x)
  x = L.ReLU()(x)
  x = crop(x)  # 8x8 -> 6x6
  x = L.Conv2D(4, 3, name='c2')(x)  # valid: 6x6 -> 4x4
  x = L.BatchNormalization(name='bn2')(x)
  return keras.Model(inputs, L.Conv2D(2, 1, name='c3')(x))


_CROPS = {
    'cropping2d': lambda x: L.Cropping2D(((1, 1), (1, 1)), name='crop')(x),
    'getitem': lambda x: x[:, 1:-1, 1:-1, :],
}


@pytest.mark.parametrize('crop', sorted(_CROPS))
def test_spatial_crop_passes_channels_and_shrinks(crop):
  model = _cropped_model(_CROPS[crop])
  # c1 2*64*3*6; c2 2*16*9*6*4; c3 2*16*4*2.
  expected = 2 * 64 * 3 * 6 + 2 * 16 * 9 * 6 * 4 + 2 * 16 * 4 * 2
  assert flop_count.model_flops(model) == expected
  assert _cost(model)[1] == expected
  _kill(model, 'bn1', [1, 4])  # 4 alive
  _kill(model, 'bn2', [0])  # 3 alive
  # c2 sees bn1's 4 alive channels through the crop (a leaf crop would give
  # 2*16*9*6*3): 2*64*3*4 + 2*16*9*4*3 + 2*16*3*2.
  reduced = 2 * 64 * 3 * 4 + 2 * 16 * 9 * 4 * 3 + 2 * 16 * 3 * 2
  reg, cost = _cost(model)
  assert cost == reduced
  assert LayerStructureExporter(reg).alive_counts()['c1'] == 4
  # shrink_model removes the same channels: its count equals the prediction.
  shrunk = shrink.shrink_model(model, reg, transfer_weights=True)
  assert tuple(shrunk.get_layer('c2').kernel.shape) == (3, 3, 4, 3)
  assert flop_count.model_flops(shrunk) == reduced
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(shrunk(x, training=False)),
                             np.asarray(model(x, training=False)), rtol=1e-4, atol=1e-4)
