"""Tests for the Keras 3 part of configurable_ops (spec 4.2 and 8.5).

Keras 3 builds a layer under a name scope equal to its name (under any
enclosing `tf.name_scope`), so `<layer name>/<suffix>` and the plain layer
name are the keys a layer answers to.
"""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.keras_integration import layer_structure
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import configurable_ops
from morph_net.tools import structure_exporter
from morph_net.tools import test_module

VANISHED = configurable_ops.VANISHED
IMAGE_SHAPE = [1, 10, 10, 3]
# A 3x3 'valid' convolution on 10x10: 10 - 3 + 1 = 8.
CONV_SPATIAL = 8


@pytest.fixture
def fresh_keras_names():
  """Resets Keras 3's global name counters: default names start unsuffixed."""
  keras.backend.clear_session()
  yield


def _image():
  return tf.random.normal(IMAGE_SHAPE)


def _channels(tensor):
  return int(tensor.shape[-1])


# ----------------------------------------------------------------------------
# The configurable layers.
# ----------------------------------------------------------------------------


def test_default_names_are_honoured(fresh_keras_names):
  parameterization = {
      'configurable_conv2d/ConfigurableConv2D': 1,
      'configurable_separable_conv2d/separable_conv2d': 2,
      'configurable_dense/Tensordot/MatMul': 3,
  }
  image = _image()
  conv = configurable_ops.ConfigurableConv2D(
      parameterization=parameterization, filters=10, kernel_size=3)
  sep = configurable_ops.ConfigurableSeparableConv2D(
      parameterization=parameterization, filters=10, kernel_size=3)
  dense = configurable_ops.ConfigurableDense(parameterization=parameterization, units=10)
  assert _channels(conv(image)) == 1
  assert _channels(sep(image)) == 2
  assert _channels(dense(tf.zeros([2, 4]))) == 3
  assert (conv.filters, sep.filters, dense.units) == (1, 2, 3)


def test_repeated_default_names_are_uniquified_by_keras(fresh_keras_names):
  parameterization = {'configurable_conv2d/ConfigurableConv2D': 1,
                      'configurable_conv2d_1/ConfigurableConv2D': 2}
  constructed_ops = {}
  image = _image()
  first = configurable_ops.ConfigurableConv2D(
      parameterization=parameterization, constructed_ops=constructed_ops, filters=10,
      kernel_size=3)
  second = configurable_ops.ConfigurableConv2D(
      parameterization=parameterization, constructed_ops=constructed_ops, filters=10,
      kernel_size=3)
  assert (_channels(first(image)), _channels(second(image))) == (1, 2)
  assert constructed_ops == parameterization


@pytest.mark.parametrize('key', ['conv1/Conv2D', 'conv1/ConfigurableConv2D', 'conv1'])
def test_custom_name_accepts_each_candidate(key):
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={key: 4}, filters=10, kernel_size=3, name='conv1')
  assert _channels(layer(_image())) == 4
  assert layer.constructed_ops == {key: 4}


@pytest.mark.parametrize('cls, key, kwargs, inputs', [
    (configurable_ops.ConfigurableSeparableConv2D, 'sep/separable_conv2d',
     {'filters': 10, 'kernel_size': 3}, IMAGE_SHAPE),
    (configurable_ops.ConfigurableSeparableConv2D, 'sep', {'filters': 10, 'kernel_size': 3},
     IMAGE_SHAPE),
    (configurable_ops.ConfigurableDense, 'sep/Tensordot/MatMul', {'units': 10}, [2, 4]),
    (configurable_ops.ConfigurableDense, 'sep', {'units': 10}, [2, 4]),
])
def test_separable_and_dense_keys(cls, key, kwargs, inputs):
  layer = cls(parameterization={key: 6}, name='sep', **kwargs)
  assert _channels(layer(tf.zeros(inputs))) == 6


def test_unlisted_layer_keeps_its_width_and_records_the_default_name():
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'other/Conv2D': 1}, filters=7, kernel_size=3, name='conv1')
  assert _channels(layer(_image())) == 7
  assert layer.constructed_ops == {'conv1/ConfigurableConv2D': 7}


def test_both_op_names_at_once_raise():
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'conv1/Conv2D': 1, 'conv1/ConfigurableConv2D': 2},
      filters=10, kernel_size=3, name='conv1')
  with pytest.raises(KeyError, match=r"Found multiple matching op names in the "
                     r"parameterization: \['conv1/Conv2D', 'conv1/ConfigurableConv2D'\]"):
    layer(_image())


def test_op_name_and_layer_name_at_once_raise():
  layer = configurable_ops.ConfigurableDense(
      parameterization={'d/Tensordot/MatMul': 1, 'd': 2}, units=10, name='d')
  with pytest.raises(KeyError, match='Found multiple matching op names'):
    layer(tf.zeros([1, 3]))


def test_strict_layer_with_unused_parameterization_raises():
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'conv2/Conv2D': 1}, is_strict=True, filters=10, kernel_size=3,
      name='conv1')
  with pytest.raises(KeyError, match=r"None of the following op names were found in the "
                     r"parameterization: \['conv1/Conv2D', 'conv1/ConfigurableConv2D', "
                     r"'conv1'\]"):
    layer(_image())


def test_strict_layer_with_its_key_builds():
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'conv1/Conv2D': 2}, is_strict=True, filters=10, kernel_size=3,
      name='conv1')
  assert _channels(layer(_image())) == 2


def test_positional_argument_raises():
  with pytest.raises(ValueError, match='Found positional argument. __init__ only accepts '
                     'kwargs. Received: 10'):
    configurable_ops.ConfigurableConv2D(10, kernel_size=3)


def test_given_constructed_ops_dict_is_mutated():
  constructed_ops = {}
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'conv1': 3}, constructed_ops=constructed_ops, filters=10,
      kernel_size=3, name='conv1')
  assert layer.constructed_ops is constructed_ops
  layer(_image())
  assert constructed_ops == {'conv1': 3}


def test_default_constructed_ops_is_a_new_dict_per_layer():
  first = configurable_ops.ConfigurableConv2D(filters=2, kernel_size=3)
  second = configurable_ops.ConfigurableConv2D(filters=2, kernel_size=3)
  assert first.constructed_ops is not second.constructed_ops


def test_enclosing_name_scope_is_part_of_the_op_name():
  layer = configurable_ops.ConfigurableConv2D(
      parameterization={'block/conv1/Conv2D': 3}, filters=10, kernel_size=3, name='conv1')
  with tf.name_scope('block'):
    assert _channels(layer(_image())) == 3


def test_explicit_duplicate_names_share_one_key(caplog):
  # Keras 3 does not uniquify explicit names (the original's TF1 name scopes
  # gave `conv1_1`): both layers resolve to `conv1/...`.
  parameterization = {'conv1/Conv2D': 3}
  constructed_ops = {}
  image = _image()
  layers = [configurable_ops.ConfigurableConv2D(
      parameterization=parameterization, constructed_ops=constructed_ops, filters=10,
      kernel_size=3, name='conv1') for _ in range(2)]
  with caplog.at_level(logging.WARNING):
    outputs = [layer(image) for layer in layers]
  assert [_channels(o) for o in outputs] == [3, 3]
  assert constructed_ops == {'conv1/Conv2D': 3}
  assert 'constructed more than once' in caplog.text


@pytest.mark.parametrize('cls, kwargs, inputs', [
    (configurable_ops.ConfigurableConv2D, {'filters': 10, 'kernel_size': 3}, IMAGE_SHAPE),
    (configurable_ops.ConfigurableSeparableConv2D, {'filters': 10, 'kernel_size': 3},
     IMAGE_SHAPE),
    (configurable_ops.ConfigurableDense, {'units': 10}, [2, 4]),
])
def test_zero_channel_layer_is_built_and_vanishes(cls, kwargs, inputs):
  layer = cls(parameterization={'layer': 0}, name='layer', **kwargs)
  assert layer(tf.zeros(inputs)) == VANISHED
  assert layer.built and layer.is_null_op
  assert layer.constructed_ops == {'layer': 0}
  # Symbolically as well.
  symbolic = cls(parameterization={'layer': 0}, name='layer', **kwargs)
  assert symbolic(keras.Input(inputs[1:])) == VANISHED


def test_vanished_input_vanishes_without_building():
  layer = configurable_ops.ConfigurableConv2D(filters=10, kernel_size=3)
  assert layer(VANISHED) == VANISHED
  assert layer(inputs=None) == VANISHED
  assert not layer.built
  assert layer.constructed_ops == {}


def test_configurable_layer_is_a_keras_layer_and_computes_the_same():
  kernel = keras.initializers.Constant(0.5)
  image = _image()
  configurable = configurable_ops.ConfigurableConv2D(
      parameterization={'c': 3}, filters=10, kernel_size=3, kernel_initializer=kernel,
      name='c')
  plain = keras.layers.Conv2D(3, 3, kernel_initializer=kernel)
  assert isinstance(configurable, keras.layers.Conv2D)
  np.testing.assert_allclose(configurable(image), plain(image), rtol=1e-6)


# ----------------------------------------------------------------------------
# Pass-through wrappers.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('layer_class, args, kwargs, n_inputs', [
    (keras.layers.Add, (), {}, 2),
    (keras.layers.Multiply, (), {}, 2),
    (keras.layers.Concatenate, (), {'axis': -1}, 3),
    (keras.layers.Activation, ('relu',), {}, 1),
    (keras.layers.UpSampling2D, (), {'size': 2}, 1),
    (keras.layers.BatchNormalization, (), {}, 1),
])
def test_pass_through_wrapper_reproduces_keras_outputs(layer_class, args, kwargs, n_inputs):
  inputs = [tf.random.normal([1, 4, 4, 3]) for _ in range(n_inputs)]
  if n_inputs == 1:
    inputs = inputs[0]
  wrapper = configurable_ops.PassThroughKerasLayerWrapper(layer_class, *args, **kwargs)
  assert wrapper.keras_layer_instance is None
  output = wrapper(inputs)
  assert isinstance(wrapper.keras_layer_instance, layer_class)
  np.testing.assert_allclose(output, layer_class(*args, **kwargs)(inputs), rtol=1e-6)


def test_pass_through_wrapper_forwards_call_arguments():
  wrapper = configurable_ops.PassThroughKerasLayerWrapper(keras.layers.BatchNormalization)
  inputs = tf.random.normal([4, 3]) * 5.0 + 2.0
  output = wrapper(inputs, training=True)
  # Training mode normalizes with the batch statistics: mean 0 per channel.
  np.testing.assert_allclose(np.mean(output, axis=0), [0.0] * 3, atol=1e-5)


def test_pass_through_wrapper_vanishing():
  wrapper = configurable_ops.PassThroughKerasLayerWrapper(keras.layers.Add)
  tensor = tf.ones([1, 2])
  assert wrapper([VANISHED, None]) == VANISHED
  assert wrapper([VANISHED, tensor]) is tensor  # one left: returned, no layer built
  assert wrapper((tensor, None)) is tensor
  assert wrapper.keras_layer_instance is None
  single = configurable_ops.PassThroughKerasLayerWrapper(keras.layers.Activation, 'relu')
  assert single(VANISHED) == VANISHED
  assert single(None) == VANISHED
  assert single.keras_layer_instance is None


# ----------------------------------------------------------------------------
# hijack_keras_module.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('get_module, build', [
    (lambda: test_module.layers, test_module.build_simple_keras_model),
    (lambda: test_module.keras.layers, test_module.build_simple_keras_model_from_keras_lib),
    (lambda: test_module, test_module.build_simple_keras_model_from_local_aliases),
], ids=['layers', 'keras.layers', 'local_aliases'])
def test_hijacking_sets_the_conv_to_one_channel(get_module, build):
  module = get_module()
  original_conv = module.Conv2D
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      {'conv/Conv2D': 0}, module)
  try:
    output = build(_image())
  finally:
    configurable_ops.recover_module_functions(originals, module)
  # keep_first_channel_alive (default) turns the 0 into 1.
  assert output.shape.as_list() == [1, CONV_SPATIAL, CONV_SPATIAL, 1]
  assert constructed_ops == {'conv/Conv2D': 1}
  assert module.Conv2D is original_conv
  assert _channels(build(_image())) == 10


def test_hijack_replaces_only_present_attributes_and_recovers():
  module = test_module
  before = {name: getattr(module, name) for name in
            ('Conv2D', 'SeparableConv2D', 'Dense', 'BatchNormalization', 'Activation')}
  _, originals = configurable_ops.hijack_keras_module({}, module)
  try:
    assert originals == before  # test_module has no Add, Concatenate, ... aliases
    assert module.Conv2D.func is configurable_ops.ConfigurableConv2D
    # The module's SeparableConv2D alias (of Conv2D) becomes the configurable separable.
    assert module.SeparableConv2D.func is configurable_ops.ConfigurableSeparableConv2D
    assert module.Dense.func is configurable_ops.ConfigurableDense
    assert module.BatchNormalization.func is configurable_ops.PassThroughKerasLayerWrapper
    assert module.BatchNormalization.args == (keras.layers.BatchNormalization,)
    assert not hasattr(module, 'Add')
  finally:
    configurable_ops.recover_module_functions(originals, module)
  assert {name: getattr(module, name) for name in before} == before


def test_hijacking_aliases_leaves_keras_layers_alone():
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      {'conv/Conv2D': 1}, test_module)
  try:
    output = test_module.build_simple_keras_model(_image())  # uses `layers`
  finally:
    configurable_ops.recover_module_functions(originals, test_module)
  assert _channels(output) == 10
  assert constructed_ops == {}


def test_all_configurable_types_and_constructed_ops():
  parameterization = {'conv': 3, 'sep_conv': 4, 'dense': 5}
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      parameterization, test_module)
  try:
    output = test_module.build_model_with_all_configurable_types(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module)
  assert output.shape.as_list() == [1, 5]
  assert constructed_ops == parameterization


def test_hijack_with_op_name_keys_records_each_type():
  parameterization = {'conv/Conv2D': 3, 'sep_conv/separable_conv2d': 4,
                      'dense/Tensordot/MatMul': 5}
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      parameterization, test_module)
  try:
    output = test_module.build_model_with_all_configurable_types(
        keras.Input(IMAGE_SHAPE[1:]))
  finally:
    configurable_ops.recover_module_functions(originals, test_module)
  assert list(output.shape) == [None, 5]
  assert constructed_ops == parameterization


@pytest.mark.parametrize('parameterization, expected_channels', [
    ({'model/conv/Conv2D': 2, 'model/other/Conv2D': 3}, 2),  # 'model/' removed
    ({'a/conv/Conv2D': 2, 'a/b/x': 3}, 2),
    ({'a/b/conv/Conv2D': 2, 'a/b/x': 3}, 10),  # one level only: 'b/conv/...' unused
    ({'a/conv/Conv2D': 2, 'b/x': 3}, 10),  # no common prefix
])
def test_remove_common_prefix(parameterization, expected_channels):
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      parameterization, test_module.layers, remove_common_prefix=True)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert _channels(output) == expected_channels


def test_prefixed_keys_are_unused_without_remove_common_prefix():
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      {'model/conv/Conv2D': 2}, test_module.layers)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert _channels(output) == 10
  assert constructed_ops == {'conv/ConfigurableConv2D': 10}


def test_without_keep_first_channel_alive_the_model_vanishes():
  _, originals = configurable_ops.hijack_keras_module(
      {'conv': 0}, test_module.layers, keep_first_channel_alive=False)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  # conv vanishes, so do the BN and activation wrappers after it.
  assert output == VANISHED


def test_strict_rule_through_hijack():
  _, originals = configurable_ops.hijack_keras_module(
      {'other': 1}, test_module.layers, fallback_rule='strict')
  try:
    with pytest.raises(KeyError, match='None of the following op names were found'):
      test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)


def test_zero_rule_has_no_effect_through_hijack():
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      {}, test_module.layers, fallback_rule=configurable_ops.FallbackRule.zero)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert _channels(output) == 10


def test_parameterization_from_file(tmp_path):
  path = tmp_path / 'alive_3'
  path.write_text(structure_exporter.format_structure({'conv': 6}))
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      str(path), test_module.layers)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert _channels(output) == 6


def test_none_parameterization_is_empty():
  constructed_ops, originals = configurable_ops.hijack_keras_module(None, test_module.layers)
  try:
    output = test_module.build_simple_keras_model(_image())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert _channels(output) == 10
  assert constructed_ops == {'conv/ConfigurableConv2D': 10}


def test_bad_parameterization_type_raises():
  with pytest.raises(ValueError, match=r'Expected dict or string \(filename\) for '
                     r'`parameterization_or_file`. Instead got: list'):
    configurable_ops.hijack_keras_module([('conv', 1)], test_module.layers)
  assert test_module.layers.Conv2D is keras.layers.Conv2D


@pytest.mark.parametrize('inputs', [
    lambda: tf.zeros(IMAGE_SHAPE), lambda: keras.Input(IMAGE_SHAPE[1:])],
    ids=['eager', 'symbolic'])
def test_two_branch_model(inputs):
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      {'conv1': 0, 'conv2': 1}, test_module.layers, keep_first_channel_alive=False)
  try:
    output, branch1, branch2 = test_module.build_two_branch_model(inputs())
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert branch1 == VANISHED
  assert list(branch2.shape)[1:] == [CONV_SPATIAL, CONV_SPATIAL, 1]
  # Add([vanished, branch2]) is branch2; Concatenate([branch2, branch2]): 1 + 1 channels.
  assert list(output.shape)[1:] == [CONV_SPATIAL, CONV_SPATIAL, 2]
  assert constructed_ops == {'conv1': 0, 'conv2': 1}


def test_two_branch_functional_model_runs():
  # Summed branches must agree in width (MorphNet groups them, so its exported
  # structures always do).
  _, originals = configurable_ops.hijack_keras_module(
      {'conv1/Conv2D': 2, 'conv2/Conv2D': 2}, test_module.layers)
  try:
    inputs = keras.Input(IMAGE_SHAPE[1:])
    output, _, _ = test_module.build_two_branch_model(inputs)
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  model = keras.Model(inputs, output)
  assert model.get_layer('conv1').filters == 2
  assert model.get_layer('conv2').filters == 2
  # Concatenate([add, branch1, branch2]): 2 + 2 + 2 channels.
  assert model(tf.zeros(IMAGE_SHAPE)).shape.as_list() == [1, CONV_SPATIAL, CONV_SPATIAL, 6]


def test_learned_layer_structure_rebuilds_the_model():
  inputs = keras.Input(IMAGE_SHAPE[1:])
  model = keras.Model(inputs, test_module.build_simple_keras_model(inputs))
  model.get_layer('bn').gamma.assign([1.0] * 4 + [0.1] * 6)
  regularizer = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=0.5)
  structure = layer_structure.LayerStructureExporter(regularizer).alive_counts()
  # |gamma| > 0.5 for 4 of the 10 channels; keyed by layer name.
  assert structure == {'conv': 4}
  constructed_ops, originals = configurable_ops.hijack_keras_module(
      structure, test_module.layers)
  try:
    smaller_inputs = keras.Input(IMAGE_SHAPE[1:])
    smaller = keras.Model(smaller_inputs,
                          test_module.build_simple_keras_model(smaller_inputs))
  finally:
    configurable_ops.recover_module_functions(originals, test_module.layers)
  assert smaller.get_layer('conv').filters == 4
  assert list(smaller.output.shape) == [None, CONV_SPATIAL, CONV_SPATIAL, 4]
  assert constructed_ops == {'conv': 4}


def test_default_names_and_op_names_per_v1_graph():
  # Issue 14, item 4: in a fresh tf.compat.v1 graph the configurable layers
  # are named and name their ops as the original's (TF1 Keras counted default
  # names per graph and built and called a layer in one scope); Keras 3 alone
  # gives e.g. `configurable_dense_3_2/Tensordot/MatMul` by then.
  for _ in range(2):
    graph = tf.Graph()
    with graph.as_default():
      constructed_ops = {}
      image = tf.zeros([1, 10, 10, 3])
      conv = configurable_ops.ConfigurableConv2D(
          filters=4, kernel_size=3, constructed_ops=constructed_ops)(image)
      configurable_ops.ConfigurableSeparableConv2D(
          filters=5, kernel_size=3, constructed_ops=constructed_ops)(conv)
      configurable_ops.ConfigurableDense(
          units=6, constructed_ops=constructed_ops)(tf.zeros([1, 2, 7]))
      second = configurable_ops.ConfigurableConv2D(filters=2, kernel_size=1)
      second(image)
    assert second.name == 'configurable_conv2d_1'
    assert constructed_ops == {'configurable_conv2d/ConfigurableConv2D': 4,
                               'configurable_separable_conv2d/separable_conv2d': 5,
                               'configurable_dense/Tensordot/MatMul': 6}
    names = {op.type: [] for op in graph.get_operations()}
    for op in graph.get_operations():
      names[op.type].append(op.name)
    assert names['MatMul'] == ['configurable_dense/Tensordot/MatMul']
    assert names['DepthwiseConv2dNative'] == [
        'configurable_separable_conv2d/separable_conv2d/depthwise']
    # The pointwise conv of the separable, then the two plain convs, each under
    # its layer's scope (Keras 3 names the conv op itself `convolution`).
    assert names['Conv2D'] == ['configurable_conv2d/convolution',
                               'configurable_separable_conv2d/separable_conv2d',
                               'configurable_conv2d_1/convolution']


def test_test_module_builds_through_its_aliases_in_a_v1_graph():
  # Issue 14, item 6: hijacking the module itself configures the model it
  # builds, its `SeparableConv2D` alias (a Conv2D, as in the original)
  # included.
  parameterization = {'conv/Conv2D': 3, 'sep_conv/separable_conv2d': 4,
                      'dense/Tensordot/MatMul': 5}
  with tf.Graph().as_default() as graph:
    unhijacked = test_module.build_model_with_all_configurable_types(tf.zeros(IMAGE_SHAPE))
    assert unhijacked.shape.as_list() == [1, 10]
    assert 'sep_conv/separable_conv2d' not in {op.name for op in graph.get_operations()}
  with tf.Graph().as_default() as graph:
    constructed_ops, originals = configurable_ops.hijack_keras_module(
        parameterization, test_module)
    try:
      output = test_module.build_model_with_all_configurable_types(tf.zeros(IMAGE_SHAPE))
    finally:
      configurable_ops.recover_module_functions(originals, test_module)
    op_names = {op.name for op in graph.get_operations()}
  assert constructed_ops == parameterization
  assert output.shape.as_list() == [1, 5]
  # Hijacked, 'sep_conv' is a real separable convolution, named as the key.
  assert 'sep_conv/separable_conv2d' in op_names
