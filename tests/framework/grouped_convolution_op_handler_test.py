"""Tests for grouped convolutions: `Conv2D` whose filter sees C_in / g channels.

Semantics under test (docs/grouped_convolutions.md): for 1 < g < C_in the
channels at the same position within each group are tied across groups, on
the input side (k*a + i for all k, a = C_in / g) and on the output side
(k*b + i, b = C_out / g); g == C_in is a depthwise convolution. FLOPs with a'
/ b' alive channels per group: 2 * S * K * a' * b' * g.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import grouped_convolution_op_handler as grouped
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from tests import graph_modes

_THRESHOLD = 0.5
_IMAGE = [1, 6, 6, 3]
_S = 36  # 6x6 output positions (SAME, stride 1).


_bn = graph_modes.fused_bn


def _grouped_net(gamma_in, gamma_out, groups, c_in=8, c_out=4):
  """conv1 (3 -> c_in) -> BN -> Relu -> grouped 3x3 (c_in -> c_out) -> BN -> conv3 (-> 2)."""
  def net(image, var):
    x = tf.nn.conv2d(image, var('w1', np.ones([1, 1, 3, c_in])), 1, 'SAME', name='conv1')
    x = tf.nn.relu(_bn(x, var, 'bn1', gamma_in), name='relu1')
    x = tf.nn.conv2d(x, var('wg', np.ones([3, 3, c_in // groups, c_out])), 1, 'SAME',
                     name='grouped')
    x = _bn(x, var, 'bn2', gamma_out)
    return tf.nn.conv2d(x, var('w3', np.ones([1, 1, c_out, 2])), 1, 'SAME', name='conv3')
  return net


def _slices_group(manager, op, index):
  return manager.get_op_group(manager.get_op_slices(op)[index])


def test_convolution_groups(mode):
  built = graph_modes.build(mode, _grouped_net(np.ones(8), np.ones(4), 2), _IMAGE)
  assert grouped.convolution_groups(built.op('grouped')) == 2
  assert grouped.convolution_groups(built.op('conv1')) == 1
  assert not grouped.is_depthwise_like(built.op('grouped'))


def test_positions_are_tied_across_groups(mode):
  # g = 2, a = 4, b = 2.
  built = graph_modes.build(mode, _grouped_net(np.ones(8), np.ones(4), 2), _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  manager = reg.op_regularizer_manager
  relu1, conv = built.op('relu1'), built.op('grouped')
  for i in range(4):
    assert _slices_group(manager, relu1, i) is _slices_group(manager, relu1, 4 + i)
  assert len({id(_slices_group(manager, relu1, i)) for i in range(4)}) == 4
  for i in range(2):
    assert _slices_group(manager, conv, i) is _slices_group(manager, conv, 2 + i)
  # Input and output sides stay independent.
  assert _slices_group(manager, conv, 0) is not _slices_group(manager, relu1, 0)


@pytest.mark.parametrize('dead_in, dead_out', [([], []), ([0, 3], [1]),
                                               ([0, 1, 2, 3], [])])
def test_cost_with_dead_channels_equals_independent_count(mode, dead_in, dead_out):
  groups, a, b = 2, 4, 2
  gamma_in = np.ones(8)
  gamma_out = np.ones(4)
  for i in dead_in:  # Dead in every group: the tied channels k*a + i.
    gamma_in[[k * a + i for k in range(groups)]] = 0.0
  for i in dead_out:
    gamma_out[[k * b + i for k in range(groups)]] = 0.0
  a_alive, b_alive = a - len(dead_in), b - len(dead_out)
  built = graph_modes.build(mode, _grouped_net(gamma_in, gamma_out, groups), _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  # conv1: 2*S*1*3*(g*a'); grouped: 2*S*9*a'*b'*g; conv3: 2*S*1*(g*b')*2.
  expected = (2 * _S * 3 * groups * a_alive + 2 * _S * 9 * a_alive * b_alive * groups
              + 2 * _S * groups * b_alive * 2)
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
  size = model_size_regularizer.GammaModelSizeRegularizer([built.output.op], _THRESHOLD)
  # Weights: 3*(g*a') + 9*a'*b'*g + (g*b')*2.
  assert built.evaluate(size.get_cost) == pytest.approx(
      3 * groups * a_alive + 9 * a_alive * b_alive * groups + groups * b_alive * 2)


def test_untied_dead_channel_stays_alive(mode):
  # Channel 1 dead in group 0 only: its tied partner (5) keeps it alive.
  gamma_in = np.ones(8)
  gamma_in[1] = 0.0
  built = graph_modes.build(mode, _grouped_net(gamma_in, np.ones(4), 2), _IMAGE)
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  alive = built.evaluate(
      lambda: reg.op_regularizer_manager.get_regularizer(built.op('relu1')).alive_vector)
  np.testing.assert_array_equal(alive, np.ones(8, bool))


def test_groups_equal_to_input_channels_is_depthwise(mode):
  # g = C_in = 8, C_out = 8: channels pass through like a depthwise conv.
  # The BN after it is grouped with the BN before it (max of the two), so
  # channels 2 and 5 are dead in both.
  gamma = np.ones(8)
  gamma[[2, 5]] = 0.0
  built = graph_modes.build(
      mode, _grouped_net(gamma, gamma, groups=8, c_in=8, c_out=8), _IMAGE)
  assert grouped.is_depthwise_like(built.op('grouped'))
  reg = flop_regularizer.GammaFlopsRegularizer([built.output.op], _THRESHOLD)
  manager = reg.op_regularizer_manager
  assert (_slices_group(manager, built.op('grouped'), 0)
          is _slices_group(manager, built.op('relu1'), 0))
  # conv1: 2*S*3*6; depthwise-like: 2*S*9*6 (one input per output); conv3: 2*S*6*2.
  assert built.evaluate(reg.get_cost) == pytest.approx(
      2 * _S * 3 * 6 + 2 * _S * 9 * 6 + 2 * _S * 6 * 2)


def test_group_lasso_on_grouped_conv_ties_outputs(mode):
  built = graph_modes.build(mode, _grouped_net(np.ones(8), np.ones(4), 2), _IMAGE)
  # Kill the filters of output channels 1 and 3 (position 1 in both groups).
  def kernel_value():
    value = np.ones([3, 3, 4, 4], np.float32)
    value[..., [1, 3]] = 0.0
    return value
  if mode == graph_modes.GRAPH:
    with built.graph.as_default():
      assign = built.variables['wg'].assign(kernel_value())
    reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 0.1)
    with built.graph.as_default():
      cost_tensor = reg.get_cost()
      with tf.compat.v1.Session(graph=built.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(assign)
        cost = sess.run(cost_tensor)
  else:
    built.variables['wg'].assign(kernel_value())
    reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 0.1)
    cost = float(reg.get_cost())
  manager = reg.op_regularizer_manager
  conv = built.op('grouped')
  assert _slices_group(manager, conv, 1) is _slices_group(manager, conv, 3)
  # conv1 all alive (3 -> 8); grouped: a' = 4, b' = 1, g = 2; conv3: 2 alive
  # inputs (the grouped conv's), 2 outputs.
  assert cost == pytest.approx(
      2 * _S * 3 * 8 + 2 * _S * 9 * 4 * 1 * 2 + 2 * _S * 2 * 2)


def test_handler_dispatch():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 4, 4, 6])
    plain = tf.nn.conv2d(x, tf.ones([1, 1, 6, 4]), 1, 'SAME')
    two = tf.nn.conv2d(x, tf.ones([1, 1, 3, 4]), 1, 'SAME')
    six = tf.nn.conv2d(x, tf.ones([1, 1, 1, 12]), 1, 'SAME')
  from morph_net.framework import output_non_passthrough_op_handler as onp  # pylint: disable=g-import-not-at-top
  base_handler = onp.OutputNonPassthroughOpHandler()
  handler = grouped.GroupedConvolutionOpHandler(base_handler)
  assert handler.handler_for_op(plain.op) is base_handler
  assert grouped.convolution_groups(two.op) == 2
  assert not handler.handler_for_op(two.op).is_passthrough
  assert grouped.convolution_groups(six.op) == 6
  assert handler.handler_for_op(six.op).is_passthrough
  assert handler.is_passthrough is False and handler.is_source_op is False
  with pytest.raises(NotImplementedError):
    handler.create_regularizer(orm.OpSlice(plain.op, orm.Slice(0, 4)))
