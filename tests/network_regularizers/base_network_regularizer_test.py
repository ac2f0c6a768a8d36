"""Tests for the shared plumbing of the network regularizers and its options."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.network_regularizers import activation_regularizer
from morph_net.network_regularizers import base_network_regularizer
from morph_net.network_regularizers import compiled_cost
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer

# (class, its positional arguments after output_boundary, name, cost name).
CLASSES = [
    (flop_regularizer.GammaFlopsRegularizer, (0.5,), 'GammaFlops', 'FLOPs'),
    (flop_regularizer.GroupLassoFlopsRegularizer, (0.1,), 'GroupLassoFlops',
     'FLOPs'),
    (model_size_regularizer.GammaModelSizeRegularizer, (0.5,),
     'GammaModelSize', 'ModelSize'),
    (model_size_regularizer.GroupLassoModelSizeRegularizer, (0.1,),
     'GroupLassoModelSize', 'ModelSize'),
    (latency_regularizer.GammaLatencyRegularizer, (0.5, 'V100'), 'Latency',
     'V100 Latency'),
    (latency_regularizer.GroupLassoLatencyRegularizer, (0.1, 'P100'),
     'Latency', 'P100 Latency'),
    (activation_regularizer.GammaActivationRegularizer, (0.5,),
     'GammaActivationCount', 'Activations'),
    (activation_regularizer.GroupLassoActivationRegularizer, (0.1,),
     'GroupLassoActivationCount', 'Activations'),
    (flop_regularizer.LogisticSigmoidFlopsRegularizer, (),
     'LogisticSigmoidFlops', 'FLOPs'),
    (model_size_regularizer.LogisticSigmoidModelSizeRegularizer, (),
     'LogisticSigmoidModelSize', 'ModelSize'),
    (latency_regularizer.LogisticSigmoidLatencyRegularizer, ('T4',),
     'LogisticSigmoidLatency', 'T4 Latency'),
]


@pytest.mark.parametrize('cls', [c[0] for c in CLASSES],
                         ids=[c[0].__name__ for c in CLASSES])
def test_every_class_shares_the_base_and_takes_the_keyword_options(cls):
  assert issubclass(cls, base_network_regularizer.BaseNetworkRegularizer)
  parameters = inspect.signature(cls.__init__).parameters
  for name, default in (('extra_op_handlers', None),
                        ('unknown_op_policy', 'group')):
    assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters[name].default == default
  for method in ('get_cost', 'get_regularization_term'):
    assert getattr(cls, method) is getattr(
        base_network_regularizer.BaseNetworkRegularizer, method)


def _graph(reverse=False):
  """image 8x8x3 -> conv1 (4) -> bn -> [reverse] -> relu -> conv2 (5)."""
  graph = tf.Graph()
  with graph.as_default():
    image = tf.zeros([1, 8, 8, 3])
    x = tf.nn.conv2d(image, tf.ones([3, 3, 3, 4]), 1, 'SAME', name='conv1')
    gamma = tf.compat.v1.get_variable(
        'gamma', initializer=tf.constant([1.0, 0.0, 1.0, 0.0]),
        use_resource=True)
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, tf.zeros([4]),
                                               is_training=True)
    if reverse:
      x = tf.reverse(x, [-1], name='reverse')
    x = tf.nn.relu(x, name='relu')
    out = tf.nn.conv2d(x, tf.ones([1, 1, 4, 5]), 1, 'SAME', name='conv2')
  return graph, out


def _run(graph, fn):
  with graph.as_default(), tf.compat.v1.Session() as sess:
    tensor = fn()
    sess.run(tf.compat.v1.global_variables_initializer())
    return float(sess.run(tensor))


def test_extra_op_handlers_are_checked_before_the_built_ins():
  # conv1: 2 * 8*8 * 3*3 * 3 * A_out; conv2: 2 * 8*8 * 1*1 * A_in * 5.
  graph, out = _graph()
  with graph.as_default():
    default = flop_regularizer.GammaFlopsRegularizer([out.op], 0.5)
    # A leaf Relu cuts conv2 off from the gammas: conv2 keeps all 4 inputs.
    leaf = flop_regularizer.GammaFlopsRegularizer(
        [out.op], 0.5,
        extra_op_handlers={'Relu': leaf_op_handler.LeafOpHandler()})
  # 2 of the 4 gammas are alive.
  assert _run(graph, default.get_cost) == 2 * 64 * 9 * 3 * 2 + 2 * 64 * 2 * 5
  assert _run(graph, leaf.get_cost) == 2 * 64 * 9 * 3 * 2 + 2 * 64 * 4 * 5


def test_unknown_op_policy_error_rejects_an_unknown_op_type():
  graph, out = _graph(reverse=True)
  with graph.as_default():
    with pytest.raises(errors.UnsupportedOpError,
                       match="'ReverseV2'.*extra_op_handlers"):
      flop_regularizer.GammaFlopsRegularizer([out.op], 0.5,
                                             unknown_op_policy='error')
    # Registered by the user, the op type is known: no error.
    reg = flop_regularizer.GammaFlopsRegularizer(
        [out.op], 0.5, unknown_op_policy='error',
        extra_op_handlers={'ReverseV2': leaf_op_handler.LeafOpHandler()})
  # The reversal ends the channel chain: conv2 is costed with its 4 inputs.
  assert _run(graph, reg.get_cost) == 2 * 64 * 9 * 3 * 2 + 2 * 64 * 4 * 5


def test_bad_options_are_rejected_with_what_was_received():
  graph, out = _graph()
  with graph.as_default():
    with pytest.raises(ValueError, match=r"unknown_op_policy must be one of.*"
                       r"Received: unknown_op_policy='raise'"):
      flop_regularizer.GammaFlopsRegularizer([out.op], 0.5,
                                             unknown_op_policy='raise')
    with pytest.raises(TypeError, match=r'extra_op_handlers must be a mapping.*'
                       r'Received: extra_op_handlers=\['):
      flop_regularizer.GammaFlopsRegularizer(
          [out.op], 0.5, extra_op_handlers=[leaf_op_handler.LeafOpHandler()])
    with pytest.raises(TypeError, match='handler must be an op handler instance'):
      flop_regularizer.GammaFlopsRegularizer(
          [out.op], 0.5,
          extra_op_handlers={'Relu': grouping_op_handler.GroupingOpHandler})


class _ReverseChannels(keras.layers.Layer):

  def call(self, x):
    return keras.ops.flip(x, axis=-1)


def test_from_keras_model_takes_the_options():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv1')(inputs)
  x = keras.layers.BatchNormalization(name='bn')(x)
  x = _ReverseChannels(name='reverse')(x)
  model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name='conv2')(x))
  with pytest.raises(errors.UnsupportedOpError, match="'reverse'.*ReverseV2"):
    model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(
        model, gamma_threshold=0.5, unknown_op_policy='error')
  reg = model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(
      model, gamma_threshold=0.5, unknown_op_policy='error',
      extra_op_handlers={'ReverseV2': leaf_op_handler.LeafOpHandler()})
  model.get_layer('bn').gamma.assign(np.array([1.0, 0.0, 0.0, 1.0], np.float32))
  # Weights: conv1 3*3 * 3 * 2 alive; conv2 1*1 * 4 (leaf: all inputs) * 5.
  assert float(reg.get_cost()) == 9 * 3 * 2 + 4 * 5
  assert isinstance(reg._calculator, compiled_cost.CompiledCostCalculator)


@pytest.mark.parametrize('cls, args, name, cost_name', CLASSES,
                         ids=[c[0].__name__ for c in CLASSES])
def test_names_are_unchanged(cls, args, name, cost_name):
  graph = tf.Graph()
  with graph.as_default():
    x = tf.nn.conv2d(tf.zeros([1, 4, 4, 3]), tf.ones([1, 1, 3, 2]), 1, 'SAME')
    reg = cls([x.op], *args)
  assert reg.name == name
  assert reg.cost_name == cost_name
  assert reg.op_regularizer_manager is reg._manager


def test_autograph_does_not_convert_the_evaluation(monkeypatch):
  # In a user's tf.function (autograph on, as in a custom train step) the
  # evaluation code runs as plain Python: between the user's (converted)
  # function and the calculator, no frame is an AutoGraph-converted
  # get_cost / get_regularization_term (converting the evaluation cost
  # seconds of tracing on DenseNet201).
  inputs = keras.Input((6, 6, 3))
  x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
  model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=0.5)
  frames = []
  original = compiled_cost.CompiledCostCalculator._get_cost_or_regularization_term

  def spy(self, is_regularization, ops):
    frames.extend((frame.filename, frame.function) for frame in inspect.stack())
    return original(self, is_regularization, ops)

  monkeypatch.setattr(compiled_cost.CompiledCostCalculator,
                      '_get_cost_or_regularization_term', spy)
  tf.function(lambda: (reg.get_cost(), reg.get_regularization_term()))()
  names = {function for _, function in frames}
  assert 'get_cost' in names and 'get_regularization_term' in names
  assert not [(f, n) for f, n in frames if '__autograph_generated' in f and (
      'get_cost' in n or 'regularization_term' in n)]
