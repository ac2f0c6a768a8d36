"""Tests for GammaLatencyRegularizer and GroupLassoLatencyRegularizer.

Latency of an op = max(FLOPs / peak compute, bytes / memory bandwidth), in ns
with GFLOP/s and GB/s. P100: 9300 GFLOP/s, 732 GB/s.

4-conv model (see flop_regularizer_test): spatial sizes 17*19 = 323 (conv1,
conv2, conv4) and 9*10 = 90 (conv3); alive 7, 11, 10, 17; |gamma| sums 6.8,
8.9, 11.7, 14.1; the concat carries 7 + 11 = 18 alive channels (R = 15.7).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import latency_regularizer
from tests import graph_modes
from tests.network_regularizers.flop_regularizer_test import (
    CONV_NAMES, IMAGE_SHAPE, THRESHOLD, WHOLE_NET_THRESHOLD, WHOLE_NETS,
    build_whole_net, expected_latency, four_conv_net, output_ops)

P100 = (9300, 732)
# Peak compute (GFLOP/s) and bandwidth (GB/s) from the original's tables.
HARDWARE = {'V100': (125000, 900), 'K80': (8740, 480)}


def test_names():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  gamma = latency_regularizer.GammaLatencyRegularizer(
      output_ops(built), THRESHOLD, 'P100')
  assert (gamma.name, gamma.cost_name) == ('Latency', 'P100 Latency')
  lasso = latency_regularizer.GroupLassoLatencyRegularizer(
      output_ops(built), 0.1, 'K80', batch_size=4)
  assert (lasso.name, lasso.cost_name) == ('Latency', 'K80 Latency')


def test_gamma_latency_costs_p100(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = latency_regularizer.GammaLatencyRegularizer(
      output_ops(built), THRESHOLD, 'P100')
  costs = built.evaluate(lambda: [reg.get_cost([built.op(n)]) for n in CONV_NAMES]
                         + [reg.get_cost(built.ops(CONV_NAMES[2:]))])
  peak, bandwidth = P100
  expected = [
      # conv1: 474810 FLOPs / 9300 = 51.05 (memory (969 + 735 + 2261)*4/732 = 21.7).
      474810 / peak,
      # conv2: memory bound: input 323*3, weights 1*3*11, output 323*11.
      (969 + 33 + 3553) * 4 / bandwidth,
      # conv3: input 323*18, weights 9*18*10, output 90*10.
      (5814 + 1620 + 900) * 4 / bandwidth,
      # conv4: input 323*18, weights 1*18*17, output 323*17.
      (5814 + 306 + 5491) * 4 / bandwidth,
  ]
  expected.append(expected[2] + expected[3])
  np.testing.assert_allclose(
      expected, [51.0548400879, 24.8907108307, 45.5409851074, 63.4480857849,
                 108.989074707], rtol=1e-6)
  np.testing.assert_allclose(costs, expected, rtol=1e-5)


def test_gamma_latency_losses_p100(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = latency_regularizer.GammaLatencyRegularizer(
      output_ops(built), THRESHOLD, 'P100')
  peak, bandwidth = P100
  mem = lambda values: values * 4 / bandwidth
  expected = {
      # Compute bound: FLOP regularization 22610 * (3 * 6.8 + 7 * 0) / peak.
      'conv1/Conv2D': 22610 * 3 * 6.8 / peak,
      # Batch norms and ReLUs: input and output, both with the conv's R.
      'conv1/BatchNorm/FusedBatchNormV3': mem(323 * 6.8 * 2),
      'conv1/Relu': mem(323 * 6.8 * 2),
      # Memory bound: 323 * R_in (0) + 1 * (3 * 8.9 + 11 * 0) + 323 * 8.9.
      'conv2/Conv2D': mem(0 + 3 * 8.9 + 323 * 8.9),
      'conv2/BatchNorm/FusedBatchNormV3': mem(323 * 8.9 * 2),
      'conv2/Relu': mem(323 * 8.9 * 2),
      'concat': mem(323 * 15.7 * 2),
      'conv3/Conv2D': mem(323 * 15.7 + 9 * (18 * 11.7 + 10 * 15.7) + 90 * 11.7),
      'conv3/BatchNorm/FusedBatchNormV3': mem(90 * 11.7 * 2),
      'conv3/Relu': mem(90 * 11.7 * 2),
      'conv4/Conv2D': mem(323 * 15.7 + (18 * 14.1 + 17 * 15.7) + 323 * 14.1),
      'conv4/BatchNorm/FusedBatchNormV3': mem(323 * 14.1 * 2),
      'conv4/Relu': mem(323 * 14.1 * 2),
  }
  names = sorted(expected)
  losses = built.evaluate(
      lambda: [reg.get_regularization_term([built.op(n)]) for n in names])
  np.testing.assert_allclose(losses, [expected[n] for n in names], rtol=1e-5)
  # Over all ops: exactly these 13 ops are costed (the rest is unsupported).
  total = built.evaluate(lambda: reg.get_regularization_term([]))
  assert total == pytest.approx(sum(expected.values()), rel=1e-5)


@pytest.mark.parametrize('hardware', sorted(HARDWARE))
@pytest.mark.parametrize('name', sorted(WHOLE_NETS))
@pytest.mark.parametrize('dead_channels', [False, True], ids=['all_alive', 'dead'])
def test_whole_network_latency(mode, name, dead_channels, hardware):
  built, layers = build_whole_net(mode, name, dead_channels)
  reg = latency_regularizer.GammaLatencyRegularizer(
      [built.output.op], WHOLE_NET_THRESHOLD, hardware)
  assert built.evaluate(reg.get_cost) == pytest.approx(
      expected_latency(layers, *HARDWARE[hardware]), rel=1e-5)


def test_whole_network_latency_with_batch_size(mode):
  built, layers = build_whole_net(mode, 'mobilenet', dead_channels=True)
  reg = latency_regularizer.GammaLatencyRegularizer(
      [built.output.op], WHOLE_NET_THRESHOLD, 'K80', batch_size=8)
  assert built.evaluate(reg.get_cost) == pytest.approx(
      expected_latency(layers, *HARDWARE['K80'], batch_size=8), rel=1e-5)


def test_group_lasso_latency_mlp(mode):
  w = np.arange(24, dtype=np.float32).reshape([6, 4])
  w2 = np.arange(21, 25, dtype=np.float32).reshape([4, 1])

  def mlp(x, var):
    return tf.matmul(tf.matmul(x, var('w', w), name='h'), var('w2', w2), name='y')

  built = graph_modes.build(mode, mlp, [2, 6], image_value=1.0)
  # Column RMS of w: 12.11, 12.95, 13.81, 14.69 -> 2 alive at 13.5; w2 alive.
  reg = latency_regularizer.GroupLassoLatencyRegularizer(
      [built.output.op], 13.5, 'FLOP_LATENCY')
  # FLOP_LATENCY: 1 GFLOP/s, unlimited bandwidth -> latency = FLOPs =
  # 2 * 6 * 2 + 2 * 2 * 1.
  assert built.evaluate(reg.get_cost) == pytest.approx(28)


@pytest.mark.parametrize('hardware, batch_size, match', [
    ('apple', 1, r"Hardware apple must be in \['K80'.*Received: hardware='apple'"),
    (None, 1, r'Received: hardware=None'),
    ('V100', 0, r'Received: batch_size=0'),
])
def test_rejects_bad_hardware_and_batch_size(hardware, batch_size, match):
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match=match):
    latency_regularizer.GammaLatencyRegularizer(
        output_ops(built), THRESHOLD, hardware, batch_size=batch_size)
  with pytest.raises(ValueError, match=match):
    latency_regularizer.GroupLassoLatencyRegularizer(
        output_ops(built), THRESHOLD, hardware, batch_size=batch_size)


def test_rejects_bad_thresholds():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match='Received: gamma_threshold=-0.1'):
    latency_regularizer.GammaLatencyRegularizer(output_ops(built), -0.1, 'V100')
  with pytest.raises(ValueError, match='Received: threshold=-0.1'):
    latency_regularizer.GroupLassoLatencyRegularizer(output_ops(built), -0.1, 'V100')
  with pytest.raises(ValueError, match='Received: l1_fraction=1.1'):
    latency_regularizer.GroupLassoLatencyRegularizer(
        output_ops(built), 0.1, 'V100', l1_fraction=1.1)
