"""Tests for batch_norm_source_op_handler (spec 1.6 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.op_regularizers import gamma_l1_regularizer
from tests import graph_modes

_THRESHOLD = 0.1
_GAMMA = np.array([0.5, -1.5, 0.05, 2.0, -0.3], np.float32)


def _net_fn(image, var):
  """conv (5) -> bn -> relu."""
  with tf.name_scope('conv'):
    x = tf.nn.conv2d(image, var('kernel', np.ones([3, 3, 3, 5])), 1, 'SAME')
  with tf.name_scope('bn'):
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var('gamma', _GAMMA), var('beta', np.zeros(5)), is_training=True)
  with tf.name_scope('relu'):
    return tf.nn.relu(x)


def _handler():
  return batch_norm_source_op_handler.BatchNormSourceOpHandler(_THRESHOLD)


def test_properties():
  handler = _handler()
  assert isinstance(handler, grouping_op_handler.GroupingOpHandler)
  assert handler.is_source_op is True
  assert handler.is_passthrough is True


def test_assign_grouping_creates_own_source_group_first(mode):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  manager._op_handler_dict['FusedBatchNormV3'] = _handler()
  bn = built.op('bn/FusedBatchNormV3')
  bn_slice = orm.OpSlice(bn, orm.Slice(0, 5))

  calls = mock.Mock()
  with mock.patch.object(manager, 'create_op_group_for_op_slice',
                         wraps=manager.create_op_group_for_op_slice) as create_spy, \
      mock.patch.object(manager, 'process_ops') as process_spy, \
      mock.patch.object(manager, 'process_ops_last') as last_spy:
    calls.attach_mock(create_spy, 'create')
    calls.attach_mock(process_spy, 'process_ops')
    calls.attach_mock(last_spy, 'process_ops_last')
    _handler().assign_grouping(bn, manager)

  group = manager.get_op_group(bn_slice)
  assert group.op_slices == [bn_slice]
  assert group.source_op_slices == [bn_slice]
  # Own group first; then, with nothing else grouped, outputs then inputs
  # (conv, gamma read, beta read) are queued and the BN re-queued last.
  gamma_read = bn.inputs[1].op
  beta_read = bn.inputs[2].op
  assert calls.mock_calls == [
      mock.call.create(bn_slice),
      mock.call.process_ops([built.op('relu/Relu'), built.op('conv/Conv2D'),
                             gamma_read, beta_read]),
      mock.call.process_ops_last([bn]),
  ]


def test_assign_grouping_keeps_existing_group(mode):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  bn = built.op('bn/FusedBatchNormV3')
  manager.create_op_group_for_op_slice(manager.get_op_slices(bn)[0])
  with mock.patch.object(manager, 'create_op_group_for_op_slice') as create_spy, \
      mock.patch.object(manager, 'process_ops'), \
      mock.patch.object(manager, 'process_ops_last'):
    _handler().assign_grouping(bn, manager)
  create_spy.assert_not_called()


def test_end_to_end_groups_bn_with_conv_and_relu(mode):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  handler_dict = op_handlers.get_gamma_op_handler_dict()
  handler_dict['FusedBatchNormV3'] = _handler()
  manager = orm.OpRegularizerManager([built.output.op], handler_dict)
  bn = built.op('bn/FusedBatchNormV3')
  group = manager.get_op_group(manager.get_op_slices(bn)[0])
  for name in ('conv/Conv2D', 'relu/Relu'):
    assert manager.get_op_group(manager.get_op_slices(built.op(name))[0]) is group
  assert manager.get_regularizer(built.op('conv/Conv2D')) is manager.get_regularizer(bn)


@pytest.mark.parametrize('start, size', [(0, 5), (0, 3), (2, 3), (4, 1)])
def test_create_regularizer(mode, start, size):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  bn = built.op('bn/FusedBatchNormV3')
  reg = _handler().create_regularizer(orm.OpSlice(bn, orm.Slice(start, size)))
  assert isinstance(reg, gamma_l1_regularizer.GammaL1Regularizer)
  regularization, alive = built.evaluate(
      lambda: (reg.regularization_vector, reg.alive_vector))
  # |gamma[start:start + size]|, alive iff > 0.1.
  expected = np.abs(_GAMMA)[start:start + size]
  np.testing.assert_allclose(regularization, expected)
  np.testing.assert_array_equal(alive, expected > _THRESHOLD)


@pytest.mark.parametrize('start, size', [(0, 5), (1, 3)])
def test_create_regularizer_reads_the_variable_lazily(start, size):
  built = graph_modes.build(graph_modes.TRACED, _net_fn, [1, 7, 9, 3])
  bn = built.op('bn/FusedBatchNormV3')
  reg = _handler().create_regularizer(orm.OpSlice(bn, orm.Slice(start, size)))
  new_gamma = np.array([0.0, 3.0, -0.2, 0.01, 7.0], np.float32)
  built.variables['gamma'].assign(new_gamma)
  # Read eagerly, after the assignment: the new values, not the traced ones.
  np.testing.assert_allclose(
      reg.regularization_vector.numpy(), np.abs(new_gamma)[start:start + size])
  np.testing.assert_array_equal(
      reg.alive_vector.numpy(), (np.abs(new_gamma) > _THRESHOLD)[start:start + size])

  @tf.function
  def read():
    return reg.regularization_vector

  np.testing.assert_allclose(read().numpy(), np.abs(new_gamma)[start:start + size])


def test_create_regularizer_with_non_variable_gamma_in_graph():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 4, 4, 3])
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, tf.constant([0.2, -0.05, 1.0]), tf.zeros([3]), is_training=True)
    reg = _handler().create_regularizer(orm.OpSlice(y.op, orm.Slice(1, 2)))
    with tf.compat.v1.Session() as sess:
      regularization, alive = sess.run([reg.regularization_vector, reg.alive_vector])
  np.testing.assert_allclose(regularization, [0.05, 1.0])
  np.testing.assert_array_equal(alive, [False, True])


def test_get_gamma_hook_for_subclasses(mode):
  """Subclasses (e.g. decomposed batch norms) say where the gamma is."""
  other_gamma = np.array([3.0, -0.01, 0.2, 0.0, 1.0], np.float32)

  def net_fn(image, var):
    other = var('other_gamma', other_gamma)
    return _net_fn(image, var), tf.identity(other, name='other')

  class _OtherGammaHandler(batch_norm_source_op_handler.BatchNormSourceOpHandler):

    def _get_gamma(self, op):
      return op.graph.get_operation_by_name('other').inputs[0]

  built = graph_modes.build(mode, net_fn, [1, 7, 9, 3])
  bn = built.op('bn/FusedBatchNormV3')
  handler = _OtherGammaHandler(_THRESHOLD)
  assert handler._get_gamma(bn) is not bn.inputs[1]
  for start, size in ((0, 5), (1, 3)):
    reg = handler.create_regularizer(orm.OpSlice(bn, orm.Slice(start, size)))
    regularization = built.evaluate(lambda reg=reg: reg.regularization_vector)
    np.testing.assert_allclose(regularization, np.abs(other_gamma)[start:start + size])
