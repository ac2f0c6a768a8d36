"""Tests for depth_to_space_op_handler (spec 1.6 and 8.2)."""

from __future__ import annotations

from unittest import mock

import pytest
import tensorflow as tf

from morph_net.framework import depth_to_space_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes


def _net_fn(image, var):
  """identity (4 channels) -> depth_to_space(2) -> identity (1 channel)."""
  del var
  id1 = tf.identity(image, name='id1')
  dts = tf.nn.depth_to_space(id1, 2, name='dts')
  return tf.identity(dts, name='id2')


def _setup(mode):
  built = graph_modes.build(mode, _net_fn, [1, 3, 5, 4])
  # A real manager that knows every op and has grouped nothing yet.
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  return built, manager


def test_properties():
  handler = depth_to_space_op_handler.DepthToSpaceOpHandler()
  assert handler.is_source_op is False
  assert handler.is_passthrough is False
  with pytest.raises(NotImplementedError, match='Not a source op'):
    handler.create_regularizer(None)


def test_not_in_default_dicts():
  # The default dictionaries keep the original's OutputNonPassthroughOpHandler.
  for handler_dict in (op_handlers.get_gamma_op_handler_dict(),
                       op_handlers.get_group_lasso_op_handler_dict()):
    assert not isinstance(handler_dict['DepthToSpace'],
                          depth_to_space_op_handler.DepthToSpaceOpHandler)


def test_ungrouped_input_is_only_queued(mode):
  built, manager = _setup(mode)
  dts = built.op('dts')
  with mock.patch.object(manager, 'process_ops') as process_spy, \
      mock.patch.object(manager, 'process_ops_last') as last_spy, \
      mock.patch.object(manager, 'group_op_slices') as group_spy, \
      mock.patch.object(manager, 'slice_op') as slice_spy:
    depth_to_space_op_handler.DepthToSpaceOpHandler().assign_grouping(dts, manager)
  process_spy.assert_called_once_with([built.op('id1')])
  last_spy.assert_not_called()
  group_spy.assert_not_called()
  slice_spy.assert_not_called()


def test_grouped_input_groups_block_of_four_channels(mode):
  built, manager = _setup(mode)
  id1, dts, id2 = built.op('id1'), built.op('dts'), built.op('id2')
  manager.create_op_group_for_op_slice(manager.get_op_slices(id1)[0])
  with mock.patch.object(manager, 'process_ops') as process_spy, \
      mock.patch.object(manager, 'group_op_slices',
                        wraps=manager.group_op_slices) as group_spy:
    depth_to_space_op_handler.DepthToSpaceOpHandler().assign_grouping(dts, manager)

  # B = 2: output channel 0 takes input channels [0, B*B) = [0, 4).
  input_slices = [orm.OpSlice(id1, orm.Slice(i, 1)) for i in range(4)]
  dts_slice = orm.OpSlice(dts, orm.Slice(0, 1))
  assert group_spy.call_args_list[-1] == mock.call(input_slices + [dts_slice])
  group = manager.get_op_group(dts_slice)
  assert all(manager.get_op_group(s) is group for s in input_slices)
  # id2 is not grouped with (the op is not passthrough), only queued.
  assert manager.get_op_group(manager.get_op_slices(id2)[0]) is None
  process_spy.assert_called_once_with([id2])


def test_contiguous_blocks_for_several_output_channels(mode):
  """8 channels, B = 2: output channel i <- input channels [4i, 4i + 4)."""
  def net_fn(image, var):
    del var
    id1 = tf.identity(image, name='id1')
    return tf.nn.depth_to_space(id1, 2, name='dts')

  built = graph_modes.build(mode, net_fn, [1, 3, 5, 8])
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  id1, dts = built.op('id1'), built.op('dts')
  manager.create_op_group_for_op_slice(manager.get_op_slices(id1)[0])
  depth_to_space_op_handler.DepthToSpaceOpHandler().assign_grouping(dts, manager)
  for i in range(2):
    group = manager.get_op_group(orm.OpSlice(dts, orm.Slice(i, 1)))
    for channel in range(8):
      in_block = 4 * i <= channel < 4 * i + 4
      assert (manager.get_op_group(
          orm.OpSlice(id1, orm.Slice(channel, 1))) is group) == in_block
