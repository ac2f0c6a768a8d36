"""Tests for GroupingOpHandler (spec 1.6 and 8.2)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes
from tests.framework.op_handler_util_test import FakeManager
from tests.framework.op_handler_util_test import conv_bn_relu_ops


@pytest.fixture
def net(mode):
  """(manager ops, conv, bn, gamma read, beta read, relu) of conv -> BN(5) -> ReLU."""
  built, conv, bn, gamma, beta, relu = conv_bn_relu_ops(mode)
  return built.graph.get_operations(), conv, bn, gamma, beta, relu


def _slice(op):
  # Every op of the test network has 5 channels.
  return orm.OpSlice(op, orm.Slice(0, 5))


def test_properties():
  handler = grouping_op_handler.GroupingOpHandler()
  assert not handler.is_source_op
  assert handler.is_passthrough
  with pytest.raises(NotImplementedError, match='Not a source op.'):
    handler.create_regularizer(None)


def test_nothing_grouped_queues_neighbours_then_self(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  # Outputs first, then inputs; the BN itself is retried last; no grouping.
  assert manager.calls == [('process_ops', [relu, conv, gamma, beta]),
                           ('process_ops_last', [bn])]


def test_all_grouped_separately_merges_outputs_then_inputs(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  for op in (conv, gamma, beta, bn, relu):
    manager.set_group([op])
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  assert manager.calls == [
      ('group_op_slices', [_slice(bn), _slice(relu)]),
      ('group_op_slices', [_slice(bn), _slice(conv), _slice(gamma), _slice(beta)]),
  ]


def test_outputs_grouped_but_one_input_not(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  for op in (conv, gamma, bn, relu):
    manager.set_group([op])
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  assert manager.calls == [('process_ops', [beta]), ('process_ops_last', [bn])]


def test_already_in_one_group_makes_no_calls(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  manager.set_group([conv, gamma, beta, bn, relu])
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  assert manager.calls == []


def test_non_passthrough_output_is_not_grouped(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops, non_passthrough=[relu])
  for op in (conv, gamma, beta, bn, relu):
    manager.set_group([op])
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  assert manager.calls == [
      ('group_op_slices', [_slice(bn), _slice(conv), _slice(gamma), _slice(beta)])]


def test_grouping_indices_restrict_inputs(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  for op in (conv, gamma, beta, bn, relu):
    manager.set_group([op])
  grouping_op_handler.GroupingOpHandler([0]).assign_grouping(bn, manager)
  # Only input 0 (the conv) is grouped with.
  assert manager.calls == [
      ('group_op_slices', [_slice(bn), _slice(relu)]),
      ('group_op_slices', [_slice(bn), _slice(conv)])]


def test_aligns_slices_of_neighbours(net):
  ops, conv, bn, gamma, beta, relu = net
  manager = FakeManager(ops)
  for op in (conv, gamma, beta, bn, relu):
    manager.set_group([op])
  manager.set_slices(conv, [2, 3])
  manager.set_slices(relu, [1, 4])
  grouping_op_handler.GroupingOpHandler().assign_grouping(bn, manager)
  # Boundaries {2, 5} and {1, 5} align to [1, 1, 3]: inputs, op and outputs
  # are resliced. The re-set slices of conv and relu have no group, so they are
  # queued and the BN retried last.
  assert manager.calls == [
      ('slice_op', conv, [1, 1, 3]), ('slice_op', gamma, [1, 1, 3]),
      ('slice_op', beta, [1, 1, 3]), ('slice_op', bn, [1, 1, 3]),
      ('slice_op', relu, [1, 1, 3]),
      ('process_ops', [relu, conv]), ('process_ops_last', [bn])]


def _broadcast_net(image, var):
  del var
  image = tf.identity(image, name='input')
  one = tf.reduce_mean(image, axis=3, keepdims=True, name='one_channel')
  ten = tf.identity(tf.zeros([1, 7, 7, 10]), name='ten_channels')
  return tf.add(one, ten, name='add')


def test_is_broadcast(mode):
  built = graph_modes.build(mode, _broadcast_net, [1, 7, 7, 3])
  one, ten = built.op('one_channel'), built.op('ten_channels')
  manager = FakeManager(built.graph.get_operations())
  handler = grouping_op_handler.GroupingOpHandler()
  assert not handler._is_broadcast(ten, manager)  # Size 10.
  assert not handler._is_broadcast(one, manager)  # Size 1, ungrouped.
  manager.set_group([one])
  assert handler._is_broadcast(one, manager)  # Size 1, grouped.


def test_grouped_broadcast_input_is_not_waited_for(mode):
  built = graph_modes.build(mode, _broadcast_net, [1, 7, 7, 3])
  one, ten, add = built.op('one_channel'), built.op('ten_channels'), built.op('add')
  manager = FakeManager(built.graph.get_operations())
  manager.set_group([one])
  manager.set_group([ten])
  # The add and its consumers (the tf.function output identity in traced mode).
  manager.set_group([add] + add.outputs[0].consumers())
  grouping_op_handler.GroupingOpHandler().assign_grouping(add, manager)
  # The size-1 input is broadcast: the add only groups with the 10-channel
  # input, and nothing is queued.
  assert manager.calls == [('group_op_slices', [orm.OpSlice(add, orm.Slice(0, 10)),
                                                orm.OpSlice(ten, orm.Slice(0, 10))])]


def test_ungrouped_broadcast_input_is_waited_for(mode):
  built = graph_modes.build(mode, _broadcast_net, [1, 7, 7, 3])
  one, ten, add = built.op('one_channel'), built.op('ten_channels'), built.op('add')
  manager = FakeManager(built.graph.get_operations())
  manager.set_group([ten])
  manager.set_group([add] + add.outputs[0].consumers())
  grouping_op_handler.GroupingOpHandler().assign_grouping(add, manager)
  assert manager.calls == [('process_ops', [one]), ('process_ops_last', [add])]
