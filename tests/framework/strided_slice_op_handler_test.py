"""Tests for StridedSlice: channels pass through a crop of other axes (beyond the original).

A slice that crops only spatial axes (Keras' `Cropping2D`, `x[:, 1:-1, 1:-1, :]`)
groups with its input, so the convolution after it is costed with the alive
channels of the convolution before it; a slice of the channel axis stays a
leaf, as in the original.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.framework import strided_slice_op_handler as ssh
from morph_net.network_regularizers import flop_regularizer
from tests import graph_modes

_THRESHOLD = 0.5


def _slice_op(tensor):
  op = tensor.op
  assert op.type == 'StridedSlice', op.type
  return op


def test_predicate_keeps_channels_when_only_other_axes_are_cropped():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 8, 8, 6])
    keeps = ssh.strided_slice_keeps_channels
    assert keeps(_slice_op(x[:, 1:-1, 1:-1, :]))
    assert keeps(_slice_op(x[:, 1:, 1:]))  # the specs stop before the channel axis
    assert keeps(_slice_op(x[:, ::2, ::2, :]))  # spatial strides
    assert keeps(_slice_op(x[:, :, :, 0:6]))  # explicit whole range
    assert keeps(_slice_op(x[:, :, :, -6:100]))  # negative begin, end past the size
    assert keeps(_slice_op(x[0]))  # shrinks the batch axis only
    # Cropping2D's trace: batch and channels masked on both ends, spatial ends
    # masked (crop of 1 at the top and left only).
    assert keeps(_slice_op(tf.strided_slice(x, [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1],
                                            begin_mask=9, end_mask=15)))


def test_predicate_leaf_when_the_channel_axis_is_touched():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 8, 8, 6])
    keeps = ssh.strided_slice_keeps_channels
    assert not keeps(_slice_op(x[:, :, :, 1:5]))  # a channel range
    assert not keeps(_slice_op(x[:, :, :, :-1]))
    assert not keeps(_slice_op(x[:, :, :, ::2]))  # a channel stride
    assert not keeps(_slice_op(x[:, :, :, ::-1]))  # reversed channels
    assert not keeps(_slice_op(x[:, :, :, 2]))  # shrinks the channel axis
    assert not keeps(_slice_op(x[..., 1:]))  # ellipsis: conservatively a leaf
    assert not keeps(_slice_op(x[..., 1:-1, :]))  # ellipsis, even keeping channels
    assert not keeps(_slice_op(x[:, None, :, :, :]))  # new axis: conservatively a leaf
    # Strides left to TF (computed by OnesLike, not a constant): a leaf.
    assert not keeps(_slice_op(tf.strided_slice(x, [0, 1, 1, 0], [0, 0, 0, 0],
                                                begin_mask=9, end_mask=15)))
    # Non-constant begin: the kept range is unknown.
    start = tf.compat.v1.placeholder(tf.int32, [])
    assert not keeps(_slice_op(x[:, start:, :, :]))
    # Unknown channel count, and unknown rank.
    y = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, None])
    assert not keeps(_slice_op(y[:, 1:, :, :]))
    assert keeps(_slice_op(y[:, 1:]))  # the channel axis is not in the specs
    z = tf.compat.v1.placeholder(tf.float32, None)
    assert not keeps(_slice_op(z[:, 1:]))
    # A shape vector sliced to one element (Shape -> StridedSlice -> Pack).
    assert not keeps(_slice_op(tf.shape(x)[0]))


def test_handler_for_op():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 8, 8, 6])
    handler = ssh.StridedSliceOpHandler()
    assert handler.is_passthrough
    assert not handler.is_source_op
    crop = handler.handler_for_op(_slice_op(x[:, 1:-1, 1:-1, :]))
    assert type(crop) is grouping_op_handler.GroupingOpHandler
    assert crop._grouping_indices == [0]  # begin / end / strides carry no channels
    assert type(handler.handler_for_op(_slice_op(x[:, :, :, 1:5]))) is (
        leaf_op_handler.LeafOpHandler)
    with pytest.raises(NotImplementedError):
      handler.create_regularizer(None)


_bn = graph_modes.fused_bn


def _cropped_net(gamma1, gamma2, crop):
  """c1 (1x1, 3 -> 6) -> BN -> Relu -> crop -> c2 (3x3 VALID, 6 -> 4) -> BN -> c3 (1x1, 4 -> 2)."""
  def net(image, var):
    x = tf.nn.conv2d(image, var('w1', np.ones([1, 1, 3, 6])), 1, 'SAME', name='c1')
    x = tf.nn.relu(_bn(x, var, 'bn1', gamma1))
    x = crop(x)
    x = tf.nn.conv2d(x, var('w2', np.ones([3, 3, 6, 4])), 1, 'VALID', name='c2')
    x = _bn(x, var, 'bn2', gamma2)
    return tf.nn.conv2d(x, var('w3', np.ones([1, 1, 4, 2])), 1, 'SAME', name='c3')
  return net


@pytest.mark.parametrize('crop', [
    lambda x: x[:, 1:-1, 1:-1, :],  # 8x8 -> 6x6
    lambda x: tf.strided_slice(x, [0, 1, 1, 0], [0, 7, 7, 0], [1, 1, 1, 1],
                               begin_mask=9, end_mask=9),  # Cropping2D's masks
])
def test_cost_after_a_spatial_crop_counts_alive_input_channels(mode, crop):
  gamma1 = np.array([1., 0., 1., 0., 1., 1.])  # 4 of 6 alive
  gamma2 = np.array([0., 1., 1., 0.])  # 2 of 4 alive
  built = graph_modes.build(mode, _cropped_net(gamma1, gamma2, crop), [1, 8, 8, 3])
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # 2 * S_out * K * A_in * A_out: c1 on 8x8 2*64*1*3*4; the crop gives 6x6, so
  # c2 (3x3 VALID) gives 4x4: 2*16*9*4*2; c3 2*16*1*2*2. As a leaf the crop
  # would make c2 2*16*9*6*2 (every input channel alive).
  expected = 2 * 64 * 3 * 4 + 2 * 16 * 9 * 4 * 2 + 2 * 16 * 1 * 2 * 2
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
  manager = reg.op_regularizer_manager
  slice_op = built.op('c2').inputs[0].op
  assert slice_op.type == 'StridedSlice'
  # The slice shares the group of bn1: same alive vector.
  np.testing.assert_array_equal(
      built.evaluate(lambda: manager.get_regularizer(slice_op).alive_vector),
      gamma1 > _THRESHOLD)


def test_channel_slice_stays_a_leaf(mode):
  gamma1 = np.array([1., 0., 1., 0., 1., 1.])
  gamma2 = np.array([0., 1., 1., 0.])

  def net(image, var):
    x = tf.nn.conv2d(image, var('w1', np.ones([1, 1, 3, 6])), 1, 'SAME', name='c1')
    x = tf.nn.relu(_bn(x, var, 'bn1', gamma1))
    x = x[:, :, :, 1:5]  # channels 1..4 of 6
    x = tf.nn.conv2d(x, var('w2', np.ones([3, 3, 4, 4])), 1, 'VALID', name='c2')
    return _bn(x, var, 'bn2', gamma2)

  built = graph_modes.build(mode, net, [1, 8, 8, 3])
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # c1 2*64*1*3*4 (4 alive); the slice is a leaf, so c2 (8x8 -> 6x6) sees its 4
  # input channels alive: 2*36*9*4*2 (2 alive outputs).
  expected = 2 * 64 * 3 * 4 + 2 * 36 * 9 * 4 * 2
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
