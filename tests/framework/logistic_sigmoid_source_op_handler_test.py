"""Tests for logistic_sigmoid_source_op_handler (spec 1.6, 8.2 and 9.13).

Network: image -> conv (5 filters) -> relu -> gate, built in both graph modes.
Gate logits are +-20: the logistic noise is bounded by log(1e6) = 13.8, so a
training sample sigmoid((+-20 + eps) / 0.001) is exactly 1 or 0 and every
expected mask below is exact.
"""

from __future__ import annotations

import gc
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import logistic_sigmoid_source_op_handler as ls_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.op_regularizers import prob_gating_regularizer
from morph_net.probabilistic_gating import activation_gating
from tests import graph_modes

LOGITS = np.array([20.0, -20.0, 20.0, 20.0, -20.0], np.float32)
MASK = [1.0, 0.0, 1.0, 1.0, 0.0]
IMAGE_SHAPE = [1, 6, 7, 3]
GATE_OP = 'gate/LogisticSigmoidGating'


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _net(is_training=True, logits=LOGITS, **gate_kwargs):
  """conv (5) -> relu -> gate; the gate layer is created once per net."""
  layers = {}

  def net_fn(image, var):
    with tf.name_scope('conv'):
      x = tf.nn.conv2d(image, var('kernel', np.ones([3, 3, 3, 5])), 1, 'SAME')
    x = tf.nn.relu(x, name='relu')
    if 'gate' not in layers:
      gate_kwargs.setdefault('keep_first_channel_alive', False)
      layers['gate'] = activation_gating.LogisticSigmoidGating(
          log_odds_init=lambda shape, dtype=None: tf.constant(logits),
          name='gate', **gate_kwargs)
    return layers['gate'](x, is_training=is_training)

  return net_fn, layers


def _manager(built, handler):
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers['Identity'] = ls_handler.GatingOpDispatcher(
      handler, fallback_handler=handlers['Identity'])
  return orm.OpRegularizerManager([built.output.op], handlers)


def test_properties():
  handler = ls_handler.LogisticSigmoidSourceOpHandler()
  assert isinstance(handler, grouping_op_handler.GroupingOpHandler)
  assert handler.is_source_op is True
  assert handler.is_passthrough is True


@pytest.mark.parametrize('is_training', [True, False])
def test_gating_op_is_the_only_source(mode, is_training):
  net_fn, _ = _net(is_training)
  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  manager = _manager(built, ls_handler.LogisticSigmoidSourceOpHandler())
  sources = [op.name for op in manager.ops if manager.is_source_op(op)]
  assert sources == [GATE_OP]
  # The conv, relu and the gated output share the gate's regularizer.
  reg = manager.get_regularizer(built.op(GATE_OP))
  assert isinstance(reg, prob_gating_regularizer.ProbGatingRegularizer)
  assert manager.get_regularizer(built.op('conv/Conv2D')) is reg
  assert manager.get_regularizer(built.output.op) is reg


def test_recognition_does_not_rely_on_names(mode):
  def net_fn(image, var):
    x = tf.identity(tf.nn.relu(image), name=ls_handler.GATING_OP_NAME)
    return tf.nn.relu(x, name='out')

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  op = built.op(ls_handler.GATING_OP_NAME)
  assert (op.type, op.name) == ('Identity', 'LogisticSigmoidGating')
  assert not ls_handler.is_gating_op(op)
  assert ls_handler.get_gating_op_record(op) is None
  dispatcher = ls_handler.GatingOpDispatcher(
      ls_handler.LogisticSigmoidSourceOpHandler())
  assert isinstance(dispatcher.handler_for_op(op),
                    grouping_op_handler.GroupingOpHandler)
  assert not dispatcher.handler_for_op(op).is_source_op
  with pytest.raises(ValueError, match='is not a LogisticSigmoidGating op'):
    ls_handler.LogisticSigmoidSourceOpHandler().create_regularizer(
        orm.OpSlice(op, orm.Slice(0, 3)))


def test_dispatcher_delegates(mode):
  net_fn, _ = _net()
  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  source = mock.Mock()
  fallback = mock.Mock()
  dispatcher = ls_handler.GatingOpDispatcher(source, fallback)
  gate = built.op(GATE_OP)
  assert dispatcher.handler_for_op(gate) is source
  assert (dispatcher.is_source_op, dispatcher.is_passthrough) == (False, True)
  dispatcher.assign_grouping(gate, 'manager')
  source.assign_grouping.assert_called_once_with(gate, 'manager')
  op_slice = orm.OpSlice(gate, orm.Slice(0, 5))
  assert dispatcher.create_regularizer(op_slice) is source.create_regularizer.return_value
  fallback.assign_grouping.assert_not_called()


def test_assign_grouping_creates_own_source_group_first(mode):
  net_fn, _ = _net()
  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  gate = built.op(GATE_OP)
  gate_slice = orm.OpSlice(gate, orm.Slice(0, 5))
  with mock.patch.object(manager, 'create_op_group_for_op_slice',
                         wraps=manager.create_op_group_for_op_slice) as create_spy, \
      mock.patch.object(manager, 'process_ops'), \
      mock.patch.object(manager, 'process_ops_last'):
    ls_handler.LogisticSigmoidSourceOpHandler().assign_grouping(gate, manager)
  create_spy.assert_called_once_with(gate_slice)
  group = manager.get_op_group(gate_slice)
  assert group.source_op_slices == [gate_slice]


@pytest.mark.parametrize('regularize_on_mask, expected', [
    (True, MASK),
    (False, _sigmoid(LOGITS)),
])
@pytest.mark.parametrize('start, size', [(0, 5), (1, 3)])
def test_create_regularizer(mode, regularize_on_mask, expected, start, size):
  net_fn, _ = _net()
  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  handler = ls_handler.LogisticSigmoidSourceOpHandler(
      regularize_on_mask=regularize_on_mask, alive_threshold=0.5)
  reg = handler.create_regularizer(
      orm.OpSlice(built.op(GATE_OP), orm.Slice(start, size)))
  reg_vector, alive = built.evaluate(lambda: [reg.regularization_vector,
                                              reg.alive_vector])
  np.testing.assert_allclose(reg_vector, expected[start:start + size], rtol=1e-6)
  # Alive from the mask (default): 1 or 0 against 0.5.
  np.testing.assert_array_equal(alive, np.array(MASK[start:start + size]) >= 0.5)


def test_graph_mode_reads_the_op_output():
  net_fn, _ = _net(logits=np.zeros(5, np.float32), temperature=1.0)
  built = graph_modes.build(graph_modes.GRAPH, net_fn, IMAGE_SHAPE)
  gate = built.op(GATE_OP)
  reg = ls_handler.LogisticSigmoidSourceOpHandler().create_regularizer(
      orm.OpSlice(gate, orm.Slice(0, 5)))
  # The original semantics: the regularization vector is the sampled mask of
  # this graph (the op's output), evaluated in the same run.
  reg_vector, mask = built.evaluate(lambda: [reg.regularization_vector, gate.outputs[0]])
  np.testing.assert_array_equal(reg_vector, mask)
  assert 0.0 < mask.min() < mask.max() < 1.0


def test_traced_mode_resamples_once_per_graph():
  net_fn, layers = _net(logits=np.zeros(5, np.float32), temperature=1.0)
  built = graph_modes.build(graph_modes.TRACED, net_fn, IMAGE_SHAPE)
  reg = ls_handler.LogisticSigmoidSourceOpHandler(alive_threshold=0.5).create_regularizer(
      orm.OpSlice(built.op(GATE_OP), orm.Slice(0, 5)))
  assert reg._logits is layers['gate'].logits_variable

  @tf.function
  def read():
    return reg.regularization_vector, reg.alive_vector

  # One sample per tf.function graph: the alive vector is the regularization
  # vector (the mask) thresholded at 0.5.
  for _ in range(3):
    mask, alive = read()
    np.testing.assert_array_equal(alive.numpy(), mask.numpy() >= 0.5)
  # A fresh sample per call: sigmoid(eps) for logits 0 and temperature 1.
  first, second = read()[0].numpy(), read()[0].numpy()
  assert not np.array_equal(first, second)


def test_traced_mode_keeps_the_layer_alive_with_its_trace():
  # Regression: layers created during tracing and held only by the caller's
  # closure were garbage-collected at random, so building the regularizer
  # failed depending on GC timing. The registry now keeps them with the trace.
  layer_holder = {}

  @tf.function
  def fn(x):
    if 'gate' not in layer_holder:
      layer_holder['gate'] = activation_gating.LogisticSigmoidGating(name='gate')
    return layer_holder['gate'](x, is_training=True)

  graph = fn.get_concrete_function(tf.TensorSpec([1, 2, 2, 3])).graph
  gate = graph.get_operation_by_name(GATE_OP)
  layer_holder.clear()
  del fn
  gc.collect()
  regularizer = ls_handler.LogisticSigmoidSourceOpHandler().create_regularizer(
      orm.OpSlice(gate, orm.Slice(0, 3)))
  assert regularizer.regularization_vector.shape == (3,)


def test_legacy_op_type_uses_inputs_and_outputs():
  graph = tf.Graph()
  with graph.as_default():
    logits = tf.constant([2.0, -2.0])
    mask = tf.constant([1.0, 0.0])
  op = mock.Mock(type=ls_handler.LEGACY_GATING_OP_TYPE, graph=graph,
                 inputs=[logits], outputs=[mask])
  op.name = 'legacy/LogisticSigmoidGating'
  assert ls_handler.is_gating_op(op)
  reg = ls_handler.LogisticSigmoidSourceOpHandler(
      regularize_on_mask=False).create_regularizer(orm.OpSlice(op, orm.Slice(0, 2)))
  with graph.as_default(), tf.compat.v1.Session() as sess:
    reg_vector, alive = sess.run([reg.regularization_vector, reg.alive_vector])
  np.testing.assert_allclose(reg_vector, _sigmoid([2.0, -2.0]), rtol=1e-6)
  np.testing.assert_array_equal(alive, [True, False])


def test_register_gating_op_errors():
  with pytest.raises(TypeError, match='needs the tf.Operation of a graph'):
    ls_handler.register_gating_op(tf.constant([1.0]), tf.constant([1.0]))
  graph = tf.Graph()
  with graph.as_default():
    op = tf.identity(tf.constant([1.0])).op
  with pytest.raises(TypeError, match="logits must be a tensor of the gating op's graph"):
    ls_handler.register_gating_op(op, tf.constant([1.0]))


def test_first_channel_kept_by_the_layer_may_count_as_dead(mode):
  # Spec 9.13: keep_first_channel_alive acts after the gating op, so the
  # regularizer sees the raw mask (all 0 for logits -20) while the layer's
  # output keeps channel 0.
  net_fn, _ = _net(logits=np.full(5, -20.0, np.float32),
                   keep_first_channel_alive=True)
  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE, image_value=1.0)
  reg = ls_handler.LogisticSigmoidSourceOpHandler().create_regularizer(
      orm.OpSlice(built.op(GATE_OP), orm.Slice(0, 5)))
  np.testing.assert_array_equal(built.evaluate(lambda: reg.alive_vector), [False] * 5)
  if mode == graph_modes.GRAPH:  # Trace outputs cannot be evaluated eagerly.
    output = built.evaluate(lambda: built.output)
    # relu(conv of a ones image with ones kernels) > 0; mask [1, 0, 0, 0, 0].
    assert (output[..., 0] > 0).all()
    np.testing.assert_array_equal(output[..., 1:], 0.0)

