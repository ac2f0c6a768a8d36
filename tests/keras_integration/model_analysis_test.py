"""Tests for building network regularizers from Keras 3 models.

`<Regularizer>.from_keras_model(model, ...)` traces the model and builds the
regularizer on the trace (keras_integration.model_analysis). Keras 3
BatchNormalization is lowered to element-wise ops; its `Mul(x, scale)` must be
a gamma source with the same grouping semantics as a fused batch norm.

FLOP coefficients (2 * output positions * kernel size) on an 8x8 input with
SAME padding and stride 1: 3x3 conv 2*8*8*3*3 = 1152, 1x1 conv 2*8*8 = 128;
Conv1D (kernel 3) on length 8: 2*8*3 = 48; Dense: 2.
"""

from __future__ import annotations

from unittest import mock

import keras
import numpy as np
import pytest

from morph_net.keras_integration import model_analysis
from morph_net.network_regularizers import activation_regularizer
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer

layers = keras.layers

C3X3 = 2 * 8 * 8 * 3 * 3  # 1152
C1X1 = 2 * 8 * 8  # 128
THRESHOLD = 0.1


def _ops_of_layer(reg, layer_name, op_type=None):
  traced = reg.traced_model
  return [op for op in reg.op_regularizer_manager.ops
          if traced.layer_name_of(op) == layer_name
          and (op_type is None or op.type == op_type)]


def _sources(reg):
  manager = reg.op_regularizer_manager
  return [op for op in manager.ops if manager.is_source_op(op)]


def _groups(manager, op):
  return [manager.get_op_group(op_slice) for op_slice in manager.get_op_slices(op)]


def _set_gamma(model, layer_name, values):
  model.get_layer(layer_name).gamma.assign(np.asarray(values, np.float32))


# ---------------------------------------------------------------------------
# Keras 3 BatchNormalization as a gamma source.
# ---------------------------------------------------------------------------

# name -> (input shape, layer before the batch norm, batch-norm kwargs,
#          weighted op type, dead-pattern gammas, cost all alive, cost dead).
_SOURCE_CASES = {
    # 1152 * A_in(3) * A_out(4); dead: 3 alive -> 1152 * 3 * 3.
    'conv2d': ((8, 8, 3), lambda: layers.Conv2D(4, 3, padding='same', name='layer'),
               {}, 'Conv2D', [1.0, 0.0, 0.5, -0.5], C3X3 * 3 * 4, C3X3 * 3 * 3),
    'conv2d_no_center': ((8, 8, 3),
                         lambda: layers.Conv2D(4, 3, padding='same', name='layer'),
                         {'center': False}, 'Conv2D', [1.0, 0.0, 0.5, -0.5],
                         C3X3 * 3 * 4, C3X3 * 3 * 3),
    'conv2d_axis_minus_1': ((8, 8, 3),
                            lambda: layers.Conv2D(4, 3, padding='same', name='layer'),
                            {'axis': -1}, 'Conv2D', [1.0, 0.0, 0.5, -0.5],
                            C3X3 * 3 * 4, C3X3 * 3 * 3),
    'conv2d_axis_3': ((8, 8, 3), lambda: layers.Conv2D(4, 3, padding='same', name='layer'),
                      {'axis': 3}, 'Conv2D', [1.0, 0.0, 0.5, -0.5],
                      C3X3 * 3 * 4, C3X3 * 3 * 3),
    'conv2d_axis_3_no_center': ((8, 8, 3),
                                lambda: layers.Conv2D(4, 3, padding='same', name='layer'),
                                {'axis': 3, 'center': False}, 'Conv2D',
                                [1.0, 0.0, 0.5, -0.5], C3X3 * 3 * 4, C3X3 * 3 * 3),
    # Conv1D: 48 * 3 * 4; dead: 2 alive -> 48 * 3 * 2.
    'conv1d': ((8, 3), lambda: layers.Conv1D(4, 3, padding='same', name='layer'),
               {}, 'Conv2D', [0.0, 1.0, 0.0, 1.0], 48 * 3 * 4, 48 * 3 * 2),
    'conv1d_axis_2': ((8, 3), lambda: layers.Conv1D(4, 3, padding='same', name='layer'),
                      {'axis': 2}, 'Conv2D', [0.0, 1.0, 0.0, 1.0], 48 * 3 * 4, 48 * 3 * 2),
    # Dense 3 -> 4: 2 * 3 * 4; dead: 1 alive -> 2 * 3 * 1.
    'dense': ((3,), lambda: layers.Dense(4, name='layer'), {}, 'MatMul',
              [0.0, 0.0, 0.0, 2.0], 2 * 3 * 4, 2 * 3 * 1),
    'dense_no_center': ((3,), lambda: layers.Dense(4, name='layer'), {'center': False},
                        'MatMul', [0.0, 0.0, 0.0, 2.0], 2 * 3 * 4, 2 * 3 * 1),
    # Depthwise 3x3, multiplier 2, on the 3-channel input: cost 1152 * A_out(6).
    # Output channels 2i and 2i+1 both read input channel i and share a group
    # (max of their gammas): [1, 1 | 0, 0 | 0.5, 0] -> 4 alive -> 1152 * 4.
    'depthwise': ((8, 8, 3),
                  lambda: layers.DepthwiseConv2D(3, padding='same', depth_multiplier=2,
                                                 name='layer'),
                  {}, 'DepthwiseConv2dNative', [1.0, 1.0, 0.0, 0.0, 0.5, 0.0],
                  C3X3 * 6, C3X3 * 4),
    # Separable: depthwise 3x3 on the input (1152 * 3, its channels are the
    # input's, never regularized) + pointwise 128 * 3 * 4; dead: 2 alive.
    'separable': ((8, 8, 3),
                  lambda: layers.SeparableConv2D(4, 3, padding='same', name='layer'),
                  {}, 'Conv2D', [1.0, 0.0, 0.0, 1.0],
                  C3X3 * 3 + C1X1 * 3 * 4, C3X3 * 3 + C1X1 * 3 * 2),
}


def _source_model(case):
  shape, make_layer, bn_kwargs = _SOURCE_CASES[case][:3]
  inputs = keras.Input(shape)
  x = make_layer()(inputs)
  x = layers.BatchNormalization(name='bn', **bn_kwargs)(x)
  return keras.Model(inputs, layers.ReLU(name='relu')(x))


@pytest.mark.parametrize('case', sorted(_SOURCE_CASES))
def test_keras_batch_norm_is_a_gamma_source(case):
  op_type, dead_gammas, cost_alive, cost_dead = _SOURCE_CASES[case][3:]
  model = _source_model(case)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  [source] = _sources(reg)
  assert source.type == 'Mul'
  assert reg.traced_model.layer_name_of(source) == 'bn'
  [weighted] = _ops_of_layer(reg, 'layer', op_type)
  # The layer and its batch norm are grouped channel by channel (a depthwise
  # layer with a multiplier is sliced per channel, so compare the groups).
  assert _groups(manager, weighted) == _groups(manager, source)
  assert float(reg.get_cost()) == pytest.approx(cost_alive)

  _set_gamma(model, 'bn', dead_gammas)  # read lazily: no rebuild needed
  expected = np.abs(dead_gammas)
  if op_type == 'DepthwiseConv2dNative':  # max over the pairs sharing an input
    expected = np.repeat(expected.reshape(-1, 2).max(axis=1), 2)
  regularizer = manager.get_regularizer(weighted)
  np.testing.assert_allclose(regularizer.regularization_vector.numpy(), expected)
  np.testing.assert_array_equal(regularizer.alive_vector.numpy(), expected > THRESHOLD)
  assert float(reg.get_cost()) == pytest.approx(cost_dead)


def test_residual_add_groups_the_two_branches():
  inputs = keras.Input((8, 8, 3))
  a = layers.BatchNormalization(name='bn_a')(
      layers.Conv2D(4, 3, padding='same', name='conv_a')(inputs))
  b = layers.BatchNormalization(name='bn_b')(
      layers.Conv2D(4, 1, padding='same', name='conv_b')(inputs))
  x = layers.ReLU(name='relu')(layers.Add(name='add')([a, b]))
  x = layers.BatchNormalization(name='bn_c')(layers.Conv2D(2, 1, name='conv_c')(x))
  model = keras.Model(inputs, layers.ReLU(name='relu_c')(x))
  _set_gamma(model, 'bn_a', [1.0, 0.0, 0.0, 1.0])
  _set_gamma(model, 'bn_b', [0.0, 1.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  assert len(_sources(reg)) == 3
  [conv_a] = _ops_of_layer(reg, 'conv_a', 'Conv2D')
  [conv_b] = _ops_of_layer(reg, 'conv_b', 'Conv2D')
  [conv_c] = _ops_of_layer(reg, 'conv_c', 'Conv2D')
  shared = manager.get_regularizer(conv_a)
  assert manager.get_regularizer(conv_b) is shared
  assert manager.get_regularizer(conv_c) is not shared
  np.testing.assert_array_equal(shared.alive_vector.numpy(), [True, True, False, True])
  np.testing.assert_allclose(shared.regularization_vector.numpy(), [1.0, 1.0, 0.0, 1.0])
  # conv_a: 1152 * 3 * 3 (OR of both gammas: 3 alive); conv_b: 128 * 3 * 3;
  # conv_c: 128 * 3 * 2.
  assert float(reg.get_cost()) == pytest.approx(C3X3 * 3 * 3 + C1X1 * 3 * 3 + C1X1 * 3 * 2)


def test_concat_slices_the_batch_norm_after_it():
  inputs = keras.Input((8, 8, 3))
  a = layers.Conv2D(2, 1, name='conv_a')(inputs)
  b = layers.Conv2D(3, 1, name='conv_b')(inputs)
  x = layers.Concatenate(name='cat')([a, b])
  model = keras.Model(inputs, layers.BatchNormalization(name='bn')(x))
  _set_gamma(model, 'bn', [0.0, 1.0, 1.0, 0.0, 1.0])
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  manager = reg.op_regularizer_manager
  [conv_a] = _ops_of_layer(reg, 'conv_a', 'Conv2D')
  [conv_b] = _ops_of_layer(reg, 'conv_b', 'Conv2D')
  np.testing.assert_allclose(
      manager.get_regularizer(conv_a).regularization_vector.numpy(), [0.0, 1.0])
  np.testing.assert_allclose(
      manager.get_regularizer(conv_b).regularization_vector.numpy(), [1.0, 0.0, 1.0])
  # conv_a: 128 * 3 * 1; conv_b: 128 * 3 * 2.
  assert float(reg.get_cost()) == pytest.approx(C1X1 * 3 * 1 + C1X1 * 3 * 2)


def test_batch_norm_without_scale_warns_and_costs_all_channels():
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = layers.ReLU(name='r1')(layers.BatchNormalization(scale=False, name='bn1')(x))
  x = layers.Conv2D(5, 3, padding='same', name='c2')(x)
  x = layers.ReLU(name='r2')(layers.BatchNormalization(name='bn2')(x))
  model = keras.Model(inputs, x)
  _set_gamma(model, 'bn2', [1.0, 0.0, 0.0, 0.0, 1.0])
  with mock.patch.object(model_analysis.logging, 'warning') as warning:
    reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  # One warning names the layer (another, from the op handler, the op).
  layer_warnings = [c.args[0] % c.args[1:] for c in warning.call_args_list
                    if c.args[0].startswith('BatchNormalization layer')]
  assert len(layer_warnings) == 1
  assert "layer 'bn1' has scale=False" in layer_warnings[0]
  [c1] = _ops_of_layer(reg, 'c1', 'Conv2D')
  assert reg.op_regularizer_manager.get_regularizer(c1) is None
  # c1 unregularized: 1152 * 3 * 4 (all channels); c2: 1152 * 4 * 2.
  assert float(reg.get_cost()) == pytest.approx(C3X3 * 3 * 4 + C3X3 * 4 * 2)


def test_batch_norm_on_a_non_channel_axis_warns():
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = layers.BatchNormalization(axis=1, name='bn_rows')(x)
  x = layers.BatchNormalization(name='bn')(x)
  model = keras.Model(inputs, x)
  with mock.patch.object(model_analysis.logging, 'warning') as warning:
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  calls = [c for c in warning.call_args_list if 'not the last axis' in c.args[0]]
  assert [c.args[1:] for c in calls] == [('bn_rows', 1)]


@pytest.mark.parametrize('cls, suggestion', [
    (flop_regularizer.GammaFlopsRegularizer, 'GroupLassoFlopsRegularizer'),
    (model_size_regularizer.GammaModelSizeRegularizer, 'GroupLassoModelSizeRegularizer'),
])
def test_gamma_regularizer_without_batch_norm_suggests_group_lasso(cls, suggestion):
  inputs = keras.Input((8, 8, 3))
  x = layers.ReLU()(layers.Conv2D(4, 3, name='c1')(inputs))
  model = keras.Model(inputs, layers.Conv2D(2, 1, name='c2')(x))
  with pytest.raises(ValueError, match=rf'found no op to regularize.*use the GroupLasso '
                     rf'counterpart \({suggestion}\)'):
    cls.from_keras_model(model, THRESHOLD)


def test_group_lasso_needs_no_batch_norm():
  inputs = keras.Input((8, 8, 3))
  x = layers.ReLU()(layers.Conv2D(4, 3, padding='same', name='c1')(inputs))
  model = keras.Model(inputs, x)
  reg = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(model, 1e-3)
  assert float(reg.get_cost()) == pytest.approx(C3X3 * 3 * 4)


def test_text_model_with_embedding():
  # Embedding -> Conv1D -> BN -> ReLU -> Conv1D -> BN -> ReLU -> global max
  # pool -> Dense: the lookup starts new channels (its 6 are never pruned);
  # grouped with the token ids, as an unknown op, it stalled the analysis.
  inputs = keras.Input((8,), dtype='int32')
  x = layers.Embedding(50, 6, name='embedding')(inputs)
  x = layers.Conv1D(4, 3, padding='same', name='c1')(x)
  x = layers.ReLU()(layers.BatchNormalization(name='bn1')(x))
  x = layers.Conv1D(5, 3, padding='same', name='c2')(x)
  x = layers.ReLU()(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalMaxPooling1D()(x)
  model = keras.Model(inputs, layers.Dense(3, name='head')(x))
  _set_gamma(model, 'bn1', [1.0, 0.0, 1.0, 0.0])  # 2 alive
  _set_gamma(model, 'bn2', [0.0, 1.0, 1.0, 1.0, 0.0])  # 3 alive
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  assert [op.type for op in _ops_of_layer(reg, 'embedding')
          if 'Gather' in op.type] == ['GatherV2']
  # Conv1D (k 3, length 8): 48 * A_in * A_out; Dense: 2 * A_in * 3.
  assert float(reg.get_cost()) == pytest.approx(48 * 6 * 2 + 48 * 2 * 3 + 2 * 3 * 3)


def test_boundary_ops_are_rejected_as_keywords():
  model = _source_model('conv2d')
  with pytest.raises(TypeError, match=r'use input_layers=\[\.\.\.\] instead of '
                     r'input_boundary='):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, THRESHOLD, input_boundary=[])


# ---------------------------------------------------------------------------
# Every network regularizer class, and boundaries by layer name.
#
# Model: 8x8x3 -> c1 (3x3, 4) -> bn1 -> r1 -> c2 (3x3, 5) -> bn2 -> r2 -> gap
# -> fc (Dense 2). Dead pattern: 3 of c1's 4 channels alive, 3 of c2's 5
# (through the gammas for Gamma, zeroed kernel filters for GroupLasso).
# ---------------------------------------------------------------------------


def _two_conv_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(inputs)
  x = layers.ReLU(name='r1')(layers.BatchNormalization(name='bn1')(x))
  x = layers.Conv2D(5, 3, padding='same', use_bias=False, name='c2')(x)
  x = layers.ReLU(name='r2')(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalAveragePooling2D(name='gap')(x)
  model = keras.Model(inputs, layers.Dense(2, name='fc')(x))
  _set_gamma(model, 'bn1', [1.0, 1.0, 0.0, 1.0])
  _set_gamma(model, 'bn2', [1.0, 0.0, 1.0, 0.0, 1.0])
  for name, dead in (('c1', [2]), ('c2', [1, 3])):
    kernel = model.get_layer(name).kernel
    value = kernel.numpy()
    value[..., dead] = 0.0
    kernel.assign(value)
  return model


@pytest.fixture(scope='module')
def two_conv_model():
  return _two_conv_model()


# Costs with the dead pattern: A_in(c1) = 3 (input), A_out(c1) = A_in(c2) = 3,
# A_out(c2) = A_in(fc) = 3, A_out(fc) = 2.
FLOPS = C3X3 * 3 * 3 + C3X3 * 3 * 3 + 2 * 3 * 2  # c1 + c2 + fc
MODEL_SIZE = 9 * 3 * 3 + 9 * 3 * 3 + 3 * 2  # kernel sizes
ACTIVATIONS = 3 + 3 + 2  # alive outputs of c1, c2, fc
# V100 latency of a 3x3 conv with 3 alive inputs and outputs on 8x8: bytes =
# (64 * 3 input + 9 * 3 * 3 weights + 64 * 3 output) * 4 = 1860 over 900 GB/s
# beats FLOPs 1152 * 9 = 10368 over 125000 GFLOP/s.
CONV_LATENCY = max((64 * 3 + 9 * 3 * 3 + 64 * 3) * 4 / 900, C3X3 * 3 * 3 / 125000)

_CLASSES = [
    (flop_regularizer.GammaFlopsRegularizer, (THRESHOLD,), {}, 'FLOPs', FLOPS),
    (flop_regularizer.GroupLassoFlopsRegularizer, (1e-3,), {}, 'FLOPs', FLOPS),
    (model_size_regularizer.GammaModelSizeRegularizer, (THRESHOLD,), {}, 'ModelSize',
     MODEL_SIZE),
    (model_size_regularizer.GroupLassoModelSizeRegularizer, (1e-3,), {}, 'ModelSize',
     MODEL_SIZE),
    (latency_regularizer.GammaLatencyRegularizer, (THRESHOLD,), {'hardware': 'V100'},
     'V100 Latency', None),
    (latency_regularizer.GroupLassoLatencyRegularizer, (1e-3,), {'hardware': 'V100'},
     'V100 Latency', None),
    (activation_regularizer.GammaActivationRegularizer, (THRESHOLD,), {}, 'Activations',
     ACTIVATIONS),
    (activation_regularizer.GroupLassoActivationRegularizer, (1e-3,), {}, 'Activations',
     ACTIVATIONS),
]


@pytest.mark.parametrize('cls, args, kwargs, cost_name, expected', _CLASSES,
                         ids=[c[0].__name__ for c in _CLASSES])
def test_every_regularizer_builds_from_a_keras_model(two_conv_model, cls, args, kwargs,
                                                     cost_name, expected):
  reg = cls.from_keras_model(two_conv_model, *args, **kwargs)
  assert isinstance(reg, cls)
  assert reg.cost_name == cost_name
  assert reg.traced_model.model is two_conv_model
  [c1] = _ops_of_layer(reg, 'c1', 'Conv2D')
  [c2] = _ops_of_layer(reg, 'c2', 'Conv2D')
  manager = reg.op_regularizer_manager
  np.testing.assert_array_equal(manager.get_regularizer(c1).alive_vector.numpy(),
                                [True, True, False, True])
  np.testing.assert_array_equal(manager.get_regularizer(c2).alive_vector.numpy(),
                                [True, False, True, False, True])
  if expected is None:  # latency: per conv, plus memory-bound element-wise ops
    assert float(reg.get_cost([c1])) == pytest.approx(CONV_LATENCY, rel=1e-5)
    assert float(reg.get_cost([c2])) == pytest.approx(CONV_LATENCY, rel=1e-5)
    assert float(reg.get_cost()) > 2 * CONV_LATENCY
  else:
    assert float(reg.get_cost()) == pytest.approx(expected)
  assert float(reg.get_regularization_term()) > 0.0


def test_gamma_flops_regularization_term(two_conv_model):
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(two_conv_model, THRESHOLD)
  # B * c * (A_in * R_out + A_out * R_in) with R = sum |gamma|:
  # c1: 1152 * (3 * 3 + 3 * 0); c2: 1152 * (3 * 3 + 3 * 3); fc (no regularizer
  # of its own): 2 * (3 * 0 + 2 * 3).
  expected = C3X3 * 9 + C3X3 * 18 + 2 * 6
  assert float(reg.get_regularization_term()) == pytest.approx(expected)


def _weighted_layers(reg):
  traced = reg.traced_model
  return sorted(traced.layer_name_of(op) for op in reg.op_regularizer_manager.ops
                if op.type in ('Conv2D', 'MatMul'))


@pytest.mark.parametrize('cls, args', [
    (flop_regularizer.GammaFlopsRegularizer, (THRESHOLD,)),
    (flop_regularizer.GroupLassoFlopsRegularizer, (1e-3,)),
])
def test_input_layers_are_not_crossed(two_conv_model, cls, args):
  reg = cls.from_keras_model(two_conv_model, *args, input_layers=['r1'])
  assert _weighted_layers(reg) == ['c2', 'fc']
  # The layers before r1 have no regularizer (and are not costed).
  assert not any(reg.traced_model.layer_name_of(op) in ('c1', 'bn1')
                 for op in reg.op_regularizer_manager.ops)
  # c2 sees all 4 channels of r1: 1152 * 4 * 3; fc: 2 * 3 * 2.
  assert float(reg.get_cost()) == pytest.approx(C3X3 * 4 * 3 + 2 * 3 * 2)


def test_output_layers_restrict_the_costed_part(two_conv_model):
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      two_conv_model, THRESHOLD, output_layers=['r1'])
  assert _weighted_layers(reg) == ['c1']
  assert float(reg.get_cost()) == pytest.approx(C3X3 * 3 * 3)  # c1 only


def test_output_and_input_layers_together(two_conv_model):
  reg = model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(
      two_conv_model, THRESHOLD, output_layers=['r2'], input_layers=['r1'])
  assert _weighted_layers(reg) == ['c2']
  assert float(reg.get_cost()) == pytest.approx(9 * 4 * 3)  # c2: 4 in, 3 alive out
