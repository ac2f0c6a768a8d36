"""Tests for the LogisticSigmoid (FiGS) network regularizers (spec 3.3 and 8.4).

Gated 4-conv model (spec 8.4): image [1, 17, 19, 3] -> conv1 (13, 7x5) and
conv2 (23, 1x1) -> concat (36) -> conv3 (29, 3x3, stride 2 -> 9x10) and conv4
(31, 1x1); each conv (scope `convN`) is followed by a ReLU and a gate (scope
`gate`) whose logits keep 7, 11, 10 and 17 channels. The spec uses logits
+-10; we use +-20 so that samples are exact: the logistic noise is bounded by
log(1e6) = 13.8, so sigmoid((+-20 + eps) / 0.001) is exactly 1 or 0.
FLOP coefficients 2 * S_out * K: conv1 2*323*35 = 22610, conv2 2*323*1 = 646,
conv3 2*90*9 = 1620, conv4 646; weight coefficients K: 35, 1, 9, 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import probabilistic_grouping_regularizer as pgr
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import logistic_sigmoid_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.probabilistic_gating import activation_gating
from morph_net.testing import dummy_decorator
from tests import graph_modes

IMAGE_SHAPE = [1, 17, 19, 3]
ON = {'conv1': (7, 13), 'conv2': (11, 23), 'conv3': (10, 29), 'conv4': (17, 31)}
CONV_NAMES = ['conv1/Conv2D', 'conv2/Conv2D', 'conv3/Conv2D', 'conv4/Conv2D']
GATE_OPS = [f'conv{i}/gate/LogisticSigmoidGating' for i in range(1, 5)]
GATE_OUTPUTS = {f'conv{i}': f'conv{i}/gate/mul' for i in range(1, 5)}


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _logits(scope):
  on, total = ON[scope]
  return np.array([20.0] * on + [-20.0] * (total - on), np.float32)


def _const_init(values):
  values = np.asarray(values, np.float32)
  return lambda shape, dtype=None: tf.constant(values)


def gated_four_conv_net(is_training=True, batch_norm_scope=None):
  """The gated 4-conv model; returns net_fn giving (conv3, conv4) outputs."""
  gates = {}

  def conv(x, scope, kernel, filters, stride, var):
    with tf.name_scope(scope):
      rng = np.random.RandomState(len(scope) + filters)
      w = var(scope + '/weights',
              rng.normal(0.0, 0.1, list(kernel) + [int(x.shape[-1]), filters]))
      y = tf.nn.conv2d(x, w, stride, 'SAME')
      if scope == batch_norm_scope:
        with tf.name_scope('BatchNorm'):
          y, _, _ = tf.compat.v1.nn.fused_batch_norm(
              y, var(scope + '/gamma', np.ones(filters)),
              var(scope + '/beta', np.zeros(filters)), is_training=True)
      y = tf.nn.relu(y)
      if scope not in gates:
        gates[scope] = activation_gating.LogisticSigmoidGating(
            log_odds_init=_const_init(_logits(scope)), name='gate')
      return gates[scope](y, is_training=is_training)

  def net_fn(image, var):
    conv1 = conv(image, 'conv1', (7, 5), 13, 1, var)
    conv2 = conv(image, 'conv2', (1, 1), 23, 1, var)
    concat = tf.concat([conv1, conv2], 3, name='concat')
    return (conv(concat, 'conv3', (3, 3), 29, 2, var),
            conv(concat, 'conv4', (1, 1), 31, 1, var))

  return net_fn


def _outputs(built):
  return [t.op for t in built.outputs]


# coeff * A_in * A_out: conv1/conv2 read the image (3 channels, no
# regularizer); conv3/conv4 read the concat of 7 + 11 alive channels.
FLOP_COSTS = [22610 * 7 * 3, 646 * 11 * 3, 1620 * 10 * 18, 646 * 17 * 18]
SIZE_COSTS = [35 * 7 * 3, 1 * 11 * 3, 9 * 10 * 18, 1 * 17 * 18]


def test_flop_costs_are_the_spec_numbers():
  assert FLOP_COSTS == [474810, 21318, 291600, 197676]  # Spec 8.4 (Gamma).


@pytest.mark.parametrize('cls, expected', [
    (flop_regularizer.LogisticSigmoidFlopsRegularizer, FLOP_COSTS),
    (model_size_regularizer.LogisticSigmoidModelSizeRegularizer, SIZE_COSTS),
])
@pytest.mark.parametrize('is_training', [True, False])
def test_costs(mode, cls, expected, is_training):
  built = graph_modes.build(mode, gated_four_conv_net(is_training), IMAGE_SHAPE)
  reg = cls(_outputs(built))
  costs = built.evaluate(
      lambda: [reg.get_cost([built.op(name)]) for name in CONV_NAMES])
  np.testing.assert_allclose(costs, expected, rtol=1e-6)
  assert built.evaluate(reg.get_cost) == pytest.approx(sum(expected), rel=1e-6)


def test_names_and_manager():
  built = graph_modes.build(graph_modes.GRAPH, gated_four_conv_net(), IMAGE_SHAPE)
  flops = flop_regularizer.LogisticSigmoidFlopsRegularizer(_outputs(built))
  size = model_size_regularizer.LogisticSigmoidModelSizeRegularizer(_outputs(built))
  latency = latency_regularizer.LogisticSigmoidLatencyRegularizer(
      _outputs(built), 'V100')
  assert (flops.name, flops.cost_name) == ('LogisticSigmoidFlops', 'FLOPs')
  assert (size.name, size.cost_name) == ('LogisticSigmoidModelSize', 'ModelSize')
  assert (latency.name, latency.cost_name) == ('LogisticSigmoidLatency', 'V100 Latency')
  assert isinstance(flops.op_regularizer_manager, orm.OpRegularizerManager)


@pytest.mark.parametrize('boundary, expected_sources', [
    (None, ['conv1', 'conv2', 'conv3', 'conv4']),
    (['conv3'], ['conv1', 'conv2', 'conv4']),
    (['conv3', 'conv4'], []),
    (['concat'], ['conv3', 'conv4']),
])
def test_source_ops_per_input_boundary(mode, boundary, expected_sources):
  built = graph_modes.build(mode, gated_four_conv_net(), IMAGE_SHAPE)
  input_boundary = None
  if boundary:
    input_boundary = built.ops([GATE_OUTPUTS.get(name, name) for name in boundary])
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      _outputs(built), input_boundary=input_boundary)
  manager = reg.op_regularizer_manager
  sources = sorted(op.name for op in manager.ops if manager.is_source_op(op))
  assert sources == [f'{c}/gate/LogisticSigmoidGating' for c in expected_sources]


def test_batch_norm_is_not_a_source(mode):
  built = graph_modes.build(
      mode, gated_four_conv_net(batch_norm_scope='conv1'), IMAGE_SHAPE)
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(_outputs(built))
  manager = reg.op_regularizer_manager
  assert built.op('conv1/BatchNorm/FusedBatchNormV3') in manager.ops
  sources = sorted(op.name for op in manager.ops if manager.is_source_op(op))
  assert sources == GATE_OPS
  assert built.evaluate(lambda: reg.get_cost([built.op('conv1/Conv2D')])) == (
      pytest.approx(22610 * 7 * 3))


def _regularization_terms(r):
  """FLOP regularization per conv, coeff * (A_in * R_out + A_out * R_in)."""
  return [22610 * (3 * r['conv1']),
          646 * (3 * r['conv2']),
          1620 * (18 * r['conv3'] + 10 * (r['conv1'] + r['conv2'])),
          646 * (18 * r['conv4'] + 17 * (r['conv1'] + r['conv2']))]


@pytest.mark.parametrize('regularize_on_mask', [True, False])
def test_flop_regularization(mode, regularize_on_mask):
  built = graph_modes.build(mode, gated_four_conv_net(), IMAGE_SHAPE)
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      _outputs(built), regularize_on_mask=regularize_on_mask)
  if regularize_on_mask:  # The sampled masks are exactly 1 (on) or 0 (off).
    r = {scope: float(on) for scope, (on, _) in ON.items()}
  else:  # Sums of keep probabilities.
    r = {scope: float(_sigmoid(_logits(scope)).sum()) for scope in ON}
  expected = _regularization_terms(r)
  terms = built.evaluate(lambda: [
      reg.get_regularization_term([built.op(name)]) for name in CONV_NAMES])
  np.testing.assert_allclose(terms, expected, rtol=1e-5)
  assert built.evaluate(reg.get_regularization_term) == pytest.approx(
      sum(expected), rel=1e-5)


def test_decorator_scales_regularization_not_cost(mode):
  built = graph_modes.build(mode, gated_four_conv_net(), IMAGE_SHAPE)
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      _outputs(built), regularizer_decorator=dummy_decorator.DummyDecorator,
      decorator_parameters={'scale': 0.5})
  r = {scope: 0.5 * on for scope, (on, _) in ON.items()}
  term, cost = built.evaluate(lambda: [reg.get_regularization_term(), reg.get_cost()])
  assert term == pytest.approx(sum(_regularization_terms(r)), rel=1e-5)
  assert cost == pytest.approx(sum(FLOP_COSTS), rel=1e-6)


@pytest.mark.parametrize('batch_size', [1, 2])
def test_latency_on_flop_latency_hardware(mode, batch_size):
  built = graph_modes.build(mode, gated_four_conv_net(), IMAGE_SHAPE)
  reg = latency_regularizer.LogisticSigmoidLatencyRegularizer(
      _outputs(built), 'FLOP_LATENCY', batch_size=batch_size)
  # FLOP_LATENCY: peak compute 1, bandwidth 1e20, so every conv is compute
  # bound and costs batch_size * FLOPs; the memory time of the other ops is
  # below 1e-12.
  costs = built.evaluate(lambda: [reg.get_cost([built.op(n)]) for n in CONV_NAMES])
  np.testing.assert_allclose(costs, np.array(FLOP_COSTS) * batch_size, rtol=1e-6)
  assert built.evaluate(reg.get_cost) == pytest.approx(
      sum(FLOP_COSTS) * batch_size, rel=1e-6)


def test_residual_add_of_two_gates_groups_probabilistically(mode):
  gates = {}
  logits = {'gate1': [20.0, 20.0, -20.0, -20.0], 'gate2': [20.0, -20.0, 20.0, -20.0]}

  def net_fn(image, var):
    branches = []
    for i, name in ((1, 'gate1'), (2, 'gate2')):
      with tf.name_scope(f'conv{i}'):
        x = tf.nn.relu(tf.nn.conv2d(
            image, var(f'w{i}', np.ones([3, 3, 3, 4]) * i), 1, 'SAME'))
      if name not in gates:
        gates[name] = activation_gating.LogisticSigmoidGating(
            log_odds_init=_const_init(logits[name]), name=name)
      branches.append(gates[name](x, is_training=False))
    added = tf.add(branches[0], branches[1], name='add')
    with tf.name_scope('conv3'):
      return tf.nn.relu(tf.nn.conv2d(added, var('w3', np.ones([1, 1, 4, 5])), 1, 'SAME'))

  built = graph_modes.build(mode, net_fn, [1, 5, 5, 3])
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer(
      [built.output.op], regularize_on_mask=False)
  manager = reg.op_regularizer_manager
  group_reg = manager.get_regularizer(built.op('add'))
  assert isinstance(group_reg, pgr.ProbabilisticGroupingRegularizer)
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is group_reg
  assert manager.get_regularizer(built.op('conv2/Conv2D')) is group_reg
  # Alive = OR([T,T,F,F], [T,F,T,F]) = 3 channels. Costs 2*25*K*A_in*A_out:
  # conv1/conv2 450 * 3 * 3, conv3 (1x1) 50 * 3 * 5.
  names = ['conv1/Conv2D', 'conv2/Conv2D', 'conv3/Conv2D']
  costs, reg_vector = built.evaluate(lambda: [
      [reg.get_cost([built.op(n)]) for n in names], group_reg.regularization_vector])
  np.testing.assert_allclose(costs, [4050, 4050, 750], rtol=1e-6)
  p1, p2 = _sigmoid(logits['gate1']), _sigmoid(logits['gate2'])
  np.testing.assert_allclose(reg_vector, 1 - (1 - p1) * (1 - p2), rtol=1e-5, atol=1e-7)


def test_base_class_is_abstract_and_unnamed():
  built = graph_modes.build(graph_modes.GRAPH, gated_four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(TypeError, match='abstract'):
    logistic_sigmoid_regularizer.LogisticSigmoidRegularizer(_outputs(built))

  class Minimal(logistic_sigmoid_regularizer.LogisticSigmoidRegularizer):

    def get_calculator(self):
      return 'calculator'

  reg = Minimal(_outputs(built))
  assert (reg.name, reg.cost_name) == ('', '')
  assert reg._calculator == 'calculator'


@pytest.mark.parametrize('threshold', [-0.1, 1.5])
def test_alive_threshold_must_be_a_probability(threshold):
  built = graph_modes.build(graph_modes.GRAPH, gated_four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match='alive_threshold must be in \\[0, 1\\]'):
    flop_regularizer.LogisticSigmoidFlopsRegularizer(
        _outputs(built), alive_threshold=threshold)


def test_latency_rejects_unknown_hardware():
  built = graph_modes.build(graph_modes.GRAPH, gated_four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match='apple'):
    latency_regularizer.LogisticSigmoidLatencyRegularizer(_outputs(built), 'apple')
