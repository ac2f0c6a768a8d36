"""Tests for the channel split handler (`Split` / `SplitV`, the mirror of a concat)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_handler_util
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import split_op_handler
from morph_net.network_regularizers import flop_regularizer
from tests import graph_modes

_THRESHOLD = 0.5
_IMAGE = [1, 6, 6, 3]
_S = 36


_bn = graph_modes.fused_bn


def _csp_net(gamma0, gamma1, num_or_sizes=2):
  """CSP half split: conv0 -> BN0 -> split -> (b: conv1 -> BN1 -> + b) -> concat(a, .) -> conv2."""
  def net(image, var):
    x = tf.nn.conv2d(image, var('w0', np.ones([1, 1, 3, 8])), 1, 'SAME', name='conv0')
    x = tf.nn.relu(_bn(x, var, 'bn0', gamma0), name='relu0')
    a, b = tf.split(x, num_or_sizes, axis=-1, name='split')
    y = tf.nn.conv2d(b, var('w1', np.ones([3, 3, 4, 4])), 1, 'SAME', name='conv1')
    y = tf.add(_bn(y, var, 'bn1', gamma1), b, name='add')
    z = tf.concat([a, y], -1, name='cat')
    return tf.nn.conv2d(z, var('w2', np.ones([1, 1, 8, 5])), 1, 'SAME', name='conv2')
  return net


@pytest.mark.parametrize('num_or_sizes, op_type', [(2, 'Split'), ([4, 4], 'SplitV')])
def test_split_groups_output_ranges(mode, num_or_sizes, op_type):
  built = graph_modes.build(mode, _csp_net(np.ones(8), np.ones(4), num_or_sizes), _IMAGE)
  split = built.op('split')
  assert split.type == op_type
  assert op_handler_util.is_channel_split(split)
  assert op_handler_util.get_op_size(split) == 8
  assert op_handler_util.split_output_ranges(split) == [(0, 4), (4, 4)]
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  manager = reg.op_regularizer_manager
  group = lambda op, i=0: manager.get_op_group(manager.get_op_slices(op)[i])  # noqa: E731
  assert [s.slice for s in manager.get_op_slices(split)] == [orm.Slice(0, 4), orm.Slice(4, 4)]
  relu0 = built.op('relu0')
  # Output 1 (channels 4..7) is added to bn1's output: one group.
  assert group(relu0, 1) is group(built.op('add')) is group(built.op('bn1/FusedBatchNormV3'))
  assert group(relu0, 0) is not group(relu0, 1)
  # The concat stacks output 0, then the add.
  assert group(built.op('cat'), 0) is group(relu0, 0)
  assert group(built.op('cat'), 1) is group(built.op('add'))


def test_split_cost_with_dead_channels(mode):
  # |gamma0| alive: [1,1,0,0 | 0,0,1,1]; gamma1 alive [1,0,1,0]; the add
  # groups bn1 with split output 1 (max): alive [1,0,1,1] -> 3.
  gamma0 = np.array([1., 1., 0., 0., 0., 0., 1., 1.])
  gamma1 = np.array([1., 0., 1., 0.])
  built = graph_modes.build(mode, _csp_net(gamma0, gamma1), _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # conv0: 2*S*1*3*(2 + 3); conv1 (3x3): 2*S*9*3*3 (input: output 1 of the
  # split, 3 alive); conv2: 2*S*1*(2 + 3)*5.
  expected = 2 * _S * 3 * 5 + 2 * _S * 9 * 3 * 3 + 2 * _S * 5 * 5
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)


def test_regularizer_of_split_output_is_its_range(mode):
  gamma0 = np.arange(1.0, 9.0)
  built = graph_modes.build(mode, _csp_net(gamma0, np.full(4, 0.1)), _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  manager = reg.op_regularizer_manager
  split = built.op('split')

  def vectors():
    # Created in the evaluation context, as the cost calculator does.
    return [split_op_handler.regularizer_of_tensor(
        manager, output).regularization_vector for output in split.outputs]

  first, second = built.evaluate(vectors)
  np.testing.assert_allclose(first, [1, 2, 3, 4])
  # Range 4..7 is max-grouped with bn1 (0.1 < 5..8).
  np.testing.assert_allclose(second, [5, 6, 7, 8])
  assert (split_op_handler.regularizer_of_tensor(manager, split.outputs[0])
          is split_op_handler.regularizer_of_tensor(manager, split.outputs[0]))


def test_split_on_other_axis_is_element_wise(mode):
  def net(image, var):
    x = tf.nn.conv2d(image, var('w0', np.ones([1, 1, 3, 4])), 1, 'SAME', name='conv0')
    x = _bn(x, var, 'bn0', np.array([1., 0., 1., 1.]))
    top, bottom = tf.split(x, 2, axis=1, name='split')
    return tf.nn.conv2d(tf.concat([top, bottom], 1), var('w1', np.ones([1, 1, 4, 2])),
                        1, 'SAME', name='conv1')

  built = graph_modes.build(mode, net, _IMAGE)
  split = built.op('split')
  assert not op_handler_util.is_channel_split(split)
  assert op_handler_util.get_op_size(split) == 4
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # conv0: 2*S*3*3 alive; conv1: 2*S*3*2.
  assert built.evaluate(reg.get_cost) == pytest.approx(2 * _S * 3 * 3 + 2 * _S * 3 * 2)


def test_get_range_slices_requires_boundaries(mode):
  built = graph_modes.build(mode, _csp_net(np.ones(8), np.ones(4)), _IMAGE)
  manager = orm.OpRegularizerManager(
      [built.output.op], flop_regularizer.GammaFlopsRegularizer(
          [built.output.op], _THRESHOLD).op_regularizer_manager._op_handler_dict)
  relu0 = built.op('relu0')
  with pytest.raises(ValueError, match=r'Op relu0 is not sliced at channels 2 and 6'):
    op_handler_util.get_range_slices(relu0, 2, 4, manager)


def test_reordered_concat_of_all_outputs_follows_the_ranges(mode):
  # concat([b, a]) has the split's size but permutes its channels: channel i
  # of the concat is channel (i + 4) % 8 of the split's input.
  def net(image, var):
    x = tf.nn.conv2d(image, var('w0', np.ones([1, 1, 3, 8])), 1, 'SAME', name='conv0')
    x = tf.nn.relu(_bn(x, var, 'bn0', np.ones(8)), name='relu0')
    a, b = tf.split(x, 2, axis=-1, name='split')
    z = tf.concat([b, a], -1, name='cat')
    z = _bn(z, var, 'bn1', np.ones(8))
    return tf.nn.conv2d(z, var('w1', np.ones([1, 1, 8, 2])), 1, 'SAME', name='conv1')

  built = graph_modes.build(mode, net, _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  manager = reg.op_regularizer_manager
  group = lambda op, i: manager.get_op_group(manager.get_op_slices(op)[i])  # noqa: E731
  relu0, cat = built.op('relu0'), built.op('cat')
  assert group(cat, 0) is group(relu0, 1)
  assert group(cat, 1) is group(relu0, 0)
  assert group(relu0, 0) is not group(relu0, 1)


def test_split_cost_inside_tf_function():
  # The cost calculator reads split outputs' ranges inside an autograph
  # tf.function too (e.g. a compiled train step).
  gamma0 = np.array([1., 1., 0., 0., 0., 0., 1., 1.])
  built = graph_modes.build(graph_modes.TRACED, _csp_net(gamma0, np.array([1., 0., 1., 0.])),
                            _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  expected = 2 * _S * 3 * 5 + 2 * _S * 9 * 3 * 3 + 2 * _S * 5 * 5
  assert float(tf.function(reg.get_cost)()) == pytest.approx(expected)
