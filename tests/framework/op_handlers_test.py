"""Tests for the default op handler dictionaries (spec 1.7 and 8.2)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import channel_axis_op_handler
from morph_net.framework import concat_op_handler
from morph_net.framework import depthwise_convolution_op_handler
from morph_net.framework import grouped_convolution_op_handler as grouped_conv
from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.framework import op_handler_registry
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import output_non_passthrough_op_handler as onp
from morph_net.framework import split_op_handler
from morph_net.framework import strided_slice_op_handler
from tests import graph_modes

_DICT_FUNCTIONS = [op_handlers.get_gamma_op_handler_dict,
                   op_handlers.get_group_lasso_op_handler_dict,
                   op_handlers._get_base_op_hander_dicts]


def test_gamma_and_group_lasso_keys():
  gamma = op_handlers.get_gamma_op_handler_dict()
  group_lasso = op_handlers.get_group_lasso_op_handler_dict()
  assert 'Conv2D' in gamma
  assert 'MatMul' in gamma
  assert 'Conv2D' not in group_lasso
  assert 'MatMul' not in group_lasso
  assert set(group_lasso) < set(gamma)
  for op_type in ('Conv3D', 'MatMul', 'Conv2DBackpropInput'):
    assert type(gamma[op_type]) is onp.OutputNonPassthroughOpHandler
  # Conv2D: ordinary convolutions as in the original, grouped ones tie
  # positions across groups (beyond the original).
  assert type(gamma['Conv2D']) is grouped_conv.GroupedConvolutionOpHandler
  assert type(gamma['Conv2D'].base_handler) is onp.OutputNonPassthroughOpHandler


def test_resize_op_names():
  assert op_handlers.RESIZE_OP_NAMES == [
      'ResizeArea', 'ResizeBicubic', 'ResizeBilinear', 'ResizeNearestNeighbor']


@pytest.mark.parametrize('get_dict', _DICT_FUNCTIONS)
def test_base_handlers(get_dict):
  handlers = get_dict()
  assert isinstance(handlers, op_handler_registry.OpHandlerDict)
  assert handlers.default_factory is grouping_op_handler.GroupingOpHandler
  assert handlers.unknown_op_policy == 'group'
  assert type(handlers['ConcatV2']) is concat_op_handler.ConcatOpHandler
  assert type(handlers['DepthwiseConv2dNative']) is (
      depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler)
  for op_type in ('DepthToSpace', 'Transpose'):
    assert type(handlers[op_type]) is onp.OutputNonPassthroughOpHandler
  for op_type in ('RandomUniform', 'Shape', 'SpaceToDepth',
                  'TensorArrayGatherV3') + op_handler_registry.LEAF_OP_TYPES:
    assert type(handlers[op_type]) is leaf_op_handler.LeafOpHandler
  # Beyond the original: these keep their channels only for some axes.
  for op_type in ('ExpandDims', 'Squeeze', 'Reshape', 'GatherV2'):
    assert type(handlers[op_type]) is channel_axis_op_handler.ChannelAxisOpHandler
  assert type(handlers['ResourceGather']) is leaf_op_handler.LeafOpHandler
  assert type(handlers['StridedSlice']) is strided_slice_op_handler.StridedSliceOpHandler
  for op_type in ('Split', 'SplitV'):
    assert type(handlers[op_type]) is split_op_handler.SplitOpHandler
  for op_type in op_handlers.RESIZE_OP_NAMES:
    assert type(handlers[op_type]) is grouping_op_handler.GroupingOpHandler
    assert handlers[op_type]._grouping_indices == [0]
  for op_type in op_handler_registry.CHANNEL_PRESERVING_OP_TYPES:
    assert type(handlers[op_type]) is grouping_op_handler.GroupingOpHandler, op_type
    assert handlers[op_type]._grouping_indices is None
  # None of these lookups was of an unknown type.
  assert handlers.unknown_op_types == []


@pytest.mark.parametrize('get_dict', _DICT_FUNCTIONS)
def test_fresh_dicts_and_instances(get_dict):
  first, second = get_dict(), get_dict()
  assert first is not second
  assert first['Relu'] is not second['Relu']
  assert first['Relu'] is not first['Tanh']
  first.register('Custom', leaf_op_handler.LeafOpHandler())
  assert 'Custom' not in second


def test_unknown_type_defaults_to_grouping():
  handlers = op_handlers.get_gamma_op_handler_dict()
  assert 'Cumsum' not in handlers
  handler = handlers['Cumsum']
  assert type(handler) is grouping_op_handler.GroupingOpHandler
  assert handlers['Cumsum'] is handler
  assert handlers.unknown_op_types == ['Cumsum']


def test_resize_groups_with_image_input_only(mode):
  def net(image, var):
    with tf.name_scope('conv'):
      x = tf.nn.conv2d(image, var('w', np.ones([1, 1, 3, 4])), 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('gamma', np.ones(4)), var('beta', np.zeros(4)), is_training=True)
    size = tf.identity(tf.constant([8, 8]), name='size')
    return tf.compat.v1.image.resize_bilinear(x, size, name='resize')

  built = graph_modes.build(mode, net, [1, 4, 4, 3])
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.register('FusedBatchNormV3',
                    batch_norm_source_op_handler.BatchNormSourceOpHandler(0.1))
  manager = orm.OpRegularizerManager([built.op('resize')], handlers)
  resize = built.op('resize')
  assert resize.type == 'ResizeBilinear'
  group = manager.get_op_group(manager.get_op_slices(resize)[0])
  assert manager.get_op_group(manager.get_op_slices(built.op('conv/Conv2D'))[0]) is group
  # The 2-element size input (input 1) is neither grouped nor processed.
  assert built.op('size') not in manager.ops


def test_common_op_types_are_known():
  # Issue 11: ordinary models must not warn. Softmax ends every classifier;
  # Fill / Range / NoOp appear in Keras traces.
  handlers = op_handlers.get_gamma_op_handler_dict()
  for op_type in ('Softmax', 'LogSoftmax', 'Erfc', 'Expm1', 'Split', 'SplitV'):
    assert op_type in handlers, op_type
  for op_type in ('Fill', 'Range', 'NoOp', 'ZerosLike'):
    assert type(handlers[op_type]) is leaf_op_handler.LeafOpHandler, op_type
  assert handlers.unknown_op_types == []
