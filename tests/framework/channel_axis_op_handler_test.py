"""Tests for ops that keep their channels only for some axes (beyond the original).

ExpandDims / Squeeze around the Conv2D of a 1-D convolution, a Reshape that
keeps the last axis (around the MatMul of a Dense on a rank > 2 input) and a
gather of rows of an activation carry channels; an embedding lookup starts new
ones; the cost of such networks with dead channels equals an
independent count.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import channel_axis_op_handler as cah
from morph_net.network_regularizers import flop_regularizer
from tests import graph_modes

_THRESHOLD = 0.5


def _bn(x, var, name, gamma):
  with tf.name_scope(name):
    shape = x.shape
    y = tf.reshape(x, [1, 1, -1, shape[-1]]) if shape.rank != 4 else x
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        y, var(f'{name}_gamma', gamma), var(f'{name}_beta', np.zeros(len(gamma))),
        is_training=True)
    return tf.reshape(y, shape) if shape.rank != 4 else y


def test_predicates():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 5, 4])
    assert cah.expand_dims_keeps_channels(tf.expand_dims(x, 1).op)
    assert cah.expand_dims_keeps_channels(tf.expand_dims(x, -4).op)
    assert not cah.expand_dims_keeps_channels(tf.expand_dims(x, -1).op)
    assert not cah.expand_dims_keeps_channels(tf.expand_dims(x, 3).op)
    y = tf.zeros([1, 1, 5, 4])
    assert cah.squeeze_keeps_channels(tf.squeeze(y, [1]).op)
    assert cah.squeeze_keeps_channels(tf.squeeze(y).op)
    assert not cah.squeeze_keeps_channels(tf.squeeze(tf.zeros([1, 5, 1]), [-1]).op)
    assert not cah.squeeze_keeps_channels(tf.squeeze(tf.zeros([1, 5, 1])).op)
    z = tf.zeros([2, 3, 3, 4])
    assert cah.reshape_keeps_channels(tf.reshape(z, [-1, 4]).op)
    assert cah.reshape_keeps_channels(tf.reshape(z, [2, 9, 4]).op)
    assert not cah.reshape_keeps_channels(tf.reshape(z, [2, 36]).op)
    assert not cah.reshape_keeps_channels(tf.reshape(z, [2, 3, 12]).op)
    # GatherV2: rows of an activation (any axis but the last, or a same-size
    # permutation of the last) keep the channels; a table lookup or a
    # selection of another number of channels does not.
    a = tf.compat.v1.placeholder(tf.float32, [2, 5, 4])
    assert cah.gather_keeps_channels(tf.gather(a, [4, 0, 2], axis=1).op)
    assert cah.gather_keeps_channels(tf.gather(a, [1, 0], axis=0).op)
    assert cah.gather_keeps_channels(tf.gather(a, [3, 2, 1, 0], axis=2).op)
    assert not cah.gather_keeps_channels(tf.gather(a, [3, 1], axis=2).op)
    ids = tf.compat.v1.placeholder(tf.int32, [2, 7])
    table = tf.Variable(np.ones([10, 4], np.float32))
    assert not cah.gather_keeps_channels(tf.gather(table.read_value(), ids).op)
    assert not cah.gather_keeps_channels(tf.gather(tf.ones([10, 4]), ids).op)
    unknown = tf.compat.v1.placeholder(tf.float32, [2, 5, None])
    assert not cah.gather_keeps_channels(tf.gather(unknown, [0], axis=1).op)


def _conv1d_net(gamma1, gamma2, dilation):
  """conv1d (3 -> 6, k=3) -> BN -> Relu -> conv1d (6 -> 4, k=3, dilated) -> BN -> 1x1 (-> 2)."""
  def net(image, var):
    x = tf.nn.conv1d(image, var('w1', np.ones([3, 3, 6])), 1, 'SAME', name='c1')
    x = tf.nn.relu(_bn(x, var, 'bn1', gamma1))
    x = tf.nn.convolution(x, var('w2', np.ones([3, 6, 4])), padding='SAME',
                          dilations=dilation, name='c2')
    x = _bn(x, var, 'bn2', gamma2)
    return tf.nn.conv1d(x, var('w3', np.ones([1, 4, 2])), 1, 'SAME', name='c3')
  return net


@pytest.mark.parametrize('dilation', [1, 2])
def test_conv1d_cost_with_dead_channels(mode, dilation):
  gamma1 = np.array([1., 0., 1., 0., 1., 1.])  # 4 alive
  gamma2 = np.array([0., 1., 1., 0.])  # 2 alive
  built = graph_modes.build(mode, _conv1d_net(gamma1, gamma2, dilation), [1, 16, 3])
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # 2 * L_out * K * A_in * A_out with L_out = 16 (SAME), whatever the
  # dilation: c1 2*16*3*3*4, c2 2*16*3*4*2, c3 2*16*1*2*2.
  expected = 2 * 16 * 3 * 3 * 4 + 2 * 16 * 3 * 4 * 2 + 2 * 16 * 1 * 2 * 2
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)


def test_group_lasso_on_conv1d(mode):
  built = graph_modes.build(mode, _conv1d_net(np.ones(6), np.ones(4), 1), [1, 16, 3])
  reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 0.1)
  # Kernels all ones: every channel alive.
  expected = 2 * 16 * 3 * 3 * 6 + 2 * 16 * 3 * 6 * 4 + 2 * 16 * 1 * 4 * 2
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
  manager = reg.op_regularizer_manager
  conv = [op for op in built.graph.get_operations()
          if op.type == 'Conv2D' and op.inputs[1].shape[-1] == 4][0]
  assert conv.inputs[1].op.type == 'ExpandDims'
  # The regularizer reads the [k, C_in, C_out] variable (not the expanded
  # graph tensor): it can be read in any context. GroupLasso of all-ones
  # kernels: sqrt(mean over (k, C_in) of 1) = 1 per channel.
  vector = built.evaluate(lambda: manager.get_regularizer(conv).regularization_vector)
  np.testing.assert_allclose(vector, np.ones(4))


def _text_net(gamma1, gamma2):
  """ids [1, 16] -> embedding (20 x 5) -> conv1d (5 -> 6, k=3) -> BN -> Relu ->
  conv1d (6 -> 4, k=3) -> BN -> conv1d (4 -> 2, k=1)."""
  def net(image, var):
    ids = tf.cast(image[..., 0], tf.int32, name='ids')
    x = tf.gather(var('table', np.ones([20, 5])), ids, name='embedding')
    x = tf.nn.conv1d(x, var('w1', np.ones([3, 5, 6])), 1, 'SAME', name='c1')
    x = tf.nn.relu(_bn(x, var, 'bn1', gamma1))
    x = tf.nn.conv1d(x, var('w2', np.ones([3, 6, 4])), 1, 'SAME', name='c2')
    x = _bn(x, var, 'bn2', gamma2)
    return tf.nn.conv1d(x, var('w3', np.ones([1, 4, 2])), 1, 'SAME', name='c3')
  return net


def test_embedding_starts_new_channels(mode):
  # The lookup's output channels come from the table, not from the token ids
  # (grouped with them, the text model never finished grouping).
  gamma1 = np.array([1., 0., 1., 0., 1., 1.])  # 4 alive
  gamma2 = np.array([0., 1., 1., 0.])  # 2 alive
  built = graph_modes.build(mode, _text_net(gamma1, gamma2), [1, 16, 3])
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # 2 * L * K * A_in * A_out, L = 16: c1 reads all 5 embedding channels.
  expected = 2 * 16 * 3 * 5 * 4 + 2 * 16 * 3 * 4 * 2 + 2 * 16 * 1 * 2 * 2
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
  # tf.gather on a resource variable is a ResourceGather; on a read value
  # (as in Keras' traced Embedding) a GatherV2: both start new channels.
  embedding = built.op('embedding')
  assert embedding.type == 'ResourceGather'
  assert reg.op_regularizer_manager.get_regularizer(embedding) is None


def _dense_net(gamma):
  """[1, 4, 4, 8] -> Reshape -> MatMul (8 -> 6) -> Reshape -> BN -> Reshape -> MatMul (6 -> 3)."""
  def net(image, var):
    x = tf.reshape(image, [-1, 8])
    x = tf.matmul(x, var('w1', np.ones([8, 6])), name='mm1')
    x = tf.reshape(x, [1, 4, 4, 6])
    x = _bn(x, var, 'bn', gamma)
    x = tf.reshape(x, [-1, 6])
    return tf.matmul(x, var('w2', np.ones([6, 3])), name='mm2')
  return net


def test_dense_on_feature_map_counts_rows_and_dead_channels(mode):
  gamma = np.array([1., 0., 1., 0., 0., 1.])  # 3 alive
  built = graph_modes.build(mode, _dense_net(gamma), [1, 4, 4, 8])
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # 2 * rows * A_in * A_out, rows = 4*4: mm1 2*16*8*3, mm2 2*16*3*3.
  assert built.evaluate(reg.get_cost) == pytest.approx(2 * 16 * 8 * 3 + 2 * 16 * 3 * 3)
