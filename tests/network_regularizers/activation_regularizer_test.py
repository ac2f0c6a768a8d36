"""Tests for GammaActivationRegularizer and GroupLassoActivationRegularizer.

Cost of a conv / matmul = its alive output channels; regularization = the sum
of its output regularization vector. 4-conv model: see flop_regularizer_test.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import activation_regularizer
from tests import graph_modes
from tests.network_regularizers.flop_regularizer_test import (
    CONV_NAMES, IMAGE_SHAPE, STANDARD_GAMMAS, THRESHOLD, Builder,
    four_conv_net, output_ops)


def test_names():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  gamma = activation_regularizer.GammaActivationRegularizer(
      output_ops(built), THRESHOLD)
  assert (gamma.name, gamma.cost_name) == ('GammaActivationCount', 'Activations')
  lasso = activation_regularizer.GroupLassoActivationRegularizer(
      output_ops(built), 0.1)
  assert (lasso.name, lasso.cost_name) == (
      'GroupLassoActivationCount', 'Activations')


def test_costs_and_losses(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = activation_regularizer.GammaActivationRegularizer(
      output_ops(built), THRESHOLD)
  costs, losses = built.evaluate(lambda: [
      [reg.get_cost([built.op(n)]) for n in CONV_NAMES],
      [reg.get_regularization_term([built.op(n)]) for n in CONV_NAMES]])
  # Alive channels and |gamma| sums of the standard gammas.
  np.testing.assert_allclose(costs, [7, 11, 10, 17])
  np.testing.assert_allclose(losses, [6.8, 8.9, 11.7, 14.1], rtol=1e-6)
  # Batch norms, ReLUs and the concat count no activations.
  assert built.evaluate(reg.get_cost) == pytest.approx(7 + 11 + 10 + 17)


def test_gradient_flows_only_to_own_gammas(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = activation_regularizer.GammaActivationRegularizer(
      output_ops(built), THRESHOLD)
  gammas = [built.variables[f'conv{i}/gamma'] for i in range(1, 5)]
  conv2 = [built.op('conv2/Conv2D')]
  if mode == graph_modes.GRAPH:
    with built.graph.as_default():
      grads = tf.gradients(reg.get_regularization_term(conv2), gammas)
    assert [g is None for g in grads] == [True, False, True, True]
    grad2 = built.evaluate(lambda: grads[1])
  else:
    with tf.GradientTape() as tape:
      loss = reg.get_regularization_term(conv2)
    grads = tape.gradient(loss, gammas)
    assert [g is None for g in grads] == [True, False, True, True]
    grad2 = grads[1].numpy()
  # d sum|gamma2| / d gamma2 = sign(gamma2) = [-1]*11 + [1]*12.
  np.testing.assert_array_equal(grad2, [-1.0] * 11 + [1.0] * 12)
  assert np.array_equal(np.sign(STANDARD_GAMMAS['conv2']), grad2)


def test_conv_without_batch_norm_counts_all_channels(mode):
  four_conv = four_conv_net()

  def net_fn(image, var):
    conv3, conv4 = four_conv(image, var)
    conv5 = Builder(var).conv(conv3, 'conv5', (3, 3), 11, bn=False)
    return conv3, conv4, conv5

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  reg = activation_regularizer.GammaActivationRegularizer(
      output_ops(built), THRESHOLD)
  # conv5 has no source: its 11 channels are all counted.
  assert built.evaluate(
      lambda: reg.get_cost([built.op('conv5/Conv2D')])) == pytest.approx(11)


def test_group_lasso_activations_ignore_conv3d(mode):
  values = np.array([0.05, 0.1, 0.2, 0.08, 0.12], np.float32)
  kernel = np.ones([3, 3, 3, 1, 5], np.float32) * values  # RMS norm = values
  conv_kernel = np.ones([1, 1, 1, 4], np.float32) * [0.05, 0.5, 0.5, 0.02]

  def net_fn(image, var):
    conv3d = tf.nn.conv3d(image, var('k', kernel), [1] * 5, 'VALID',
                          name='conv3d')
    flat = tf.reshape(image, [2, 9, 3, 1])
    conv2d = tf.nn.conv2d(flat, var('k2', conv_kernel), 1, 'SAME', name='conv2d')
    return conv3d, conv2d

  built = graph_modes.build(mode, net_fn, [2, 3, 3, 3, 1])
  reg = activation_regularizer.GroupLassoActivationRegularizer(
      output_ops(built), 0.09)
  conv3d, conv2d = built.op('conv3d'), built.op('conv2d')
  # Conv3D is not a source of the activation regularizer: its 5 channels all
  # count, with no regularization. The Conv2D has 2 channels above 0.09
  # (R = 0.05 + 0.5 + 0.5 + 0.02 = 1.07).
  costs, terms = built.evaluate(lambda: [
      [reg.get_cost([conv3d]), reg.get_cost([conv2d])],
      [reg.get_regularization_term([conv3d]),
       reg.get_regularization_term([conv2d])]])
  np.testing.assert_allclose(costs, [5, 2])
  np.testing.assert_allclose(terms, [0.0, 1.07], rtol=1e-6)


def test_rejects_bad_thresholds():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match='Received: gamma_threshold=-0.45'):
    activation_regularizer.GammaActivationRegularizer(output_ops(built), -0.45)
  with pytest.raises(ValueError, match='Received: threshold=-2'):
    activation_regularizer.GroupLassoActivationRegularizer(output_ops(built), -2)
  with pytest.raises(ValueError, match='Received: l1_fraction=-1'):
    activation_regularizer.GroupLassoActivationRegularizer(
        output_ops(built), 0.1, l1_fraction=-1)
