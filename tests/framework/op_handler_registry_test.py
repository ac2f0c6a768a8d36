"""Tests for OpHandlerDict: registration and the unknown-op-type policy."""

from __future__ import annotations

import copy
import pickle
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import errors
from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.framework import op_handler_registry
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes


class _RecordingHandler(grouping_op_handler.GroupingOpHandler):
  """A grouping handler that records the ops it is asked to group."""

  def __init__(self):
    super().__init__()
    self.ops = []

  def assign_grouping(self, op, op_reg_manager):
    self.ops.append(op.name)
    super().assign_grouping(op, op_reg_manager)


def _handlers(unknown_op_policy='group'):
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.unknown_op_policy = unknown_op_policy
  handlers.register('FusedBatchNormV3',
                    batch_norm_source_op_handler.BatchNormSourceOpHandler(0.1))
  return handlers


def _cumsum_net(image, var):
  """conv -> BN -> cumsum -> cumsum (an op type without a built-in handler)."""
  with tf.name_scope('conv'):
    x = tf.nn.conv2d(image, var('w', np.ones([1, 1, 3, 4])), 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var('gamma', np.ones(4)), var('beta', np.zeros(4)), is_training=True)
  x = tf.math.cumsum(x, axis=1, name='cumsum_1')
  return tf.math.cumsum(x, axis=1, name='cumsum_2')


# ---- register ------------------------------------------------------------------


def test_register_and_lookup():
  handlers = op_handler_registry.OpHandlerDict()
  leaf = leaf_op_handler.LeafOpHandler()
  assert handlers.register('MyOp', leaf) is handlers
  assert handlers['MyOp'] is leaf
  assert handlers.unknown_op_types == []


def test_register_errors():
  handlers = op_handler_registry.OpHandlerDict()
  with pytest.raises(TypeError, match=r'op_type must be an op type string such as '
                     r'"Conv2D". Received: op_type=3 of type int'):
    handlers.register(3, leaf_op_handler.LeafOpHandler())
  with pytest.raises(ValueError, match="op_type must be a non-empty op type string"):
    handlers.register('', leaf_op_handler.LeafOpHandler())
  with pytest.raises(TypeError, match=r'handler must be an op handler instance, not a '
                     r'class. Received: handler=LeafOpHandler; pass e.g. LeafOpHandler\(\)'):
    handlers.register('MyOp', leaf_op_handler.LeafOpHandler)
  with pytest.raises(TypeError, match=r'handler must be an OpHandler .* Received: '
                     r"handler='leaf' of type str"):
    handlers.register('MyOp', 'leaf')
  assert 'MyOp' not in handlers


def test_initial_handlers_and_policy_errors():
  leaf = leaf_op_handler.LeafOpHandler()
  handlers = op_handler_registry.OpHandlerDict({'MyOp': leaf}, unknown_op_policy='error')
  assert handlers['MyOp'] is leaf
  assert dict(handlers) == {'MyOp': leaf}
  with pytest.raises(ValueError, match=r"unknown_op_policy must be one of \('group', "
                     r"'error'\). Received: unknown_op_policy='ignore'"):
    op_handler_registry.OpHandlerDict(unknown_op_policy='ignore')


def test_copy_keeps_policy_and_is_independent():
  handlers = op_handler_registry.OpHandlerDict(unknown_op_policy='error')
  handlers.register('MyOp', leaf_op_handler.LeafOpHandler())
  for copied in (handlers.copy(), copy.copy(handlers), copy.deepcopy(handlers),
                 pickle.loads(pickle.dumps(handlers))):
    assert isinstance(copied, op_handler_registry.OpHandlerDict)
    assert copied.unknown_op_policy == 'error'
    assert copied.default_factory is grouping_op_handler.GroupingOpHandler
    assert set(copied) == {'MyOp'}
    copied.register('Other', leaf_op_handler.LeafOpHandler())
    assert 'Other' not in handlers
  assert handlers.copy()['MyOp'] is handlers['MyOp']


# ---- unknown op types ----------------------------------------------------------


def test_unknown_type_warns_once_per_type():
  handlers = op_handler_registry.OpHandlerDict()
  with mock.patch.object(op_handler_registry.logging, 'warning') as warning:
    first = handlers['Cumsum']
    assert handlers['Cumsum'] is first
    assert warning.call_count == 1
    message = warning.call_args[0][0] % warning.call_args[0][1:]
    assert "'Cumsum'" in message
    assert 'treated as channel-preserving' in message
    assert "register('Cumsum', LeafOpHandler())" in message
    handlers['Tile']
    assert warning.call_count == 2
  assert type(first) is grouping_op_handler.GroupingOpHandler
  assert handlers.unknown_op_types == ['Cumsum', 'Tile']


def test_unknown_type_error_policy():
  handlers = op_handler_registry.OpHandlerDict(unknown_op_policy='error')
  with pytest.raises(KeyError, match="No op handler is registered for op type 'Cumsum'"):
    handlers['Cumsum']
  assert 'Cumsum' not in handlers
  assert handlers.unknown_op_types == ['Cumsum']
  assert handlers.get('Cumsum') is None


def test_manager_groups_unknown_type_and_warns_once(mode):
  built = graph_modes.build(mode, _cumsum_net, [1, 4, 4, 3])
  handlers = _handlers()
  with mock.patch.object(op_handler_registry.logging, 'warning') as warning:
    manager = orm.OpRegularizerManager([built.op('cumsum_2')], handlers)
  # Two Cumsum ops, one warning naming the type.
  cumsum_warnings = [call for call in warning.call_args_list if 'Cumsum' in call[0]]
  assert len(cumsum_warnings) == 1
  assert handlers.unknown_op_types == ['Cumsum']
  # Treated as channel-preserving: grouped with the BN.
  group = manager.get_op_group(manager.get_op_slices(built.op('conv/FusedBatchNormV3'))[0])
  assert manager.get_op_group(manager.get_op_slices(built.op('cumsum_2'))[0]) is group


def test_manager_error_policy_names_the_op(mode):
  built = graph_modes.build(mode, _cumsum_net, [1, 4, 4, 3])
  with pytest.raises(errors.UnsupportedOpError,
                     match=r"Received: op='cumsum_\d' of type 'Cumsum'. To support it, "
                     r'register a handler') as info:
    orm.OpRegularizerManager([built.op('cumsum_2')], _handlers('error'))
  assert info.value.op_type == 'Cumsum'
  assert info.value.op_name in ('cumsum_1', 'cumsum_2')


def test_error_policy_ignores_ops_that_are_only_crawled(mode):
  def net(image, var):
    with tf.name_scope('conv'):
      x = tf.nn.conv2d(image, var('w', np.ones([1, 1, 3, 4])), 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('gamma', np.ones(4)), var('beta', np.zeros(4)), is_training=True)
    # The target shape is computed by Shape -> StridedSlice -> Pack; the
    # Reshape (a leaf) never groups with it.
    return tf.reshape(x, [tf.shape(x)[0], -1], name='flatten')

  built = graph_modes.build(mode, net, [1, 4, 4, 3])
  pack = built.op('flatten').inputs[1].op
  assert pack.type == 'Pack'
  handlers = _handlers('error')
  manager = orm.OpRegularizerManager([built.op('flatten')], handlers)
  assert pack not in manager.ops
  assert handlers.unknown_op_types == []


def test_user_handler_for_custom_type_is_used(mode):
  built = graph_modes.build(mode, _cumsum_net, [1, 4, 4, 3])
  handlers = _handlers('error')
  recording = _RecordingHandler()
  handlers.register('Cumsum', recording)
  manager = orm.OpRegularizerManager([built.op('cumsum_2')], handlers)
  assert set(recording.ops) == {'cumsum_1', 'cumsum_2'}
  assert handlers.unknown_op_types == []
  assert manager.get_regularizer(built.op('cumsum_2')) is not None


def test_user_handler_replaces_built_in(mode):
  def net(image, var):
    with tf.name_scope('conv'):
      x = tf.nn.conv2d(image, var('w', np.ones([1, 1, 3, 4])), 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('gamma', np.ones(4)), var('beta', np.zeros(4)), is_training=True)
    return tf.nn.relu(x, name='relu')

  built = graph_modes.build(mode, net, [1, 4, 4, 3])
  handlers = _handlers()
  recording = _RecordingHandler()
  handlers.register('Relu', recording)
  orm.OpRegularizerManager([built.op('relu')], handlers)
  assert 'relu' in recording.ops

  # A leaf Relu is not passthrough: it does not join the BN's group.
  handlers = _handlers()
  handlers.register('Relu', leaf_op_handler.LeafOpHandler())
  manager = orm.OpRegularizerManager([built.op('relu')], handlers)
  bn_group = manager.get_op_group(
      manager.get_op_slices(built.op('conv/FusedBatchNormV3'))[0])
  assert manager.get_op_group(manager.get_op_slices(built.op('relu'))[0]) is not bn_group
