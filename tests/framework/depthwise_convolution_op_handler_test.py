"""Tests for depthwise_convolution_op_handler (spec 1.6, 8.1 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import depthwise_convolution_op_handler
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes

_GAMMA_THRESHOLD = 0.1
# Gammas of the BN after conv1 (5 channels).
_GAMMA1 = np.array([0.5, -1.5, 0.05, 2.0, -0.3], np.float32)


def _separable_net(depth_multiplier, pointwise_filters=None):
  """conv1 (5) -> bn1 -> relu1 -> dwise (m) [-> pointwise -> bn2] -> relu2."""
  def net_fn(image, var):
    with tf.name_scope('conv1'):
      x = tf.nn.conv2d(image, var('conv1_kernel', np.ones([3, 3, 3, 5])), 1, 'SAME')
    with tf.name_scope('bn1'):
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('bn1_gamma', _GAMMA1), var('bn1_beta', np.zeros(5)),
          is_training=True)
    with tf.name_scope('relu1'):
      x = tf.nn.relu(x)
    with tf.name_scope('dwise'):
      x = tf.nn.depthwise_conv2d(
          x, var('dwise_kernel', np.ones([3, 3, 5, depth_multiplier])),
          [1, 1, 1, 1], 'SAME')
    if pointwise_filters:
      with tf.name_scope('pointwise'):
        x = tf.nn.conv2d(
            x, var('pointwise_kernel',
                   np.ones([1, 1, 5 * depth_multiplier, pointwise_filters])),
            1, 'SAME')
      with tf.name_scope('bn2'):
        x, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, var('bn2_gamma', np.ones(pointwise_filters)),
            var('bn2_beta', np.zeros(pointwise_filters)), is_training=True)
    with tf.name_scope('relu2'):
      return tf.nn.relu(x)
  return net_fn


def _gamma_dict():
  handler_dict = op_handlers.get_gamma_op_handler_dict()
  handler_dict['FusedBatchNormV3'] = (
      batch_norm_source_op_handler.BatchNormSourceOpHandler(_GAMMA_THRESHOLD))
  return handler_dict


def _fresh_manager(built):
  """A real manager that knows every op of `built` and has grouped nothing."""
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  return manager


def _group_whole(manager, op):
  for op_slice in manager.get_op_slices(op):
    manager.create_op_group_for_op_slice(op_slice)


def _channel_group(manager, op, channel):
  """The OpGroup of the slice of `op` holding `channel`."""
  for op_slice in manager.get_op_slices(op):
    start = op_slice.slice.start_index
    if start <= channel < start + op_slice.slice.size:
      return manager.get_op_group(op_slice)
  raise AssertionError(f'channel {channel} not in {op.name}')


def test_is_a_grouping_op_handler():
  handler = depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler()
  assert isinstance(handler, grouping_op_handler.GroupingOpHandler)
  assert handler.is_source_op is False
  assert handler.is_passthrough is True
  with pytest.raises(NotImplementedError, match='Not a source op'):
    handler.create_regularizer(None)


def test_rejects_other_op_types(mode):
  built = graph_modes.build(mode, _separable_net(2), [1, 9, 9, 3])
  manager = _fresh_manager(built)
  handler = depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler()
  with pytest.raises(ValueError, match="only handles DepthwiseConv2dNative.*'Relu'"):
    handler.assign_grouping(built.op('relu1/Relu'), manager)


class TestAssignGroupingWithSpiedManager:
  """Handler-level: 5-filter conv -> separable (m) -> conv (spec 8.2)."""

  def _setup(self, mode, depth_multiplier):
    built = graph_modes.build(
        mode, _separable_net(depth_multiplier, pointwise_filters=4), [1, 9, 9, 3])
    manager = _fresh_manager(built)
    relu1 = built.op('relu1/Relu')
    dwise = built.op('dwise/depthwise')
    pointwise = built.op('pointwise/Conv2D')
    _group_whole(manager, relu1)
    _group_whole(manager, pointwise)
    return manager, relu1, dwise

  def test_multiplier_2_groups_channel_k_with_input_k_div_2(self, mode):
    manager, relu1, dwise = self._setup(mode, 2)
    with mock.patch.object(manager, 'group_op_slices',
                           wraps=manager.group_op_slices) as group_spy, \
        mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy, \
        mock.patch.object(manager, 'process_ops') as process_spy:
      depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler(
      ).assign_grouping(dwise, manager)

    # Input resliced to C = 5 ones, the op to C * m = 10 ones.
    assert slice_spy.call_args_list[0] == mock.call(relu1, [1] * 5)
    assert mock.call(dwise, [1] * 10) in slice_spy.call_args_list
    relu1_slices = [orm.OpSlice(relu1, orm.Slice(i, 1)) for i in range(5)]
    dwise_slices = [orm.OpSlice(dwise, orm.Slice(i, 1)) for i in range(10)]
    # Output channel i groups with input channel i // 2.
    group_spy.assert_has_calls(
        [mock.call([dwise_slices[i], relu1_slices[i // 2]]) for i in range(10)])
    for i in range(10):
      assert manager.get_op_group(dwise_slices[i]) is manager.get_op_group(
          relu1_slices[i // 2])
    for i in range(0, 10, 2):
      assert manager.get_op_group(dwise_slices[i]) is not manager.get_op_group(
          dwise_slices[(i + 2) % 10])
    process_spy.assert_not_called()

  def test_multiplier_1_is_a_single_grouping_call(self, mode):
    manager, relu1, dwise = self._setup(mode, 1)
    with mock.patch.object(manager, 'group_op_slices',
                           wraps=manager.group_op_slices) as group_spy, \
        mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy:
      depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler(
      ).assign_grouping(dwise, manager)
    slice_spy.assert_not_called()
    group_spy.assert_called_once_with(
        [orm.OpSlice(dwise, orm.Slice(0, 5)), orm.OpSlice(relu1, orm.Slice(0, 5))])

  def test_pending_input_is_queued(self, mode):
    built = graph_modes.build(
        mode, _separable_net(2, pointwise_filters=4), [1, 9, 9, 3])
    manager = _fresh_manager(built)
    dwise = built.op('dwise/depthwise')
    with mock.patch.object(manager, 'group_op_slices') as group_spy, \
        mock.patch.object(manager, 'process_ops') as process_spy, \
        mock.patch.object(manager, 'process_ops_last') as last_spy:
      depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler(
      ).assign_grouping(dwise, manager)
    group_spy.assert_not_called()
    # Pending outputs (the pointwise conv) first, then the input; self last.
    process_spy.assert_called_once_with(
        [built.op('pointwise/Conv2D'), built.op('relu1/Relu')])
    last_spy.assert_called_once_with([dwise])


class TestEndToEnd:
  """Separable conv after a 5-filter conv (spec 8.1)."""

  @pytest.mark.parametrize('pointwise_filters', [8, None])
  @pytest.mark.parametrize('depth_multiplier', [1, 2, 7])
  def test_separable_conv(self, mode, depth_multiplier, pointwise_filters):
    built = graph_modes.build(
        mode, _separable_net(depth_multiplier, pointwise_filters), [1, 9, 9, 3])
    manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
    dwise = built.op('dwise/depthwise')
    relu1 = built.op('relu1/Relu')
    relu2 = built.op('relu2/Relu')
    channels = 5 * depth_multiplier
    assert sum(s.slice.size for s in manager.get_op_slices(dwise)) == channels
    for k in range(channels):
      group = _channel_group(manager, dwise, k)
      assert group is not None
      assert _channel_group(manager, relu1, k // depth_multiplier) is group
      if pointwise_filters is None:
        assert _channel_group(manager, relu2, k) is group
    # The depthwise op has one slice per channel, so its regularizer is a
    # ConcatRegularizer, which reads its members when created: create it in
    # the evaluation context.
    def vectors():
      reg = manager.get_regularizer(dwise)
      return reg.regularization_vector, reg.alive_vector

    regularization, alive = built.evaluate(vectors)
    # Channel k carries |gamma1[k // m]|: each gamma repeated m times.
    expected = np.repeat(np.abs(_GAMMA1), depth_multiplier)
    np.testing.assert_allclose(regularization, expected)
    np.testing.assert_array_equal(alive, expected > _GAMMA_THRESHOLD)


def test_channel_layout_matches_tensorflow(mode):
  """TF's depthwise output channel k reads input channel k // m (m = 2)."""
  depth_multiplier = 2
  # Input channel c holds the value c; 3x3 kernels that copy the center pixel.
  values = np.arange(5, dtype=np.float32)
  kernel = np.zeros([3, 3, 5, depth_multiplier], np.float32)
  kernel[1, 1, :, :] = 1.0
  output = tf.nn.depthwise_conv2d(
      tf.constant(np.broadcast_to(values, [1, 4, 4, 5])), tf.constant(kernel),
      [1, 1, 1, 1], 'SAME')
  output_channels = output.numpy()[0, 0, 0, :]
  np.testing.assert_array_equal(output_channels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])

  # The handler's grouping follows the same layout.
  built = graph_modes.build(mode, _separable_net(depth_multiplier), [1, 9, 9, 3])
  manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
  dwise, relu1 = built.op('dwise/depthwise'), built.op('relu1/Relu')
  for k, input_channel in enumerate(output_channels.astype(int)):
    assert _channel_group(manager, dwise, k) is _channel_group(
        manager, relu1, input_channel)


def test_constant_input_with_multiplier_groups_like_elementwise(mode):
  """A depthwise conv straight on a constant image has no input op to map."""
  def net_fn(image, var):
    with tf.name_scope('dwise'):
      x = tf.nn.depthwise_conv2d(
          tf.constant(np.zeros([1, 5, 5, 3], np.float32)),
          var('dwise_kernel', np.ones([3, 3, 3, 2])), [1, 1, 1, 1], 'SAME')
    with tf.name_scope('bn'):
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('bn_gamma', np.arange(6.0)), var('bn_beta', np.zeros(6)),
          is_training=True)
    return x + image

  built = graph_modes.build(mode, net_fn, [1, 5, 5, 6])
  manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
  dwise = built.op('dwise/depthwise')
  bn_slices = manager.get_op_slices(built.op('bn/FusedBatchNormV3'))
  assert manager.get_op_group(manager.get_op_slices(dwise)[0]) is (
      manager.get_op_group(bn_slices[0]))
