"""Contract of every registered op handler, driven by the handler tables.

The table is every op type of `op_handlers.get_gamma_op_handler_dict()` with
the Gamma family's batch norm sources added, and of
`op_handlers.get_group_lasso_op_handler_dict()` with the GroupLasso family's
sources added (spec 3.3). Every handler reports boolean `is_source_op` /
`is_passthrough`; a source handler creates an OpRegularizer whose vectors have
one entry per channel of an op of its type (whole and partial slices, in both
graph modes); a non-source handler refuses to create one.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import conv2d_transpose_source_op_handler
from morph_net.framework import conv_source_op_handler
from morph_net.framework import matmul_source_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes

_CHANNELS = 4
_THRESHOLD = 0.1


def _gamma_table():
  handlers = op_handlers.get_gamma_op_handler_dict()
  for op_type in ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3'):
    handlers[op_type] = batch_norm_source_op_handler.BatchNormSourceOpHandler(
        _THRESHOLD)
  return handlers


def _group_lasso_table():
  handlers = op_handlers.get_group_lasso_op_handler_dict()
  handlers['Conv2D'] = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  handlers['Conv3D'] = conv_source_op_handler.ConvSourceOpHandler(_THRESHOLD)
  handlers['Conv2DBackpropInput'] = (
      conv2d_transpose_source_op_handler.Conv2DTransposeSourceOpHandler(_THRESHOLD))
  handlers['MatMul'] = matmul_source_op_handler.MatMulSourceOpHandler(_THRESHOLD)
  return handlers


_TABLE = [(table_name, op_type, handler)
          for table_name, table in (('gamma', _gamma_table()),
                                    ('group_lasso', _group_lasso_table()))
          for op_type, handler in sorted(table.items())]


# Builders of one op of each source type with _CHANNELS output channels:
# net_fn(image, var) on an image of shape [1, 5, 6, 3].
def _fused_batch_norm(fn):
  def net_fn(image, var):
    x = tf.tile(image, [1, 1, 1, 2])[..., :_CHANNELS]
    gamma = var('gamma', np.linspace(-1.0, 1.0, _CHANNELS))
    beta = var('beta', np.zeros(_CHANNELS))
    empty = tf.zeros([0])
    return fn(x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
              is_training=True)[0]
  return net_fn


def _fused_batch_norm_v3(image, var):
  x = tf.tile(image, [1, 1, 1, 2])[..., :_CHANNELS]
  return tf.compat.v1.nn.fused_batch_norm(
      x, var('gamma', np.linspace(-1.0, 1.0, _CHANNELS)),
      var('beta', np.zeros(_CHANNELS)), is_training=True)[0]


def _conv2d(image, var):
  return tf.nn.conv2d(image, var('kernel', np.ones([3, 3, 3, _CHANNELS])), 1, 'SAME')


def _conv3d(image, var):
  return tf.nn.conv3d(image[..., None, :], var('kernel', np.ones([1, 1, 1, 3, _CHANNELS])),
                      [1, 1, 1, 1, 1], 'SAME')


def _conv2d_transpose(image, var):
  return tf.nn.conv2d_transpose(image, var('kernel', np.ones([3, 3, _CHANNELS, 3])),
                                [1, 10, 12, _CHANNELS], 2, 'SAME')


def _matmul(image, var):
  return tf.matmul(tf.reshape(image, [1, 90]), var('kernel', np.ones([90, _CHANNELS])))


_SOURCE_OP_BUILDERS = {
    'FusedBatchNorm': _fused_batch_norm(tf.raw_ops.FusedBatchNorm),
    'FusedBatchNormV2': _fused_batch_norm(tf.raw_ops.FusedBatchNormV2),
    'FusedBatchNormV3': _fused_batch_norm_v3,
    'Conv2D': _conv2d,
    'Conv3D': _conv3d,
    'Conv2DBackpropInput': _conv2d_transpose,
    'MatMul': _matmul,
}


def _any_op_slice():
  graph = tf.Graph()
  with graph.as_default():
    op = tf.nn.relu(tf.zeros([1, 2, 2, _CHANNELS]), name='relu').op
  return orm.OpSlice(op, orm.Slice(0, _CHANNELS))


def test_table_has_every_source_type():
  sources = sorted({op_type for _, op_type, handler in _TABLE if handler.is_source_op})
  assert sources == sorted(_SOURCE_OP_BUILDERS)


@pytest.mark.parametrize('table_name, op_type, handler', _TABLE,
                         ids=[f'{t}-{o}' for t, o, _ in _TABLE])
def test_handler_contract(table_name, op_type, handler):
  del table_name
  assert isinstance(handler.is_source_op, bool)
  assert isinstance(handler.is_passthrough, bool)
  assert callable(handler.assign_grouping)
  if not handler.is_source_op:
    with pytest.raises(NotImplementedError):
      handler.create_regularizer(_any_op_slice())
    return

  for mode in graph_modes.MODES:
    built = graph_modes.build(mode, _SOURCE_OP_BUILDERS[op_type], [1, 5, 6, 3])
    op = [o for o in built.graph.get_operations() if o.type == op_type][0]
    assert op.outputs[0].shape[-1] == _CHANNELS
    for start, size in ((0, _CHANNELS), (1, _CHANNELS - 2)):
      reg = handler.create_regularizer(orm.OpSlice(op, orm.Slice(start, size)))
      regularization, alive = built.evaluate(
          lambda reg=reg: (reg.regularization_vector, reg.alive_vector))
      assert regularization.shape == (size,), (mode, start, size)
      assert regularization.dtype == np.float32
      assert alive.shape == (size,), (mode, start, size)
      assert alive.dtype == np.bool_
