"""Tests for GammaModelSizeRegularizer and GroupLassoModelSizeRegularizer.

Model size = number of weights: K * A_in * A_out per conv (K = kernel spatial
size), A_in * A_out per dense layer, K * A_out per depthwise conv; the batch
size plays no role.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import model_size_regularizer
from morph_net.testing import dummy_decorator
from tests import graph_modes
from tests.network_regularizers.flop_regularizer_test import (
    CONV_NAMES, IMAGE_SHAPE, THRESHOLD, WHOLE_NET_THRESHOLD, WHOLE_NETS, Builder,
    build_whole_net, expected_weights, four_conv_net, output_ops)


def test_names():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  gamma = model_size_regularizer.GammaModelSizeRegularizer(
      output_ops(built), THRESHOLD)
  assert (gamma.name, gamma.cost_name) == ('GammaModelSize', 'ModelSize')
  assert gamma.op_regularizer_manager is not None
  lasso = model_size_regularizer.GroupLassoModelSizeRegularizer(
      output_ops(built), 0.1)
  assert (lasso.name, lasso.cost_name) == ('GroupLassoModelSize', 'ModelSize')


def test_gamma_model_size_four_conv_model(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = model_size_regularizer.GammaModelSizeRegularizer(
      output_ops(built), THRESHOLD)
  costs = built.evaluate(
      lambda: [reg.get_cost([built.op(name)]) for name in CONV_NAMES])
  # K * A_in * A_out: conv1 35*3*7, conv2 1*3*11, conv3 9*18*10, conv4 1*18*17.
  np.testing.assert_allclose(costs, [735, 33, 1620, 306], rtol=1e-6)
  # K * (A_in * R_out + A_out * R_in): conv1 35*(3*6.8), conv2 1*(3*8.9),
  # conv3 9*(18*11.7 + 10*15.7), conv4 1*(18*14.1 + 17*15.7).
  expected_term = (35 * 3 * 6.8 + 3 * 8.9 + 9 * (18 * 11.7 + 10 * 15.7) +
                   (18 * 14.1 + 17 * 15.7))
  assert built.evaluate(reg.get_regularization_term) == pytest.approx(
      expected_term, rel=1e-6)


def test_decorated_single_conv_on_1x1_image(mode):
  def net_fn(image, var):
    return Builder(var).conv(image, 'conv', (1, 1), 2, relu=False)

  built = graph_modes.build(mode, net_fn, [1, 1, 1, 3])
  reg = model_size_regularizer.GammaModelSizeRegularizer(
      [built.output.op], 0.1, regularizer_decorator=dummy_decorator.DummyDecorator,
      decorator_parameters={'scale': 0.5})
  # K = 1; gammas 1 scaled to 0.5: reg = 1 * (3 * (2 * 0.5) + 2 * 0) = 3;
  # cost = 1 * 3 * 2 = 6.
  reg_term, cost = built.evaluate(
      lambda: [reg.get_regularization_term(), reg.get_cost()])
  assert reg_term == pytest.approx(3)
  assert cost == pytest.approx(6)


def test_group_lasso_model_size_mlp_and_conv3d(mode):
  w = np.arange(24, dtype=np.float32).reshape([6, 4])
  w2 = np.arange(21, 25, dtype=np.float32).reshape([4, 1])

  def mlp(x, var):
    return tf.matmul(tf.matmul(x, var('w', w)), var('w2', w2))

  built = graph_modes.build(mode, mlp, [2, 6], image_value=1.0)
  # Column RMS of w: 12.11, 12.95, 13.81, 14.69 -> 2 alive at 13.5; w2: 22.53.
  reg = model_size_regularizer.GroupLassoModelSizeRegularizer(
      [built.output.op], 13.5)
  # A_in * A_out: 6 * 2 + 2 * 1.
  assert built.evaluate(reg.get_cost) == pytest.approx(14)

  values = np.array([0.05, 0.1, 0.2, 0.08, 0.12], np.float32)
  kernel = np.ones([3, 3, 3, 1, 5], np.float32) * values  # RMS norm = values

  def conv3d(image, var):
    return tf.nn.conv3d(image, var('k', kernel), [1] * 5, 'VALID')

  built = graph_modes.build(mode, conv3d, [2, 3, 3, 3, 1])
  reg = model_size_regularizer.GroupLassoModelSizeRegularizer(
      [built.output.op], 0.09)
  # K = 27, A_in = 1, 3 channels above 0.09; reg 27 * 1 * 0.55.
  assert built.evaluate(reg.get_cost) == pytest.approx(27 * 3)
  assert built.evaluate(reg.get_regularization_term) == pytest.approx(
      27 * 0.55, rel=1e-5)


@pytest.mark.parametrize('name', sorted(WHOLE_NETS))
@pytest.mark.parametrize('dead_channels', [False, True], ids=['all_alive', 'dead'])
def test_whole_network_model_size(mode, name, dead_channels):
  built, layers = build_whole_net(mode, name, dead_channels)
  reg = model_size_regularizer.GammaModelSizeRegularizer(
      [built.output.op], WHOLE_NET_THRESHOLD)
  assert built.evaluate(reg.get_cost) == pytest.approx(
      expected_weights(layers), rel=1e-6)


def test_rejects_bad_thresholds():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match='Received: gamma_threshold=-1'):
    model_size_regularizer.GammaModelSizeRegularizer(output_ops(built), -1)
  with pytest.raises(ValueError, match='Received: threshold=-0.5'):
    model_size_regularizer.GroupLassoModelSizeRegularizer(output_ops(built), -0.5)
  with pytest.raises(ValueError, match=r'\[0.0, 1.0\].*Received: l1_fraction=2'):
    model_size_regularizer.GroupLassoModelSizeRegularizer(
        output_ops(built), 0.5, l1_fraction=2)
