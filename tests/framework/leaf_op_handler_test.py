"""Tests for LeafOpHandler (spec 1.6 and 8.2)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from morph_net.framework import leaf_op_handler
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes
from tests.framework.op_handler_util_test import FakeManager


def _net(image, var):
  del var
  image = tf.identity(image, name='input')
  leaf = tf.identity(image, name='leaf')
  relu = tf.nn.relu(leaf, name='relu')
  tf.nn.relu6(leaf, name='relu6')
  return relu


@pytest.fixture
def net(mode):
  built = graph_modes.build(mode, _net, [1, 4, 4, 3])
  return (built.graph.get_operations(), built.op('input'), built.op('leaf'),
          built.op('relu'), built.op('relu6'))


def _slice(op):
  return orm.OpSlice(op, orm.Slice(0, 3))


def test_properties():
  handler = leaf_op_handler.LeafOpHandler()
  assert not handler.is_source_op
  assert not handler.is_passthrough
  with pytest.raises(NotImplementedError, match='Not a source op.'):
    handler.create_regularizer(None)


def test_nothing_grouped_groups_alone_and_queues_outputs(net):
  ops, _, leaf, relu, relu6 = net
  manager = FakeManager(ops)
  leaf_op_handler.LeafOpHandler().assign_grouping(leaf, manager)
  # Own group (not a source: the fake manager knows no source op), outputs
  # queued, inputs never looked at.
  assert manager.calls == [
      ('create_op_group_for_op_slice', _slice(leaf), False),
      ('process_ops', [relu, relu6])]


def test_own_group_takes_source_flag_from_op_type(net):
  ops, _, leaf, relu, relu6 = net
  manager = FakeManager(ops, sources=[leaf])
  leaf_op_handler.LeafOpHandler().assign_grouping(leaf, manager)
  assert manager.calls[0] == ('create_op_group_for_op_slice', _slice(leaf), True)


def test_outputs_grouped_groups_with_them(net):
  ops, _, leaf, relu, relu6 = net
  manager = FakeManager(ops)
  manager.set_group([relu])
  manager.set_group([relu6])
  leaf_op_handler.LeafOpHandler().assign_grouping(leaf, manager)
  assert manager.calls == [
      ('group_op_slices', [_slice(leaf), _slice(relu), _slice(relu6)])]


def test_one_output_pending(net):
  ops, _, leaf, relu, relu6 = net
  manager = FakeManager(ops)
  manager.set_group([relu])
  leaf_op_handler.LeafOpHandler().assign_grouping(leaf, manager)
  assert manager.calls == [
      ('create_op_group_for_op_slice', _slice(leaf), False),
      ('process_ops', [relu6])]


def test_non_passthrough_outputs_are_not_grouped_with(net):
  ops, _, leaf, relu, relu6 = net
  manager = FakeManager(ops, non_passthrough=[relu6])
  manager.set_group([relu])
  manager.set_group([relu6])
  leaf_op_handler.LeafOpHandler().assign_grouping(leaf, manager)
  assert manager.calls == [('group_op_slices', [_slice(leaf), _slice(relu)])]
