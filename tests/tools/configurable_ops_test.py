"""Tests for ConfigurableOps and its layer functions (spec 4.2 and 8.5).

Most tests run twice (the `context` fixture): inside a `tf.compat.v1` graph,
where the recorded op names are also checked against the graph, and eagerly,
where names come from `tf.name_scope` / variable scopes alone.
"""

import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import configurable_ops
from morph_net.tools import structure_exporter

VANISHED = configurable_ops.VANISHED
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAPH = 'graph'
EAGER = 'eager'


@pytest.fixture(params=[GRAPH, EAGER])
def context(request):
  """Runs the test inside a fresh tf.compat.v1 graph, then eagerly."""
  if request.param == GRAPH:
    with tf.Graph().as_default():
      yield GRAPH
  else:
    yield EAGER


def _image(shape=(1, 8, 8, 3)):
  return tf.zeros(list(shape))


def _op_names(types_=('Conv2D', 'MatMul', 'DepthwiseConv2dNative')):
  graph = tf.compat.v1.get_default_graph()
  return {op.name for op in graph.get_operations() if op.type in types_}


class Recorder:
  """A fake layer function recording its calls; returns `result`."""

  def __init__(self, result='out'):
    self.calls = []
    self.result = result

  def __call__(self, *args, **kwargs):
    self.calls.append((args, kwargs))
    return self.result


# ----------------------------------------------------------------------------
# Helpers of the module.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('value, expected', [
    (None, True), (0.0, True), (np.float64(0.0), True), (0, False), (1.0, False),
    ('', False), ([], False)])
def test_is_vanished(value, expected):
  assert configurable_ops.is_vanished(value) is expected


def test_is_vanished_false_for_a_tensor():
  assert not configurable_ops.is_vanished(tf.zeros([]))


def test_default_function_dict_keys():
  assert sorted(configurable_ops.DEFAULT_FUNCTION_DICT) == sorted([
      'fully_connected', 'conv2d', 'separable_conv2d', 'concat', 'add_n',
      'avg_pool2d', 'max_pool2d', 'batch_norm'])
  assert configurable_ops.DEFAULT_FUNCTION_DICT['concat'] is tf.concat
  assert configurable_ops.DEFAULT_FUNCTION_DICT['add_n'] is tf.add_n


def test_get_function_dict_applies_overrides_on_a_copy():
  fake = Recorder()
  function_dict = configurable_ops.get_function_dict({'conv2d': fake})
  assert function_dict['conv2d'] is fake
  assert function_dict['fully_connected'] is configurable_ops.fully_connected
  assert configurable_ops.DEFAULT_FUNCTION_DICT['conv2d'] is configurable_ops.conv2d
  function_dict['concat'] = None
  assert configurable_ops.DEFAULT_FUNCTION_DICT['concat'] is tf.concat


@pytest.mark.parametrize('rule, expected', [
    ('pass_through', configurable_ops.FallbackRule.pass_through),
    ('strict', configurable_ops.FallbackRule.strict),
    ('zero', configurable_ops.FallbackRule.zero),
    (configurable_ops.FallbackRule.zero, configurable_ops.FallbackRule.zero)])
def test_fallback_rule_as_enum(rule, expected):
  assert configurable_ops._get_fallback_rule_as_enum(rule) is expected


def test_fallback_rule_values():
  assert [r.value for r in configurable_ops.FallbackRule] == [
      'pass_through', 'strict', 'zero']


def test_bad_fallback_rule_string_raises_key_error():
  with pytest.raises(KeyError, match="Received: fallback_rule='bad'"):
    configurable_ops.ConfigurableOps(fallback_rule='bad')


def test_bad_fallback_rule_type_raises_value_error():
  with pytest.raises(ValueError, match='fallback_rule must be a string or FallbackRule '
                     'Enum. Received: fallback_rule=3 of type int'):
    configurable_ops.ConfigurableOps(fallback_rule=3)


def test_parameterization_must_be_a_dict():
  with pytest.raises(TypeError, match='Received: parameterization of type list'):
    configurable_ops.ConfigurableOps(parameterization=[('conv/Conv2D', 3)])


@pytest.mark.parametrize('value', [-1, 2.5, 'x', True])
def test_parameterization_values_must_be_non_negative_ints(value):
  with pytest.raises(ValueError, match='non-negative integers'):
    configurable_ops.ConfigurableOps(parameterization={'conv/Conv2D': value})


def test_default_properties():
  ops = configurable_ops.ConfigurableOps()
  assert ops.parameterization == {}
  assert ops.constructed_ops == {}
  assert ops.default_scope_to_counts_map == {}


# ----------------------------------------------------------------------------
# Parameterization overrides num_outputs.
# ----------------------------------------------------------------------------

PARAMETERIZATION = {'fc/MatMul': 13, 'conv/Conv2D': 15, 'sep/separable_conv2d': 17}


def test_parameterization_overrides_num_outputs(context):
  ops = configurable_ops.ConfigurableOps(parameterization=PARAMETERIZATION)
  image = _image()
  conv = ops.conv2d(image, 4, [3, 3], scope='conv')
  sep = ops.separable_conv2d(image, 5, [3, 3], scope='sep')
  fc = ops.fully_connected(tf.zeros([2, 6]), 7, scope='fc')
  assert conv.shape.as_list() == [1, 8, 8, 15]
  assert sep.shape.as_list() == [1, 8, 8, 17]
  assert fc.shape.as_list() == [2, 13]
  assert ops.constructed_ops == PARAMETERIZATION
  assert list(ops.constructed_ops) == ['conv/Conv2D', 'sep/separable_conv2d', 'fc/MatMul']
  if context == GRAPH:
    assert _op_names() == {'conv/Conv2D', 'sep/separable_conv2d', 'fc/MatMul',
                           'sep/separable_conv2d/depthwise'}


@pytest.mark.parametrize('call', [
    lambda ops, x: ops.conv2d(x, 4, [3, 3], scope='conv'),
    lambda ops, x: ops.conv2d(x, num_outputs=4, kernel_size=[3, 3], scope='conv'),
    lambda ops, x: ops.conv2d(inputs=x, num_outputs=4, kernel_size=[3, 3], scope='conv'),
    lambda ops, x: ops.conv2d(x, 4, kernel_size=3, stride=1, scope='conv'),
], ids=['positional', 'num_outputs_keyword', 'all_keywords', 'mixed'])
def test_positional_or_keyword_arguments(context, call):
  ops = configurable_ops.ConfigurableOps(parameterization=PARAMETERIZATION)
  assert call(ops, _image()).shape.as_list() == [1, 8, 8, 15]
  assert ops.constructed_ops == {'conv/Conv2D': 15}


def test_remaining_arguments_are_forwarded():
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(
      parameterization={'c/Conv2D': 5}, function_dict={'conv2d': fake})
  assert ops.conv2d('x', 3, [2, 2], 'SAME', scope='c', stride=2) == 'out'
  assert fake.calls == [(('x', 5, [2, 2], 'SAME'), {'scope': 'c', 'stride': 2})]


def test_name_keyword_names_the_op():
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(
      parameterization={'my_name/Conv2D': 5}, function_dict={'conv2d': fake})
  ops.conv2d('x', num_outputs=3, name='my_name')
  # `name` stays in the forwarded keyword arguments.
  assert fake.calls == [(('x', 5), {'name': 'my_name'})]


def test_layers_style_functions_use_filters_units_and_name(context):
  ops = configurable_ops.ConfigurableOps(
      parameterization={'c/Conv2D': 6, 'd/MatMul': 7, 's/separable_conv2d': 8},
      function_dict={'conv2d': configurable_ops.layers_conv2d,
                     'fully_connected': configurable_ops.layers_dense,
                     'separable_conv2d': configurable_ops.layers_separable_conv2d})
  image = _image()
  # 'valid' padding with a 3x3 kernel: 8 - 3 + 1 = 6.
  assert ops.conv2d(image, filters=2, kernel_size=3, name='c').shape.as_list() == [1, 6, 6, 6]
  assert ops.fully_connected(tf.zeros([2, 4]), units=3, name='d').shape.as_list() == [2, 7]
  assert ops.separable_conv2d(image, filters=2, kernel_size=3,
                              name='s').shape.as_list() == [1, 6, 6, 8]
  if context == GRAPH:
    assert {'c/Conv2D', 'd/MatMul', 's/separable_conv2d'} <= _op_names()


def test_missing_num_outputs_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match='Argument `num_outputs` is required'):
    ops.conv2d(_image(), kernel_size=3, scope='conv')


def test_missing_filters_raises_for_layers_style_function():
  ops = configurable_ops.ConfigurableOps(
      function_dict={'conv2d': configurable_ops.layers_conv2d})
  with pytest.raises(ValueError, match='Argument `filters` is required'):
    ops.conv2d(_image(), kernel_size=3, name='conv')


def test_missing_inputs_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match='Missing `inputs` argument'):
    ops.conv2d(num_outputs=3, kernel_size=3, scope='conv')


def test_scope_ending_with_slash_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match="Scope `conv/` ends with a slash. Not supported. "
                     "Received: scope/name='conv/'"):
    ops.conv2d(_image(), 3, 3, scope='conv/')


def test_user_function_without_scope_and_default_raises():
  def my_conv(inputs, num_outputs):
    return inputs

  ops = configurable_ops.ConfigurableOps(function_dict={'conv2d': my_conv})
  with pytest.raises(ValueError, match='no default scope defined for .*my_conv'):
    ops.conv2d(_image(), 3)


def test_unsupported_function_raises_key_error():
  ops = configurable_ops.ConfigurableOps(function_dict={'conv2d': None})
  with pytest.raises(KeyError, match='Function "conv2d" not supported by function_dict'):
    ops.conv2d(_image(), 3, 3, scope='conv')


# ----------------------------------------------------------------------------
# fully_connected and separable_conv2d specifics.
# ----------------------------------------------------------------------------


def test_fully_connected_requires_rank_2():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match=r'does not suport fully_connected with rank != 2. '
                     r'Received: inputs with shape \(1, 8, 8, 3\)'):
    ops.fully_connected(_image(), 3, scope='fc')


def test_fully_connected_on_vanished_input_vanishes():
  # Deviation: the original read the rank first and crashed on VANISHED.
  ops = configurable_ops.ConfigurableOps()
  assert ops.fully_connected(VANISHED, 3, scope='fc') == VANISHED
  assert ops.constructed_ops == {}


def test_separable_conv2d_without_num_outputs_is_depthwise_only(context, caplog):
  ops = configurable_ops.ConfigurableOps()
  with caplog.at_level(logging.WARNING):
    net = ops.separable_conv2d(_image(), kernel_size=3, depth_multiplier=2, scope='sep')
  assert 'num_outputs = None' in caplog.text
  # Depthwise only: C_in * depth_multiplier = 3 * 2 channels.
  assert net.shape.as_list() == [1, 8, 8, 6]
  assert ops.constructed_ops == {'sep/separable_conv2d': None}
  if context == GRAPH:
    assert _op_names() == {'sep/depthwise'}


# ----------------------------------------------------------------------------
# concat and add_n.
# ----------------------------------------------------------------------------


def test_concat_drops_vanished_values():
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(function_dict={'concat': fake})
  assert ops.concat(axis=1, values=[1, None, 2]) == 'out'
  # As the original (`assert_called_with([1, 2], axis=1)`): the filtered list
  # goes positionally, even when the caller passed it by keyword.
  assert fake.calls == [(([1, 2],), {'axis': 1})]


@pytest.mark.parametrize('method, list_kwarg', [('concat', 'values'), ('add_n', 'inputs')])
def test_keyword_list_is_passed_positionally_in_a_v1_graph(method, list_kwarg):
  # Issue 14, item 5. A function whose list parameter is not named like the
  # original's keyword (tf.concat's `values`, tf.add_n's `inputs`) still
  # receives it: a keyword pass-through would raise TypeError here.
  received = []

  def user_fn(tensors, *args, **kwargs):
    received.append((len(tensors), args, sorted(kwargs)))
    return tf.add_n(tensors) if method == 'add_n' else tf.concat(tensors, **kwargs)

  extra = {'axis': 3} if method == 'concat' else {}
  with tf.Graph().as_default() as graph:
    a, b = tf.ones([1, 2, 2, 3]), tf.ones([1, 2, 2, 3])
    ops = configurable_ops.ConfigurableOps(function_dict={method: user_fn})
    out = getattr(ops, method)(**{list_kwarg: [a, VANISHED, b]}, **extra)
    with tf.compat.v1.Session(graph=graph) as sess:
      value = sess.run(out)
  assert received == [(2, (), sorted(extra))]  # 2 members: the vanished one dropped
  # concat of two 3-channel maps: 6 channels; add_n of two ones: all 2.0.
  assert value.shape == ((1, 2, 2, 6) if method == 'concat' else (1, 2, 2, 3))
  if method == 'add_n':
    np.testing.assert_allclose(value, 2.0)


def test_concat_positional_drops_vanished_values():
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(function_dict={'concat': fake})
  ops.concat([VANISHED, 'a', 'b'], 3)
  assert fake.calls == [((['a', 'b'], 3), {})]


def test_concat_with_inputs_keyword_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match=r"Missing `values` argument. Received: keyword "
                     r"arguments \['axis', 'inputs'\]"):
    ops.concat(inputs=[1, 2], axis=1)


def test_add_n_without_inputs_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match='Missing `inputs` argument'):
    ops.add_n(values=[1, 2])


@pytest.mark.parametrize('method', ['concat', 'add_n'])
def test_all_vanished_list_vanishes_without_a_call(method):
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(function_dict={method: fake})
  assert getattr(ops, method)([None, VANISHED]) == VANISHED
  assert fake.calls == []


def test_add_n_sums_the_remaining_tensors(context):
  ops = configurable_ops.ConfigurableOps()
  total = ops.add_n([tf.constant([1.0, 2.0]), None, tf.constant([10.0, 20.0])])
  if context == GRAPH:
    with tf.compat.v1.Session() as sess:
      total = sess.run(total)
  # [1 + 10, 2 + 20]
  np.testing.assert_allclose(total, [11.0, 22.0])


def test_concat_of_real_tensors(context):
  ops = configurable_ops.ConfigurableOps()
  net = ops.concat([tf.zeros([1, 2, 2, 3]), VANISHED, tf.zeros([1, 2, 2, 4])], axis=3)
  assert net.shape.as_list() == [1, 2, 2, 7]  # 3 + 4 channels


@pytest.mark.parametrize('method', ['concat', 'add_n'])
def test_unrecognized_list_function_raises(method):
  ops = configurable_ops.ConfigurableOps(function_dict={method: None})
  with pytest.raises(ValueError, match=f'Unrecognized function name {method}'):
    getattr(ops, method)([1, 2])


# ----------------------------------------------------------------------------
# Scopes.
# ----------------------------------------------------------------------------


def test_nested_scopes(context):
  ops = configurable_ops.ConfigurableOps(
      parameterization={'Branch0/Conv_1x1/Conv2D': 13, 'Conv3_1x1/Conv2D': 77})
  image = _image()
  with tf.compat.v1.variable_scope('Branch0'):
    branch_0 = ops.conv2d(image, 64, [1, 1], scope='Conv_1x1')
  with tf.compat.v1.variable_scope('Branch1'):
    branch_1 = ops.conv2d(image, 32, [1, 1], scope='Conv_1x1')
  with tf.compat.v1.variable_scope('Branch2'):
    branch_2 = ops.conv2d(image, 50, [1, 1], scope='Conv_1x1')
  net = ops.concat([branch_0, branch_1, branch_2], axis=3)
  # 13 (listed) + 32 + 50 (unlisted, keep their defaults) = 95
  assert net.shape.as_list()[-1] == 95
  net = ops.conv2d(net, 10, [1, 1], scope='Conv3_1x1')
  assert net.shape.as_list()[-1] == 77
  assert ops.constructed_ops == {
      'Branch0/Conv_1x1/Conv2D': 13, 'Branch1/Conv_1x1/Conv2D': 32,
      'Branch2/Conv_1x1/Conv2D': 50, 'Conv3_1x1/Conv2D': 77}
  if context == GRAPH:
    assert _op_names() == set(ops.constructed_ops)


def test_name_scope_is_part_of_the_op_name(context):
  ops = configurable_ops.ConfigurableOps(parameterization={'outer/inner/c/Conv2D': 2})
  with tf.name_scope('outer'):
    with tf.name_scope('inner'):
      net = ops.conv2d(_image(), 5, 3, scope='c')
  assert net.shape.as_list()[-1] == 2


def test_default_scopes(context):
  ops = configurable_ops.ConfigurableOps()
  image = _image()
  ops.conv2d(image, 2, 3)
  ops.conv2d(image, 2, 3)
  ops.fully_connected(tf.zeros([1, 4]), 2)
  ops.separable_conv2d(image, 2, 3)
  ops.separable_conv2d(image, 2, 3)
  with tf.name_scope('outer'):
    ops.conv2d(image, 2, 3)
    ops.conv2d(image, 2, 3)
  expected = ['Conv/Conv2D', 'Conv_1/Conv2D', 'fully_connected/MatMul',
              'SeparableConv2d/separable_conv2d', 'SeparableConv2d_1/separable_conv2d',
              'outer/Conv/Conv2D', 'outer/Conv_1/Conv2D']
  assert list(ops.constructed_ops) == expected
  if context == GRAPH:
    # In a fresh graph the computed names are those of the built ops.
    assert set(expected) <= _op_names()


def test_default_scopes_of_layers_style_functions(context):
  ops = configurable_ops.ConfigurableOps(function_dict={
      'conv2d': configurable_ops.layers_conv2d,
      'fully_connected': configurable_ops.layers_dense,
      'separable_conv2d': configurable_ops.layers_separable_conv2d})
  image = _image()
  ops.conv2d(image, filters=2, kernel_size=3)
  ops.fully_connected(tf.zeros([1, 4]), units=2)
  ops.separable_conv2d(image, filters=2, kernel_size=3)
  ops.conv2d(image, filters=2, kernel_size=3)
  expected = ['conv2d/Conv2D', 'dense/MatMul', 'separable_conv2d/separable_conv2d',
              'conv2d_1/Conv2D']
  assert list(ops.constructed_ops) == expected
  if context == GRAPH:
    assert set(expected) <= _op_names()


def test_reuse_of_a_scope_shares_variables(caplog):
  with tf.Graph().as_default() as graph:
    ops = configurable_ops.ConfigurableOps(parameterization={'conv/Conv2D': 4})
    image = _image()
    first = ops.conv2d(image, 8, 3, scope='conv')
    with caplog.at_level(logging.WARNING):
      second = ops.conv2d(image, 8, 3, scope='conv', reuse=True)
    assert first.shape.as_list()[-1] == second.shape.as_list()[-1] == 4
    variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    assert sorted(v.op.name for v in variables) == ['conv/biases', 'conv/weights']
    assert 'constructed more than once' in caplog.text
    assert ops.constructed_ops == {'conv/Conv2D': 4}


# ----------------------------------------------------------------------------
# Vanishing and fallback rules.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('parameterization, expected_ops', [
    ({'conv1/Conv2D': 0}, {'conv1/Conv2D': 0}),
    ({'conv2/Conv2D': 0}, {'conv1/Conv2D': 4, 'conv2/Conv2D': 0}),
], ids=['first', 'second'])
def test_zero_anywhere_vanishes_the_tower(context, parameterization, expected_ops):
  ops = configurable_ops.ConfigurableOps(parameterization=parameterization)
  net = ops.conv2d(_image(), 4, 3, scope='conv1')
  net = ops.conv2d(net, 5, 3, scope='conv2')
  assert net == VANISHED
  # A vanished input returns before anything is recorded.
  assert ops.constructed_ops == expected_ops
  if context == GRAPH:
    assert _op_names() == {name for name, n in expected_ops.items() if n}


def test_strict_rule_raises_for_unlisted_op():
  ops = configurable_ops.ConfigurableOps(
      parameterization={'conv1/Conv2D': 3}, fallback_rule='strict')
  image = _image()
  assert ops.conv2d(image, 4, 3, scope='conv1').shape.as_list()[-1] == 3
  with pytest.raises(KeyError, match='op_name "conv2/Conv2D" not found in parameterization'):
    ops.conv2d(image, 4, 3, scope='conv2')


def test_zero_rule_vanishes_unlisted_ops_and_records_zero(context):
  ops = configurable_ops.ConfigurableOps(
      parameterization={'conv1/Conv2D': 3}, fallback_rule=configurable_ops.FallbackRule.zero)
  image = _image()
  assert ops.conv2d(image, 4, 3, scope='conv1').shape.as_list()[-1] == 3
  assert ops.conv2d(image, 4, 3, scope='conv2') == VANISHED
  assert ops.constructed_ops == {'conv1/Conv2D': 3, 'conv2/Conv2D': 0}


@pytest.mark.parametrize('method', ['avg_pool2d', 'max_pool2d', 'batch_norm'])
def test_pools_and_batch_norm_pass_through(context, method):
  ops = configurable_ops.ConfigurableOps()
  net = getattr(ops, method)(_image([1, 8, 8, 5]), **(
      {} if method == 'batch_norm' else {'kernel_size': 2}))
  # Pools: kernel 2, stride 2, VALID: 8 / 2 = 4.
  expected = [1, 8, 8, 5] if method == 'batch_norm' else [1, 4, 4, 5]
  assert net.shape.as_list() == expected
  assert getattr(ops, method)(VANISHED) == VANISHED
  assert getattr(ops, method)(inputs=None) == VANISHED
  assert ops.constructed_ops == {}


def test_pass_through_forwards_arguments_unchanged():
  fake = Recorder()
  ops = configurable_ops.ConfigurableOps(function_dict={'max_pool2d': fake})
  ops.max_pool2d('x', [3, 3], stride=1, scope='pool')
  assert fake.calls == [(('x', [3, 3]), {'stride': 1, 'scope': 'pool'})]


def test_pass_through_without_inputs_raises():
  ops = configurable_ops.ConfigurableOps()
  with pytest.raises(ValueError, match='Missing `inputs` argument'):
    ops.batch_norm(scale=True)


def test_parameterization_from_file(tmp_path, context):
  path = tmp_path / 'alive_100'
  path.write_text(structure_exporter.format_structure({'conv1/Conv2D': 3}))
  ops = configurable_ops.decorator_from_parameterization_file(
      str(path), fallback_rule='zero')
  assert isinstance(ops, configurable_ops.ConfigurableOps)
  assert ops.parameterization == {'conv1/Conv2D': 3}
  image = _image()
  assert ops.conv2d(image, 4, 3, scope='conv1').shape.as_list()[-1] == 3
  assert ops.conv2d(image, 4, 3, scope='conv2') == VANISHED


def test_parameterization_file_forwards_kwargs(tmp_path):
  path = tmp_path / 'structure.json'
  path.write_text(json.dumps({'c/Conv2D': 9}))
  fake = Recorder()
  ops = configurable_ops.decorator_from_parameterization_file(
      str(path), function_dict={'conv2d': fake})
  ops.conv2d('x', 2, scope='c')
  assert fake.calls == [(('x', 9), {'scope': 'c'})]


# ----------------------------------------------------------------------------
# Hijacking module functions.
# ----------------------------------------------------------------------------


def _fake_layers_module():
  module = types.ModuleType('fake_layers')
  module.conv2d = configurable_ops.conv2d
  module.batch_norm = configurable_ops.batch_norm
  module.add_n = tf.add_n
  module.relu = tf.nn.relu
  return module


def test_hijack_and_recover_module_functions():
  module = _fake_layers_module()
  ops = configurable_ops.ConfigurableOps()
  originals = configurable_ops.hijack_module_functions(ops, module)
  assert originals == {'conv2d': configurable_ops.conv2d,
                       'batch_norm': configurable_ops.batch_norm, 'add_n': tf.add_n}
  assert module.conv2d == ops.conv2d
  assert module.batch_norm == ops.batch_norm
  assert module.add_n == ops.add_n
  assert module.relu is tf.nn.relu
  configurable_ops.recover_module_functions(originals, module)
  assert module.conv2d is configurable_ops.conv2d
  assert module.batch_norm is configurable_ops.batch_norm
  assert module.add_n is tf.add_n


def _bottleneck(inputs, depth, depth_bottleneck, stride, layers, scope='bottleneck_v1'):
  """A ResNet v1 bottleneck unit written against a `layers` module (as slim's)."""
  bn = {'normalizer_fn': layers.batch_norm, 'normalizer_params': {'scale': True}}
  with tf.compat.v1.variable_scope(scope, 'bottleneck_v1', [inputs]):
    if depth == inputs.shape[-1]:
      shortcut = inputs
    else:
      shortcut = layers.conv2d(inputs, depth, [1, 1], stride=stride,
                               activation_fn=None, scope='shortcut', **bn)
    residual = layers.conv2d(inputs, depth_bottleneck, [1, 1], stride=1,
                             scope='conv1', **bn)
    residual = layers.conv2d(residual, depth_bottleneck, 3, stride=stride,
                             scope='conv2', **bn)
    residual = layers.conv2d(residual, depth, [1, 1], stride=1, activation_fn=None,
                             scope='conv3', **bn)
    return tf.nn.relu(layers.add_n([shortcut, residual]))


def test_hijacked_resnet_bottleneck(context):
  module = _fake_layers_module()
  ops = configurable_ops.ConfigurableOps(parameterization={
      'bottleneck_v1/conv1/Conv2D': 3, 'bottleneck_v1/conv2/Conv2D': 5})
  originals = configurable_ops.hijack_module_functions(ops, module)
  try:
    net = _bottleneck(_image([1, 8, 8, 4]), depth=16, depth_bottleneck=8, stride=2,
                      layers=module)
  finally:
    configurable_ops.recover_module_functions(originals, module)
  # SAME padding, stride 2: ceil(8 / 2) = 4; depth 16 is unlisted.
  assert net.shape.as_list() == [1, 4, 4, 16]
  assert ops.constructed_ops == {
      'bottleneck_v1/shortcut/Conv2D': 16, 'bottleneck_v1/conv1/Conv2D': 3,
      'bottleneck_v1/conv2/Conv2D': 5, 'bottleneck_v1/conv3/Conv2D': 16}
  if context == GRAPH:
    assert _op_names() == set(ops.constructed_ops)
    weights = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()
               if v.op.name.endswith('weights')}
    # conv2 reads conv1's 3 channels; conv3 reads conv2's 5.
    assert weights['bottleneck_v1/conv2/weights'] == [3, 3, 3, 5]
    assert weights['bottleneck_v1/conv3/weights'] == [1, 1, 5, 16]


# ----------------------------------------------------------------------------
# The layer functions themselves.
# ----------------------------------------------------------------------------


def test_conv2d_slim_naming_with_batch_norm():
  with tf.Graph().as_default() as graph:
    configurable_ops.conv2d(_image(), 4, 3, normalizer_fn=configurable_ops.batch_norm,
                            normalizer_params={'scale': True}, scope='c')
    names = {op.name: op.type for op in graph.get_operations()}
    assert names['c/Conv2D'] == 'Conv2D'
    assert names['c/BatchNorm/FusedBatchNormV3'] == 'FusedBatchNormV3'
    assert names['c/Relu'] == 'Relu'
    variables = sorted(v.op.name for v in tf.compat.v1.global_variables())
    # A normalizer replaces the biases.
    assert variables == ['c/BatchNorm/beta', 'c/BatchNorm/gamma', 'c/BatchNorm/moving_mean',
                         'c/BatchNorm/moving_variance', 'c/weights']
    assert len(graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)) == 2


def test_batch_norm_normalizes_and_updates_moving_averages():
  with tf.Graph().as_default():
    # Channel c takes the values c and c + 2 over the batch: mean c + 1, variance 1.
    values = np.stack([np.arange(3.0), np.arange(3.0) + 2]).reshape([2, 1, 1, 3])
    net = configurable_ops.batch_norm(tf.constant(values, tf.float32), decay=0.5,
                                      epsilon=0.0, updates_collections=None, scope='bn')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      out = sess.run(net)
      mean = sess.run(tf.compat.v1.global_variables('bn/moving_mean')[0])
  # (x - mean) / sqrt(var) = -1 then +1 for every channel.
  np.testing.assert_allclose(out.reshape([2, 3]), [[-1.0] * 3, [1.0] * 3], atol=1e-5)
  # moving_mean = 0 - (0 - (c + 1)) * (1 - 0.5) = (c + 1) / 2
  np.testing.assert_allclose(mean, [0.5, 1.0, 1.5], atol=1e-6)


def test_batch_norm_rejects_rank_3():
  with pytest.raises(ValueError, match=r'Received: inputs with shape \(1, 2, 3\)'):
    configurable_ops.batch_norm(tf.zeros([1, 2, 3]))


def test_fully_connected_function_rejects_rank_4():
  with pytest.raises(ValueError, match=r'Received: inputs with shape \(1, 8, 8, 3\)'):
    configurable_ops.fully_connected(_image(), 3)


def test_bad_kernel_size_raises():
  with pytest.raises(ValueError, match=r'Received: kernel_size=\(1, 2, 3\)'):
    configurable_ops.conv2d(_image(), 3, (1, 2, 3))


# ----------------------------------------------------------------------------
# Graph-mode round trip: learn, export, rebuild (issue 5).
# ----------------------------------------------------------------------------


def _net(ops, image):
  bn = {'normalizer_fn': ops.batch_norm, 'normalizer_params': {'scale': True}}
  net = ops.conv2d(image, 4, 3, scope='conv1', **bn)
  return ops.conv2d(net, 5, 3, scope='conv2', **bn)


def test_exported_structure_rebuilds_the_network(tmp_path):
  with tf.Graph().as_default():
    output = _net(configurable_ops.ConfigurableOps(), _image())
    regularizer = flop_regularizer.GammaFlopsRegularizer([output.op], gamma_threshold=0.5)
    exporter = structure_exporter.StructureExporter(regularizer.op_regularizer_manager)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      gamma1 = tf.compat.v1.global_variables('conv1/BatchNorm/gamma')[0]
      gamma2 = tf.compat.v1.global_variables('conv2/BatchNorm/gamma')[0]
      sess.run([gamma1.assign([1.0, 0.1, 1.0, 0.1]),
                gamma2.assign([1.0, 1.0, 1.0, 0.1, 0.1])])
      exporter.populate_tensor_values(sess.run(exporter.tensors))
    path = exporter.create_file_and_save_alive_counts(str(tmp_path), 7)
  # |gamma| > 0.5: conv1 keeps 2 of 4 channels, conv2 keeps 3 of 5.
  assert exporter.get_alive_counts() == {'conv1/Conv2D': 2, 'conv2/Conv2D': 3}

  with tf.Graph().as_default():
    ops = configurable_ops.decorator_from_parameterization_file(path)
    output = _net(ops, _image())
    assert output.shape.as_list() == [1, 8, 8, 3]
    assert tf.compat.v1.global_variables('conv2/weights')[0].shape.as_list() == [3, 3, 2, 3]
  assert ops.constructed_ops == {'conv1/Conv2D': 2, 'conv2/Conv2D': 3}


# ----------------------------------------------------------------------------
# tf-slim users (issue 14, item 7; skipped without tf_slim).
# ----------------------------------------------------------------------------


def test_arg_scope_reaches_configurable_ops_methods():
  slim = pytest.importorskip('tf_slim')
  with tf.Graph().as_default() as graph:
    ops = configurable_ops.ConfigurableOps(parameterization={'Conv/Conv2D': 5})
    # As with the original's contrib-decorated methods: the arg_scope names the
    # (bound) method and supplies its keyword arguments.
    with slim.arg_scope([ops.conv2d], kernel_size=[3, 3], activation_fn=None):
      net = ops.conv2d(_image(), 4)
    with slim.arg_scope([configurable_ops.ConfigurableOps.fully_connected],
                        activation_fn=tf.nn.sigmoid):
      fc = ops.fully_connected(tf.zeros([1, 6]), 2, scope='fc')
  assert net.shape.as_list() == [1, 8, 8, 5]  # the parameterization's 5, not 4
  assert graph.get_operation_by_name('Conv/Conv2D').inputs[1].shape.as_list() == [
      3, 3, 3, 5]
  assert net.op.type == 'BiasAdd'  # activation_fn=None: no Relu after the bias
  assert fc.op.type == 'Sigmoid'
  assert ops.constructed_ops == {'Conv/Conv2D': 5, 'fc/MatMul': 2}


def test_slim_layer_functions_get_slim_default_scopes():
  slim = pytest.importorskip('tf_slim')
  with tf.Graph().as_default() as graph:
    ops = configurable_ops.ConfigurableOps(
        parameterization={'Conv/Conv2D': 3, 'SeparableConv2d/separable_conv2d': 2,
                          'fully_connected/MatMul': 4},
        function_dict={'conv2d': slim.conv2d, 'separable_conv2d': slim.separable_conv2d,
                       'fully_connected': slim.fully_connected})
    net = ops.conv2d(_image(), 8, 3)
    net = ops.separable_conv2d(net, 8, 3)
    fc = ops.fully_connected(tf.zeros([1, 6]), 9)
  # tf-slim's defaults: 'Conv', 'SeparableConv2d', 'fully_connected'.
  assert ops.constructed_ops == {'Conv/Conv2D': 3, 'SeparableConv2d/separable_conv2d': 2,
                                 'fully_connected/MatMul': 4}
  assert net.shape.as_list()[-1] == 2 and fc.shape.as_list() == [1, 4]
  op_names = {op.name for op in graph.get_operations()}
  assert {'Conv/Conv2D', 'SeparableConv2d/separable_conv2d',
          'fully_connected/MatMul'} <= op_names


def test_hijack_slim_decorated_functions_with_arg_scope():
  slim = pytest.importorskip('tf_slim')
  module = types.SimpleNamespace(conv2d=slim.conv2d, fully_connected=slim.fully_connected)
  ops = configurable_ops.ConfigurableOps(parameterization={'block/conv/Conv2D': 1},
                                         function_dict={'conv2d': slim.conv2d})
  with tf.Graph().as_default() as graph:
    originals = configurable_ops.hijack_module_functions(ops, module)
    try:
      # Model code scoping both the hijacked name and slim's own function.
      with slim.arg_scope([module.conv2d], kernel_size=[1, 1]), \
           slim.arg_scope([slim.conv2d], activation_fn=None):
        with tf.name_scope('block'):
          net = module.conv2d(_image(), 7, scope='conv')
    finally:
      configurable_ops.recover_module_functions(originals, module)
  assert module.conv2d is slim.conv2d and module.fully_connected is slim.fully_connected
  assert net.shape.as_list() == [1, 8, 8, 1]
  assert graph.get_operation_by_name('block/conv/Conv2D').inputs[1].shape.as_list() == [
      1, 1, 3, 1]
  assert net.op.type == 'BiasAdd'  # slim's own arg_scope reached slim.conv2d
  assert ops.constructed_ops == {'block/conv/Conv2D': 1}


# Run in a subprocess: disable_v2_behavior() is process-global.
_V1_BEHAVIOR_SCRIPT = r'''
import json, types
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_v2_behavior()
from morph_net.tools import configurable_ops as co
from morph_net.tools import test_module

image = tf.compat.v1.placeholder(tf.float32, [1, 10, 10, 3])
result = {'v1_dimension': isinstance(image.shape[-1], tf.compat.v1.Dimension)}
# Keras configurable layers.
constructed = {}
conv = co.ConfigurableConv2D(filters=4, kernel_size=3, name='first',
                             parameterization={'first/Conv2D': 2},
                             constructed_ops=constructed)(image)
sep = co.ConfigurableSeparableConv2D(filters=4, kernel_size=3,
                                     constructed_ops=constructed)(conv)
dense = co.ConfigurableDense(units=5, constructed_ops=constructed)(
    tf.ones([1, 2, 6]))
result['layers'] = constructed
# hijack_keras_module.
hijacked, originals = co.hijack_keras_module({'conv/Conv2D': 1}, test_module.layers)
try:
  simple = test_module.build_simple_keras_model(image)
finally:
  co.recover_module_functions(originals, test_module.layers)
result['hijacked_keras'] = dict(hijacked)
# hijack_module_functions on the slim-named raw-op functions.
ops = co.ConfigurableOps(parameterization={'c/Conv2D': 3, 'fc/MatMul': 2})
module = types.SimpleNamespace(conv2d=co.conv2d, fully_connected=co.fully_connected)
originals = co.hijack_module_functions(ops, module)
try:
  net = module.conv2d(image, 8, 3, scope='c')
  fc = module.fully_connected(tf.reshape(net, [1, -1]), 4, scope='fc')
finally:
  co.recover_module_functions(originals, module)
result['hijacked_functions'] = dict(ops.constructed_ops)
with tf.compat.v1.Session() as sess:
  sess.run(tf.compat.v1.global_variables_initializer())
  values = sess.run([conv, sep, dense, simple, net, fc],
                    {image: np.ones([1, 10, 10, 3], np.float32)})
result['shapes'] = [list(v.shape) for v in values]
print('RESULT ' + json.dumps(result))
'''


def test_keras_layers_and_hijacking_under_disable_v2_behavior():
  # Issue 14, item 7: TF1-style programs (v1 TensorShapes of Dimension
  # objects, v1 variables) build the configurable layers and hijack modules.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [_REPO_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  completed = subprocess.run([sys.executable, '-c', _V1_BEHAVIOR_SCRIPT], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
  lines = [line for line in completed.stdout.splitlines() if line.startswith('RESULT ')]
  assert completed.returncode == 0 and lines, completed.stderr[-3000:]
  result = json.loads(lines[-1][len('RESULT '):])
  assert result['v1_dimension']
  assert result['layers'] == {'first/Conv2D': 2,
                              'configurable_separable_conv2d/separable_conv2d': 4,
                              'configurable_dense/Tensordot/MatMul': 5}
  assert result['hijacked_keras'] == {'conv/Conv2D': 1}
  assert result['hijacked_functions'] == {'c/Conv2D': 3, 'fc/MatMul': 2}
  # 10x10 -> VALID 3x3: 8x8 (2 filters) -> VALID 3x3 separable: 6x6 (4); dense on
  # [1, 2, 6]: [1, 2, 5]; hijacked simple model: 8x8 with 1 filter; raw SAME conv
  # keeps 10x10 with 3 filters; fc: 2 outputs.
  assert result['shapes'] == [[1, 8, 8, 2], [1, 6, 6, 4], [1, 2, 5], [1, 8, 8, 1],
                              [1, 10, 10, 3], [1, 2]]
