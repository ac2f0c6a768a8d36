"""Tests for matmul_source_op_handler (spec 1.6 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import group_lasso_base_op_handler
from morph_net.framework import matmul_source_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes

_THRESHOLD = 3.0
_KERNEL = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
# RMS of each output column over the 2 inputs: sqrt((1 + 16) / 2) = 2.91548,
# sqrt((4 + 25) / 2) = 3.80789, sqrt((9 + 36) / 2) = 4.74342.
_RMS = np.array([2.91548, 3.80789, 4.74342], np.float32)


def _net(transpose_b):
  """reshape -> matmul (3 outputs) -> relu."""
  def net_fn(image, var):
    x = tf.reshape(image, [1, 2])
    kernel = var('kernel', _KERNEL.T if transpose_b else _KERNEL)
    with tf.name_scope('fc'):
      x = tf.matmul(x, kernel, transpose_b=transpose_b)
    with tf.name_scope('relu'):
      return tf.nn.relu(x)
  return net_fn


def _handler():
  return matmul_source_op_handler.MatMulSourceOpHandler(_THRESHOLD)


def test_properties():
  handler = _handler()
  assert isinstance(handler, group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler)
  assert handler.is_source_op is True
  assert handler.is_passthrough is False


@pytest.mark.parametrize('transpose_b, reduce_dims', [(False, (0,)), (True, (1,))])
def test_reduce_dims(mode, transpose_b, reduce_dims):
  built = graph_modes.build(mode, _net(transpose_b), [1, 1, 1, 2])
  assert _handler()._reduce_dims(built.op('fc/MatMul')) == reduce_dims


def test_missing_transpose_b_warns_and_assumes_in_out():
  op = mock.Mock()
  op.name = 'fake/MatMul'
  op.get_attr.side_effect = ValueError('No attr named transpose_b')
  with mock.patch.object(matmul_source_op_handler.logging, 'warning') as warning:
    assert _handler()._reduce_dims(op) == (0,)
  warning.assert_called_once()
  assert 'fake/MatMul' in warning.call_args.args


@pytest.mark.parametrize('transpose_b', [False, True])
@pytest.mark.parametrize('start, size', [(0, 3), (0, 2), (1, 2)])
def test_transpose_gives_same_regularizer(mode, transpose_b, start, size):
  built = graph_modes.build(mode, _net(transpose_b), [1, 1, 1, 2])
  reg = _handler().create_regularizer(
      orm.OpSlice(built.op('fc/MatMul'), orm.Slice(start, size)))
  regularization, alive = built.evaluate(
      lambda: (reg.regularization_vector, reg.alive_vector))
  np.testing.assert_allclose(regularization, _RMS[start:start + size], rtol=1e-5)
  # Threshold 3.0: only the first column is dead.
  np.testing.assert_array_equal(alive, [False, True, True][start:start + size])


@pytest.mark.parametrize('transpose_b', [False, True])
def test_end_to_end(mode, transpose_b):
  built = graph_modes.build(mode, _net(transpose_b), [1, 1, 1, 2])
  handler_dict = op_handlers.get_group_lasso_op_handler_dict()
  handler_dict['MatMul'] = _handler()
  manager = orm.OpRegularizerManager([built.output.op], handler_dict)
  matmul = built.op('fc/MatMul')
  reg = manager.get_regularizer(built.op('relu/Relu'))
  assert reg is manager.get_regularizer(matmul)
  np.testing.assert_allclose(
      built.evaluate(lambda: reg.regularization_vector), _RMS, rtol=1e-5)
