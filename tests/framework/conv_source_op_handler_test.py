"""Tests for conv_source_op_handler and group_lasso_base_op_handler (spec 1.6, 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import conv_source_op_handler
from morph_net.framework import group_lasso_base_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.op_regularizers import group_lasso_regularizer
from tests import graph_modes

_THRESHOLD = 1.0
# Kernel [1, 1, 2, 4]: filter j has input weights (a_j, 0). Over the reduced
# axes (kh, kw, C_in), n = 2: RMS = sqrt(a_j**2 / 2) = |a_j| / sqrt(2) and
# mean |w| = |a_j| / 2.
_FILTER_VALUES = np.array([2.0, -1.0, 0.0, 3.0], np.float32)
_RMS = np.abs(_FILTER_VALUES) / np.sqrt(2.0)  # [1.41421, 0.70711, 0, 2.12132]
_L1 = np.abs(_FILTER_VALUES) / 2.0  # [1.0, 0.5, 0, 1.5]


def _conv2d_kernel():
  kernel = np.zeros([1, 1, 2, 4], np.float32)
  kernel[0, 0, 0, :] = _FILTER_VALUES
  return kernel


def _conv3d_kernel():
  kernel = np.zeros([1, 1, 1, 2, 4], np.float32)
  kernel[0, 0, 0, 0, :] = _FILTER_VALUES
  return kernel


def _conv2d_net(image, var):
  """conv1 (2) -> relu1 -> conv2 (4, the source) -> relu2."""
  with tf.name_scope('conv1'):
    x = tf.nn.conv2d(image, var('conv1_kernel', np.ones([3, 3, 3, 2])), 1, 'SAME')
  with tf.name_scope('relu1'):
    x = tf.nn.relu(x)
  with tf.name_scope('conv2'):
    x = tf.nn.conv2d(x, var('conv2_kernel', _conv2d_kernel()), 1, 'SAME')
  with tf.name_scope('relu2'):
    return tf.nn.relu(x)


def _conv3d_net(image, var):
  """conv1 (Conv3D, 2) -> relu1 -> conv2 (Conv3D, 4, the source) -> relu2."""
  volume = tf.reshape(image, [1, 3, 5, 7, 3])
  with tf.name_scope('conv1'):
    x = tf.nn.conv3d(volume, var('conv1_kernel', np.ones([1, 1, 1, 3, 2])),
                     [1, 1, 1, 1, 1], 'SAME')
  with tf.name_scope('relu1'):
    x = tf.nn.relu(x)
  with tf.name_scope('conv2'):
    x = tf.nn.conv3d(x, var('conv2_kernel', _conv3d_kernel()), [1, 1, 1, 1, 1],
                     'SAME')
  with tf.name_scope('relu2'):
    return tf.nn.relu(x)


_NETS = {
    'Conv2D': (_conv2d_net, [1, 15, 7, 3]),
    'Conv3D': (_conv3d_net, [1, 15, 7, 3]),
}


def _build(mode, op_type):
  net_fn, image_shape = _NETS[op_type]
  built = graph_modes.build(mode, net_fn, image_shape)
  return built, built.op(f'conv2/{op_type}')


def test_properties_and_alias():
  handler = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  assert isinstance(handler, group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler)
  assert handler.is_source_op is True
  assert handler.is_passthrough is False
  assert conv_source_op_handler.Conv2DSourceOpHandler is (
      conv_source_op_handler.ConvSourceOpHandler)


@pytest.mark.parametrize('op_type', ['Conv2D', 'Conv3D'])
def test_assign_grouping_without_bn(mode, op_type):
  built, conv2 = _build(mode, op_type)
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_group_lasso_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  relu1, relu2 = built.op('relu1/Relu'), built.op('relu2/Relu')
  manager.create_op_group_for_op_slice(manager.get_op_slices(relu2)[0])

  with mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy, \
      mock.patch.object(manager, 'process_ops') as process_spy:
    conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD).assign_grouping(
        conv2, manager)

  slice_spy.assert_not_called()
  # Ungrouped inputs are queued. Conv3D has no entry in WEIGHTS_INDEX_DICT (as
  # in the original), so its kernel read counts as an input too.
  expected_inputs = [relu1]
  if op_type == 'Conv3D':
    expected_inputs.append(conv2.inputs[1].op)
  process_spy.assert_called_once_with(expected_inputs)
  conv_slice = orm.OpSlice(conv2, orm.Slice(0, 4))
  group = manager.get_op_group(conv_slice)
  assert conv_slice in group.source_op_slices
  assert manager.get_op_group(manager.get_op_slices(relu2)[0]) is group
  assert manager.get_op_group(manager.get_op_slices(relu1)[0]) is None


@pytest.mark.parametrize('op_type', ['Conv2D', 'Conv3D'])
@pytest.mark.parametrize('start, size', [(0, 4), (0, 3), (1, 2), (3, 1)])
@pytest.mark.parametrize('l1_fraction', [0.0, 0.5])
def test_create_regularizer(mode, op_type, start, size, l1_fraction):
  built, conv2 = _build(mode, op_type)
  handler = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD, l1_fraction)
  reg = handler.create_regularizer(orm.OpSlice(conv2, orm.Slice(start, size)))
  assert isinstance(reg, group_lasso_regularizer.GroupLassoRegularizer)
  regularization, alive = built.evaluate(
      lambda: (reg.regularization_vector, reg.alive_vector))
  # norm = f * mean|w| + (1 - f) * RMS, e.g. filter 0 with f = 0.5:
  # 0.5 * 1.0 + 0.5 * 1.41421 = 1.20711.
  norm = l1_fraction * _L1 + (1.0 - l1_fraction) * _RMS
  expected = norm[start:start + size]
  assert regularization.shape == (size,)
  np.testing.assert_allclose(regularization, expected, rtol=1e-6)
  np.testing.assert_array_equal(alive, expected > _THRESHOLD)


def test_create_regularizer_reads_the_variable_lazily():
  built, conv2 = _build(graph_modes.TRACED, 'Conv2D')
  reg = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD).create_regularizer(
      orm.OpSlice(conv2, orm.Slice(1, 2)))
  built.variables['conv2_kernel'].assign(2.0 * _conv2d_kernel())
  # Doubling the weights doubles the RMS of filters 1 and 2.
  np.testing.assert_allclose(
      reg.regularization_vector.numpy(), 2.0 * _RMS[1:3], rtol=1e-6)


def test_create_regularizer_with_constant_kernel_in_graph():
  graph = tf.Graph()
  with graph.as_default():
    conv = tf.nn.conv2d(tf.zeros([1, 4, 4, 2]), tf.constant(_conv2d_kernel()), 1,
                        'SAME')
    reg = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD).create_regularizer(
        orm.OpSlice(conv.op, orm.Slice(0, 4)))
    with tf.compat.v1.Session() as sess:
      regularization = sess.run(reg.regularization_vector)
  np.testing.assert_allclose(regularization, _RMS, rtol=1e-6)


def test_end_to_end_regularizer_of_conv_and_relu(mode):
  built, conv2 = _build(mode, 'Conv2D')
  handler_dict = op_handlers.get_group_lasso_op_handler_dict()
  handler_dict['Conv2D'] = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  manager = orm.OpRegularizerManager([built.output.op], handler_dict)
  reg = manager.get_regularizer(built.op('relu2/Relu'))
  assert reg is manager.get_regularizer(conv2)
  regularization = built.evaluate(lambda: reg.regularization_vector)
  np.testing.assert_allclose(regularization, _RMS, rtol=1e-6)


def test_unsupported_op_type(mode):
  built = graph_modes.build(
      mode, lambda image, var: tf.matmul(
          tf.reshape(image, [1, 6]), var('w', np.ones([6, 2]))), [1, 2, 1, 3])
  matmul = [op for op in built.graph.get_operations() if op.type == 'MatMul'][0]
  handler = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  with pytest.raises(ValueError, match='Unsupported op type MatMul'):
    handler.create_regularizer(orm.OpSlice(matmul, orm.Slice(0, 2)))


class _ReduceDimsHandler(group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):

  def __init__(self, reduce_dims):
    super().__init__(_THRESHOLD)
    self._dims = reduce_dims

  def _reduce_dims(self, op):
    return self._dims


def _op_with_weights(shape):
  """An op in a fresh graph whose inputs[1] has `shape`."""
  graph = tf.Graph()
  with graph.as_default():
    weights = tf.zeros(shape)
    return tf.identity_n([tf.zeros([1]), weights])[0].op


class TestGroupLassoBaseErrors:

  def test_base_reduce_dims_is_abstract(self):
    handler = group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler(_THRESHOLD)
    with pytest.raises(NotImplementedError):
      handler._reduce_dims(None)

  def test_rank_incompatible_with_reduce_dims(self):
    op = _op_with_weights([3, 3, 2, 4])
    with pytest.raises(
        ValueError, match=r'Rank 4 incompatible with reduce_dims \(0, 1\) for op '):
      _ReduceDimsHandler((0, 1)).create_regularizer(orm.OpSlice(op, orm.Slice(0, 4)))

  def test_rank_5_with_channel_axis_reduced(self):
    op = _op_with_weights([1, 1, 1, 2, 4])
    with pytest.raises(ValueError,
                       match=r'Unsupported reduce_dim for rank 5 tensors \(Conv3D\)'):
      _ReduceDimsHandler((0, 1, 2, 4)).create_regularizer(
          orm.OpSlice(op, orm.Slice(0, 2)))

  def test_unsupported_rank(self):
    op = _op_with_weights([4])
    with pytest.raises(ValueError, match='Unsupported rank or bad reduce_dim'):
      _ReduceDimsHandler(()).create_regularizer(orm.OpSlice(op, orm.Slice(0, 4)))

  @pytest.mark.parametrize('shape, reduce_dims, start, size, expected_axis', [
      # Rank 2: axis 1 when dim 0 is reduced, else axis 0.
      ([3, 4], (0,), 1, 2, 1),
      ([4, 3], (1,), 1, 2, 0),
      # Rank 3: first of axes 2, 1, 0 not reduced.
      ([4, 3, 2], (1, 2), 1, 2, 0),
      ([3, 4, 2], (0, 2), 1, 2, 1),
      # Rank 4: first of axes 3, 2, 1, 0 not reduced (transposed conv: 2).
      ([3, 3, 4, 2], (0, 1, 3), 1, 2, 2),
  ])
  def test_slicing_axis(self, shape, reduce_dims, start, size, expected_axis):
    graph = tf.Graph()
    with graph.as_default():
      values = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 5.0
      weights = tf.constant(values)
      op = tf.identity_n([tf.zeros([1]), weights])[0].op
      reg = _ReduceDimsHandler(reduce_dims).create_regularizer(
          orm.OpSlice(op, orm.Slice(start, size)))
      with tf.compat.v1.Session() as sess:
        regularization = sess.run(reg.regularization_vector)
    # RMS over reduce_dims of the [start, start + size) slab of the channel axis.
    sliced = np.take(values, range(start, start + size), axis=expected_axis)
    expected = np.sqrt(np.mean(np.square(sliced), axis=reduce_dims))
    np.testing.assert_allclose(regularization, expected, rtol=1e-6)
