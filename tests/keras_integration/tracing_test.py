"""Tests for tracing Keras 3 models into graphs (keras_integration.tracing)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.keras_integration import tracing

layers = keras.layers


def _functional():
  inputs = keras.Input((8, 8, 3), name='image')
  x = layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = layers.BatchNormalization(name='bn1')(x)
  x = layers.ReLU(name='r1')(x)
  x = layers.Conv2D(5, 3, padding='same', name='c2')(x)
  x = layers.BatchNormalization(name='bn2')(x)
  x = layers.ReLU(name='r2')(x)
  x = layers.GlobalAveragePooling2D(name='gap')(x)
  outputs = layers.Dense(2, name='fc')(x)
  return keras.Model(inputs, outputs, name='net')


@pytest.fixture(scope='module')
def functional():
  return _functional()


@pytest.fixture(scope='module')
def traced(functional):
  return tracing.trace_model(functional)


def _sequential_layers():
  return [layers.Conv2D(4, 3, padding='same', name='c1'),
          layers.BatchNormalization(name='bn1'), layers.ReLU(name='r1')]


class _Subclassed(keras.Model):

  def __init__(self):
    super().__init__(name='sub')
    self.conv = layers.Conv2D(4, 3, padding='same', name='c1')
    self.bn = layers.BatchNormalization(name='bn1')
    self.fc = layers.Dense(2, name='fc')

  def call(self, x, training=False):
    x = tf.nn.relu(self.bn(self.conv(x), training=training))
    return self.fc(tf.reduce_mean(x, axis=[1, 2]))


def _ops_of_type(traced_model, op_type):
  return [op for op in traced_model.graph.get_operations() if op.type == op_type]


# ---------------------------------------------------------------------------
# Model kinds and shapes.
# ---------------------------------------------------------------------------


def test_functional_model_none_batch_becomes_one(traced):
  assert len(traced.input_ops) == 1
  assert traced.input_ops[0].outputs[0].shape.as_list() == [1, 8, 8, 3]
  assert [op.type for op in traced.output_ops] == ['BiasAdd']
  assert traced.layer_name_of(traced.output_ops[0]) == 'fc'
  assert traced.layer_output_ops == {}


def test_explicit_batch_is_kept(functional):
  traced = tracing.trace_model(functional, (2, 8, 8, 3))
  assert traced.input_ops[0].outputs[0].shape.as_list() == [2, 8, 8, 3]


def test_sequential_with_input():
  model = keras.Sequential([keras.Input((8, 8, 3))] + _sequential_layers())
  traced = tracing.trace_model(model)
  assert traced.input_ops[0].outputs[0].shape.as_list() == [1, 8, 8, 3]
  assert [op.type for op in traced.output_ops] == ['Relu']


def test_sequential_without_input_needs_input_shape():
  model = keras.Sequential(_sequential_layers())
  with pytest.raises(ValueError, match=r'no known input shape.*input_shape='):
    tracing.trace_model(model)
  traced = tracing.trace_model(model, input_shape=(None, 8, 8, 3))
  assert traced.input_ops[0].outputs[0].shape.as_list() == [1, 8, 8, 3]
  assert [op.type for op in traced.output_ops] == ['Relu']


def test_subclassed_model_needs_input_shape():
  model = _Subclassed()
  with pytest.raises(ValueError, match=r'no known input shape.*input_shape='):
    tracing.trace_model(model)
  traced = tracing.trace_model(model, (None, 8, 8, 3))
  assert traced.input_ops[0].outputs[0].shape.as_list() == [1, 8, 8, 3]
  [conv] = _ops_of_type(traced, 'Conv2D')
  [matmul] = _ops_of_type(traced, 'MatMul')
  assert traced.layer_name_of(conv) == 'c1'
  assert traced.layer_name_of(matmul) == 'fc'
  # The raw tf.nn.relu of `call` belongs to no layer.
  [relu] = _ops_of_type(traced, 'Relu')
  assert traced.layer_name_of(relu) is None


def test_boundaries_by_name_need_known_inputs():
  model = _Subclassed()
  with pytest.raises(ValueError, match='Boundaries by layer name need a functional'):
    tracing.trace_model(model, (1, 8, 8, 3), output_layers=['bn1'])


def test_unknown_spatial_dims_ask_for_input_shape():
  inputs = keras.Input((None, None, 3))
  model = keras.Model(inputs, layers.Conv2D(4, 3, name='c1')(inputs))
  with pytest.raises(ValueError, match=r'shape \(1, None, None, 3\).*Pass a concrete '
                     r'shape with `input_shape=`'):
    tracing.trace_model(model)
  with pytest.raises(ValueError, match=r'shape \(1, None, 8, 3\).*input_shape='):
    tracing.trace_model(model, (1, None, 8, 3))
  traced = tracing.trace_model(model, (None, 8, 8, 3))
  [conv] = _ops_of_type(traced, 'Conv2D')
  assert conv.outputs[0].shape.as_list() == [1, 6, 6, 4]  # VALID 3x3 on 8x8


def test_non_positive_dimension_is_rejected(functional):
  with pytest.raises(ValueError, match='must be positive'):
    tracing.trace_model(functional, (1, 0, 8, 3))


def test_wrong_number_of_shapes(functional):
  with pytest.raises(ValueError, match=r'gives 2 shape\(s\) but the model has 1 input'):
    tracing.trace_model(functional, [(1, 8, 8, 3), (1, 8, 8, 3)])


def test_shape_without_batch_dimension(functional):
  with pytest.raises(ValueError, match='Include the batch dimension'):
    tracing.trace_model(functional, (8, 8, 3))


def test_multi_input_model():
  a = keras.Input((8, 8, 3), name='a')
  b = keras.Input((8, 8, 2), name='b')
  x = layers.Concatenate(name='cat')([layers.Conv2D(4, 1, name='ca')(a),
                                      layers.Conv2D(6, 1, name='cb')(b)])
  model = keras.Model([a, b], x)
  traced = tracing.trace_model(model)
  assert [op.outputs[0].shape.as_list() for op in traced.input_ops] == [
      [1, 8, 8, 3], [1, 8, 8, 2]]
  assert [op.type for op in traced.output_ops] == ['ConcatV2']
  traced = tracing.trace_model(model, [(2, 8, 8, 3), (2, 8, 8, 2)])
  assert traced.input_ops[1].outputs[0].shape.as_list() == [2, 8, 8, 2]


def test_not_a_model():
  with pytest.raises(TypeError, match='Expected a Keras model. Received: model of type int'):
    tracing.trace_model(3)


# ---------------------------------------------------------------------------
# Boundaries by layer name.
# ---------------------------------------------------------------------------


def test_output_layers_replace_the_outputs(functional):
  traced = tracing.trace_model(functional, output_layers=['r1'])
  assert [op.type for op in traced.output_ops] == ['Relu']
  assert traced.layer_name_of(traced.output_ops[0]) == 'r1'
  assert traced.layer_output_ops == {'r1': traced.output_ops}


def test_input_layers_give_the_input_boundary(functional):
  traced = tracing.trace_model(functional, input_layers=['r1'])
  # The model outputs stay the output boundary.
  assert [op.type for op in traced.output_ops] == ['BiasAdd']
  boundary = tracing.input_boundary_ops(traced, ['r1'])
  assert [op.type for op in boundary] == ['Relu']
  assert traced.layer_name_of(boundary[0]) == 'r1'
  # The boundary op is the one the model output is computed from.
  [conv2] = [op for op in _ops_of_type(traced, 'Conv2D')
             if traced.layer_name_of(op) == 'c2']
  assert conv2.inputs[0].op is boundary[0]
  assert tracing.input_boundary_ops(traced, None) is None


@pytest.mark.parametrize('argument', ['output_layers', 'input_layers'])
def test_unknown_layer_name(functional, argument):
  with pytest.raises(ValueError, match=rf"No layer named 'nope'.*`{argument}`.*"
                     r"Layers: \[.*'c1'"):
    tracing.trace_model(functional, **{argument: ['c1', 'nope']})


@pytest.mark.parametrize('argument', ['output_layers', 'input_layers'])
def test_string_instead_of_list(functional, argument):
  with pytest.raises(TypeError, match=rf"`{argument}` must be a list of layer names. "
                     rf"Received: {argument}='r1'; use \['r1'\]"):
    tracing.trace_model(functional, **{argument: 'r1'})


def test_non_string_layer_name(functional):
  with pytest.raises(TypeError, match='must contain layer names'):
    tracing.trace_model(functional, output_layers=[functional.get_layer('r1')])


# ---------------------------------------------------------------------------
# Op -> layer mapping.
# ---------------------------------------------------------------------------


def test_layer_name_of_conv_dense_and_batch_norm_ops(traced, functional):
  convs = _ops_of_type(traced, 'Conv2D')
  assert sorted(traced.layer_name_of(op) for op in convs) == ['c1', 'c2']
  [matmul] = _ops_of_type(traced, 'MatMul')
  assert traced.layer_name_of(matmul) == 'fc'
  assert traced.layer_of(matmul) is functional.get_layer('fc')
  bn_ops = [op for op in _ops_of_type(traced, 'Mul') if 'bn1' in op.name]
  assert len(bn_ops) == 3  # rsqrt * gamma, x * scale, mean * scale
  assert {traced.layer_name_of(op) for op in bn_ops} == {'bn1'}
  relus = _ops_of_type(traced, 'Relu')
  assert sorted(traced.layer_name_of(op) for op in relus) == ['r1', 'r2']
  [mean] = _ops_of_type(traced, 'Mean')
  assert traced.layer_name_of(mean) == 'gap'
  assert traced.layer_name_of(traced.input_ops[0]) is None
  assert traced.layer_of(traced.input_ops[0]) is None


def test_layer_name_of_ops_in_a_nested_model():
  block = keras.Sequential([keras.Input((8, 8, 3)),
                            layers.Conv2D(4, 3, padding='same', name='inner_conv'),
                            layers.BatchNormalization(name='inner_bn')], name='block')
  inputs = keras.Input((8, 8, 3))
  x = layers.ReLU(name='relu')(block(inputs))
  outputs = layers.Conv2D(2, 1, name='outer_conv')(x)
  traced = tracing.trace_model(keras.Model(inputs, outputs))
  names = sorted(traced.layer_name_of(op) for op in _ops_of_type(traced, 'Conv2D'))
  assert names == ['inner_conv', 'outer_conv']
  bn_names = {traced.layer_name_of(op) for op in _ops_of_type(traced, 'Mul')}
  assert bn_names == {'inner_bn'}


def test_weights_resolve_to_model_variables(traced, functional):
  # A weight read in the trace is the layer's own variable: regularizers read
  # the live weights, not values frozen at trace time.
  [matmul] = _ops_of_type(traced, 'MatMul')
  variable = tracing._variable_of(matmul.inputs[1])
  assert variable is not None
  assert variable is tracing._tf_variable(functional.get_layer('fc').kernel)


def test_layer_name_of_with_default_layer_names():
  # Keras runs the first `batch_normalization` layer in the name scope
  # `batch_normalization_1` (and the second in `batch_normalization_1_2`):
  # the scope name alone is ambiguous, the mapping must not be fooled.
  inputs = keras.Input((8, 8, 3))
  x = inputs
  for _ in range(3):
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding='same')(x)))
  model = keras.Model(inputs, x)
  traced = tracing.trace_model(model)
  ops = traced.graph.get_operations()
  # Ops in creation order: layer k's ops come before layer k+1's.
  sources = [op for op in ops if op.type == 'Mul' and op.name.endswith('batchnorm/mul_1')]
  relus = [op for op in ops if op.type == 'Relu']
  convs = [op for op in ops if op.type == 'Conv2D']
  bn_names = [layer.name for layer in model.layers
              if isinstance(layer, layers.BatchNormalization)]
  relu_names = [layer.name for layer in model.layers if isinstance(layer, layers.ReLU)]
  conv_names = [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
  assert [traced.layer_name_of(op) for op in sources] == bn_names
  assert [traced.layer_name_of(op) for op in relus] == relu_names
  assert [traced.layer_name_of(op) for op in convs] == conv_names


def test_tracing_leaves_the_layers_unchanged(functional):
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  before = functional(x, training=False).numpy()
  tracing.trace_model(functional)
  # The scope recording patches `call` only while tracing.
  assert all('call' not in vars(layer) for layer in functional.layers)
  np.testing.assert_allclose(functional(x, training=False).numpy(), before)


def test_failed_trace_restores_the_layers():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, layers.Conv2D(4, 3, name='c1')(inputs))
  with pytest.raises(ValueError):  # 2 channels for a 3-channel input
    tracing.trace_model(model, (1, 8, 8, 2))
  assert 'call' not in vars(model.get_layer('c1'))
