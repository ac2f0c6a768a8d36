"""Tests for op_handler_decorator (spec 1.6 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import conv_source_op_handler
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handler_decorator
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.testing import dummy_decorator
from tests import graph_modes


def _net_fn(image, var):
  """conv (3 filters, 5x5, all-ones kernel) -> relu."""
  with tf.name_scope('conv'):
    x = tf.nn.conv2d(image, var('kernel', np.ones([5, 5, 3, 3])), 1, 'SAME')
  with tf.name_scope('relu'):
    return tf.nn.relu(x)


def _decorated_conv_handler():
  return op_handler_decorator.OpHandlerDecorator(
      conv_source_op_handler.ConvSourceOpHandler(1e-3),
      dummy_decorator.DummyDecorator, {'scale': 0.5})


def test_decorated_conv_source(mode):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  conv = built.op('conv/Conv2D')
  reg = _decorated_conv_handler().create_regularizer(orm.OpSlice(conv, orm.Slice(0, 3)))
  assert isinstance(reg, dummy_decorator.DummyDecorator)
  regularization, alive = built.evaluate(
      lambda: (reg.regularization_vector, reg.alive_vector))
  # RMS of an all-ones kernel is 1, scaled by 0.5; alive since 1 > 1e-3.
  np.testing.assert_allclose(regularization, [0.5, 0.5, 0.5])
  np.testing.assert_array_equal(alive, [True, True, True])


def test_decorated_conv_source_in_manager(mode):
  built = graph_modes.build(mode, _net_fn, [1, 7, 9, 3])
  handler_dict = op_handlers.get_group_lasso_op_handler_dict()
  handler_dict['Conv2D'] = _decorated_conv_handler()
  manager = orm.OpRegularizerManager([built.output.op], handler_dict)
  reg = manager.get_regularizer(built.op('relu/Relu'))
  assert isinstance(reg, dummy_decorator.DummyDecorator)
  assert reg is manager.get_regularizer(built.op('conv/Conv2D'))
  np.testing.assert_allclose(
      built.evaluate(lambda: reg.regularization_vector), [0.5, 0.5, 0.5])


@pytest.mark.parametrize('is_source_op, is_passthrough',
                         [(True, False), (False, True)])
def test_forwards_properties(is_source_op, is_passthrough):
  handler = mock.Mock(is_source_op=is_source_op, is_passthrough=is_passthrough)
  decorator = op_handler_decorator.OpHandlerDecorator(handler)
  assert decorator.is_source_op is is_source_op
  assert decorator.is_passthrough is is_passthrough


def test_forwards_assign_grouping():
  handler = mock.Mock()
  decorator = op_handler_decorator.OpHandlerDecorator(
      handler, dummy_decorator.DummyDecorator, {'scale': 2.0})
  op, manager = object(), object()
  decorator.assign_grouping(op, manager)
  handler.assign_grouping.assert_called_once_with(op, manager)


def test_without_decorator_returns_plain_regularizer():
  regularizer = object()
  handler = mock.Mock()
  handler.create_regularizer.return_value = regularizer
  decorator = op_handler_decorator.OpHandlerDecorator(handler)
  assert decorator.create_regularizer('slice') is regularizer
  handler.create_regularizer.assert_called_once_with('slice')


def test_decorator_gets_regularizer_first_and_parameters():
  regularizer = object()
  handler = mock.Mock()
  handler.create_regularizer.return_value = regularizer
  regularizer_decorator = mock.Mock(return_value='decorated')
  decorator = op_handler_decorator.OpHandlerDecorator(
      handler, regularizer_decorator, {'scale': 0.25, 'other': 1})
  assert decorator.create_regularizer('slice') == 'decorated'
  regularizer_decorator.assert_called_once_with(regularizer, scale=0.25, other=1)


def test_decorator_without_parameters():
  handler = mock.Mock()
  regularizer_decorator = mock.Mock()
  op_handler_decorator.OpHandlerDecorator(
      handler, regularizer_decorator).create_regularizer('slice')
  regularizer_decorator.assert_called_once_with(handler.create_regularizer.return_value)


def test_no_regularizer_is_not_decorated():
  handler = mock.Mock()
  handler.create_regularizer.return_value = None
  regularizer_decorator = mock.Mock()
  decorator = op_handler_decorator.OpHandlerDecorator(
      handler, regularizer_decorator, {'scale': 0.5})
  assert decorator.create_regularizer('slice') is None
  regularizer_decorator.assert_not_called()


def test_non_source_handler_still_raises():
  decorator = op_handler_decorator.OpHandlerDecorator(
      grouping_op_handler.GroupingOpHandler(), dummy_decorator.DummyDecorator,
      {'scale': 0.5})
  assert decorator.is_source_op is False
  with pytest.raises(NotImplementedError, match='Not a source op'):
    decorator.create_regularizer(None)
