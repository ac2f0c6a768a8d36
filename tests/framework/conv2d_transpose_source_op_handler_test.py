"""Tests for conv2d_transpose_source_op_handler (spec 1.6)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import conv2d_transpose_source_op_handler
from morph_net.framework import conv_source_op_handler
from morph_net.framework import group_lasso_base_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.op_regularizers import group_lasso_regularizer
from tests import graph_modes

_THRESHOLD = 1.0
# Filter [kh, kw, out, in] = [1, 1, 3, 2]: output channel j has weights
# (a_j, 0) over the reduced axes (kh, kw, in), n = 2, so RMS = |a_j| / sqrt(2)
# and mean |w| = |a_j| / 2.
_OUT_VALUES = np.array([3.0, 0.0, -1.0], np.float32)
_RMS = np.abs(_OUT_VALUES) / np.sqrt(2.0)  # [2.12132, 0, 0.70711]
_L1 = np.abs(_OUT_VALUES) / 2.0  # [1.5, 0, 0.5]


def _filter():
  weights = np.zeros([1, 1, 3, 2], np.float32)
  weights[0, 0, :, 0] = _OUT_VALUES
  return weights


def _net_fn(image, var):
  """conv1 (2) -> relu1 -> conv2d_transpose (3, stride 2) -> relu2."""
  with tf.name_scope('conv1'):
    x = tf.nn.conv2d(image, var('conv1_kernel', np.ones([1, 1, 3, 2])), 1, 'SAME')
  with tf.name_scope('relu1'):
    x = tf.nn.relu(x)
  with tf.name_scope('deconv'):
    x = tf.nn.conv2d_transpose(x, var('deconv_filter', _filter()), [1, 10, 12, 3],
                               strides=2, padding='SAME')
  with tf.name_scope('relu2'):
    return tf.nn.relu(x)


def _build(mode):
  built = graph_modes.build(mode, _net_fn, [1, 5, 6, 3])
  return built, built.op('deconv/conv2d_transpose')


def _handler(l1_fraction=0.0):
  return conv2d_transpose_source_op_handler.Conv2DTransposeSourceOpHandler(
      _THRESHOLD, l1_fraction)


def test_properties():
  handler = _handler()
  assert isinstance(handler, group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler)
  assert handler.is_source_op is True
  assert handler.is_passthrough is False


def test_op_type_and_reduce_dims(mode):
  _, deconv = _build(mode)
  assert deconv.type == 'Conv2DBackpropInput'
  assert _handler()._reduce_dims(deconv) == (0, 1, 3)


@pytest.mark.parametrize('start, size', [(0, 3), (0, 2), (1, 2), (2, 1)])
@pytest.mark.parametrize('l1_fraction', [0.0, 0.5])
def test_create_regularizer(mode, start, size, l1_fraction):
  built, deconv = _build(mode)
  reg = _handler(l1_fraction).create_regularizer(
      orm.OpSlice(deconv, orm.Slice(start, size)))
  assert isinstance(reg, group_lasso_regularizer.GroupLassoRegularizer)
  regularization, alive = built.evaluate(
      lambda: (reg.regularization_vector, reg.alive_vector))
  # norm = f * mean|w| + (1 - f) * RMS; e.g. channel 0 with f = 0.5:
  # 0.5 * 1.5 + 0.5 * 2.12132 = 1.81066.
  expected = (l1_fraction * _L1 + (1.0 - l1_fraction) * _RMS)[start:start + size]
  np.testing.assert_allclose(regularization, expected, rtol=1e-6)
  np.testing.assert_array_equal(alive, expected > _THRESHOLD)


def test_assign_grouping(mode):
  built, deconv = _build(mode)
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_group_lasso_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  relu2 = built.op('relu2/Relu')
  manager.create_op_group_for_op_slice(manager.get_op_slices(relu2)[0])
  with mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy, \
      mock.patch.object(manager, 'process_ops') as process_spy:
    _handler().assign_grouping(deconv, manager)
  slice_spy.assert_not_called()
  # Input 0 (output shape) is a constant and input 1 the filter: only the
  # activation's producer is queued.
  process_spy.assert_called_once_with([built.op('relu1/Relu')])
  deconv_slice = orm.OpSlice(deconv, orm.Slice(0, 3))
  group = manager.get_op_group(deconv_slice)
  assert group.source_op_slices[0] == deconv_slice
  assert manager.get_op_group(manager.get_op_slices(relu2)[0]) is group


def test_end_to_end(mode):
  built, deconv = _build(mode)
  handler_dict = op_handlers.get_group_lasso_op_handler_dict()
  # As in the GroupLasso network regularizers: Conv2D is a source too.
  handler_dict['Conv2D'] = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  handler_dict['Conv2DBackpropInput'] = _handler()
  manager = orm.OpRegularizerManager([built.output.op], handler_dict)
  reg = manager.get_regularizer(built.op('relu2/Relu'))
  assert reg is manager.get_regularizer(deconv)
  conv1_reg = manager.get_regularizer(built.op('relu1/Relu'))
  assert conv1_reg is manager.get_regularizer(built.op('conv1/Conv2D'))
  deconv_values, conv1_values = built.evaluate(
      lambda: (reg.regularization_vector, conv1_reg.regularization_vector))
  np.testing.assert_allclose(deconv_values, _RMS, rtol=1e-6)
  # conv1's all-ones kernel: RMS 1 for both filters (its own group).
  np.testing.assert_allclose(conv1_values, [1.0, 1.0], rtol=1e-6)
