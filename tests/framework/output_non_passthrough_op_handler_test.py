"""Tests for OutputNonPassthroughOpHandler (spec 1.6 and 8.2)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import output_non_passthrough_op_handler as onp
from tests import graph_modes
from tests.framework.op_handler_util_test import FakeManager


def _net(image, var):
  """conv1 (5) -> BN -> ReLU -> conv2 (5) -> BN -> ReLU."""
  x = tf.identity(image, name='input')
  for i in (1, 2):
    with tf.name_scope(f'conv{i}'):
      kernel = var(f'w{i}', np.ones([3, 3, 3 if i == 1 else 5, 5]))
      x = tf.nn.conv2d(x, kernel, 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var(f'gamma{i}', np.arange(5) * i), var(f'beta{i}', np.zeros(5)),
          is_training=True)
      x = tf.nn.relu(x)
  return x


def _slice(op):
  return orm.OpSlice(op, orm.Slice(0, 5))


def test_properties():
  handler = onp.OutputNonPassthroughOpHandler()
  assert not handler.is_source_op
  assert not handler.is_passthrough
  with pytest.raises(NotImplementedError, match='Not a source op.'):
    handler.create_regularizer(None)


def test_groups_with_outputs_and_queues_inputs(mode):
  built = graph_modes.build(mode, _net, [1, 7, 7, 3])
  conv2, bn2 = built.op('conv2/Conv2D'), built.op('conv2/FusedBatchNormV3')
  relu1 = built.op('conv1/Relu')
  manager = FakeManager(built.graph.get_operations())
  onp.OutputNonPassthroughOpHandler().assign_grouping(conv2, manager)
  # Grouped with the (still ungrouped) BN output; the BN is queued as an
  # ungrouped output and relu1 as an ungrouped input. No slicing.
  assert manager.calls == [('group_op_slices', [_slice(conv2), _slice(bn2)]),
                           ('process_ops', [bn2, relu1])]


def test_grouped_neighbours(mode):
  built = graph_modes.build(mode, _net, [1, 7, 7, 3])
  conv2, bn2 = built.op('conv2/Conv2D'), built.op('conv2/FusedBatchNormV3')
  relu1 = built.op('conv1/Relu')
  manager = FakeManager(built.graph.get_operations())
  manager.set_group([bn2])
  manager.set_group([relu1])
  onp.OutputNonPassthroughOpHandler().assign_grouping(conv2, manager)
  # Never grouped with the input, even when grouped.
  assert manager.calls == [('group_op_slices', [_slice(conv2), _slice(bn2)]),
                           ('process_ops', [])]


def test_conv_channels_do_not_propagate_to_inputs(mode):
  built = graph_modes.build(mode, _net, [1, 7, 7, 3])
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.register('FusedBatchNormV3',
                    batch_norm_source_op_handler.BatchNormSourceOpHandler(0.5))
  manager = orm.OpRegularizerManager([built.op('conv2/Relu')], handlers)
  group1 = manager.get_op_group(manager.get_op_slices(built.op('conv1/Relu'))[0])
  group2 = manager.get_op_group(manager.get_op_slices(built.op('conv2/Conv2D'))[0])
  assert group1 is not group2
  assert group2.source_op_slices == [_slice(built.op('conv2/FusedBatchNormV3'))]
  # conv2's regularizer is |gamma2| = |2 * [0, 1, 2, 3, 4]|.
  reg = manager.get_regularizer(built.op('conv2/Conv2D'))
  np.testing.assert_allclose(built.evaluate(lambda: reg.regularization_vector),
                             [0, 2, 4, 6, 8])
