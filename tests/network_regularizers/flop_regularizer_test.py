"""Tests for GammaFlopsRegularizer and GroupLassoFlopsRegularizer.

Networks are built with raw ops in both graph modes (`mode` fixture): a
tf.compat.v1 graph evaluated in a session, and a tf.function trace evaluated
eagerly. Expected numbers are derived by hand in the comments.

The module also holds the network builders and the independent per-layer
counts shared with the model-size and latency tests (`Builder`, `WHOLE_NETS`,
`expected_*`).

4-conv model (spec section 8): image [1, 17, 19, 3] -> conv1 (13, 7x5) and conv2
(23, 1x1) -> concat (36) -> conv3 (29, 3x3, stride 2 -> 9x10) and conv4 (31, 1x1).
Standard gammas with threshold 0.45 leave 7, 11, 10, 17 channels alive
(|gamma| sums 6.8, 8.9, 11.7, 14.1). FLOP coefficients 2 * S_out * K:
conv1 2*323*35 = 22610, conv2 2*323*1 = 646, conv3 2*90*9 = 1620, conv4 646.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import flop_regularizer
from morph_net.testing import dummy_decorator
from tests import graph_modes

IMAGE_SHAPE = [1, 17, 19, 3]
STANDARD_GAMMAS = {
    'conv1': [0.8] * 7 + [0.2] * 6,
    'conv2': [-0.7] * 11 + [0.1] * 12,
    'conv3': [0.6] * 10 + [-0.3] * 19,
    'conv4': [-0.5] * 17 + [-0.4] * 14,
}
THRESHOLD = 0.45
CONV_NAMES = ['conv1/Conv2D', 'conv2/Conv2D', 'conv3/Conv2D', 'conv4/Conv2D']


class Builder:
  """Builds conv / depthwise / dense layers with raw ops for `graph_modes`.

  Args:
    var: the `var(name, initial_value)` of `graph_modes.build`.
    gammas: scope -> gamma values of the layer's batch norm (default ones).
    weights: scope -> weight values (default: deterministic random normal).
  """

  def __init__(self, var, gammas=None, weights=None):
    self._var = var
    self._gammas = gammas or {}
    self._weights = weights or {}

  def _weights_var(self, scope, shape):
    if scope in self._weights:
      value = np.asarray(self._weights[scope], np.float32)
    else:
      rng = np.random.RandomState(zlib.crc32(scope.encode()))
      value = rng.normal(0.0, 0.1, shape).astype(np.float32)
    return self._var(scope + '/weights', value)

  def _batch_norm(self, x, scope, channels):
    with tf.name_scope('BatchNorm'):
      gamma = self._var(scope + '/gamma',
                        self._gammas.get(scope, [1.0] * channels))
      beta = self._var(scope + '/beta', np.zeros([channels], np.float32))
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)
    return y

  def conv(self, x, scope, kernel, filters, stride=1, bn=True, relu=True):
    with tf.name_scope(scope):
      shape = list(kernel) + [int(x.shape[-1]), filters]
      y = tf.nn.conv2d(x, self._weights_var(scope, shape), stride, 'SAME')
      if bn:
        y = self._batch_norm(y, scope, filters)
      return tf.nn.relu(y) if relu else y

  def depthwise(self, x, scope, kernel, stride=1, bn=True, relu=True):
    channels = int(x.shape[-1])
    with tf.name_scope(scope):
      w = self._weights_var(scope, list(kernel) + [channels, 1])
      y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], 'SAME')
      if bn:
        y = self._batch_norm(y, scope, channels)
      return tf.nn.relu(y) if relu else y

  def dense(self, x, scope, units, relu=False):
    with tf.name_scope(scope):
      y = tf.matmul(x, self._weights_var(scope, [int(x.shape[-1]), units]))
      return tf.nn.relu(y) if relu else y


def four_conv_net(gammas=None):
  """The 4-conv model; returns (conv3, conv4) layer outputs (ReLUs)."""
  gammas = STANDARD_GAMMAS if gammas is None else gammas

  def net_fn(image, var):
    b = Builder(var, gammas)
    conv1 = b.conv(image, 'conv1', (7, 5), 13)
    conv2 = b.conv(image, 'conv2', (1, 1), 23)
    concat = tf.concat([conv1, conv2], 3, name='concat')
    conv3 = b.conv(concat, 'conv3', (3, 3), 29, stride=2)
    conv4 = b.conv(concat, 'conv4', (1, 1), 31)
    return conv3, conv4

  return net_fn


def output_ops(built):
  return [t.op for t in built.outputs]


# --------------------------------------------------------------------------
# Whole networks (ResNet-, Inception-, MobileNet-style and a dense head) on an
# 8x8x3 image, with an independent per-layer count of FLOPs, weights and
# latency. Gammas are 1 (alive) or 0 (dead) with threshold 0.1; a group's
# alive count is the number of channels alive in *any* of its batch norms.
# --------------------------------------------------------------------------

WHOLE_NET_IMAGE = [1, 8, 8, 3]
WHOLE_NET_THRESHOLD = 0.1


def _pattern(*alive_indices, size):
  return [1.0 if i in alive_indices else 0.0 for i in range(size)]


def resnet_net(image, var, gammas):
  """stem -> two residual blocks (3x3 a: 8->6, 3x3 b: 6->8, add) -> GAP -> fc 5."""
  b = Builder(var, gammas)
  x = b.conv(image, 'stem', (3, 3), 8)
  for block in ('block1', 'block2'):
    y = b.conv(x, block + '/a', (3, 3), 6)
    y = b.conv(y, block + '/b', (3, 3), 8, relu=False)
    x = tf.nn.relu(tf.add(x, y, name=block + '/add'))
  pooled = tf.reduce_mean(x, [1, 2])
  return b.dense(pooled, 'logits', 5)


def resnet_layers(g):
  """Per-layer shapes of resnet_net, g = alive counts of the groups.

  Groups: 'G' = stem, block1/b, block2/b and both adds (8 channels);
  'A1' = block1/a, 'A2' = block2/a (6 channels). All maps are 8x8 = 64.
  """
  G, A1, A2 = g['G'], g['A1'], g['A2']
  layers = [('conv', 64, 64, 9, 3, G), ('bn', 64, G), ('relu', 64, G)]
  for a in (A1, A2):
    layers += [
        ('conv', 64, 64, 9, G, a), ('bn', 64, a), ('relu', 64, a),
        ('conv', 64, 64, 9, a, G), ('bn', 64, G),
        ('add', 64, G), ('relu', 64, G),
    ]
  return layers + [('fc', G, 5)]


RESNET_GAMMAS = {
    'stem': _pattern(0, 1, 2, 3, size=8),
    'block1/b': _pattern(0, 4, size=8),
    'block2/b': _pattern(5, size=8),
    'block1/a': _pattern(0, 1, 5, size=6),
    'block2/a': _pattern(5, size=6),
}
# G = {0, 1, 2, 3} | {0, 4} | {5} -> 6 alive; A1 -> 3; A2 -> 1.
RESNET_ALIVE = {'G': 6, 'A1': 3, 'A2': 1}
RESNET_FULL = {'G': 8, 'A1': 6, 'A2': 6}


def inception_net(image, var, gammas):
  """stem 1x1 (6) -> [1x1 (4) | 1x1 (3) -> 3x3 (5) | maxpool -> 1x1 (3)] -> concat
  (12) -> 1x1 (7) -> GAP -> fc 5."""
  b = Builder(var, gammas)
  stem = b.conv(image, 'stem', (1, 1), 6)
  branch0 = b.conv(stem, 'b0', (1, 1), 4)
  branch1 = b.conv(b.conv(stem, 'b1a', (1, 1), 3), 'b1b', (3, 3), 5)
  pooled = tf.nn.max_pool2d(stem, 3, 1, 'SAME')
  branch2 = b.conv(pooled, 'b2', (1, 1), 3)
  concat = tf.concat([branch0, branch1, branch2], 3, name='concat')
  top = b.conv(concat, 'top', (1, 1), 7)
  return b.dense(tf.reduce_mean(top, [1, 2]), 'logits', 5)


def inception_layers(g):
  """Per-layer shapes of inception_net (8x8 = 64 positions everywhere).

  Each conv has its own group; the max-pool joins the stem's group; the
  concat carries B0 + B1b + B2 channels.
  """
  S, B0, B1a, B1b, B2, T = (g[k] for k in ('S', 'B0', 'B1a', 'B1b', 'B2', 'T'))
  cbr = lambda k, cin, cout: [
      ('conv', 64, 64, k, cin, cout), ('bn', 64, cout), ('relu', 64, cout)]
  return (cbr(1, 3, S) + cbr(1, S, B0) + cbr(1, S, B1a) + cbr(9, B1a, B1b) +
          cbr(1, S, B2) + [('concat', 64, B0 + B1b + B2)] +
          cbr(1, B0 + B1b + B2, T) + [('fc', T, 5)])


INCEPTION_GAMMAS = {
    'stem': _pattern(0, 2, 4, size=6),
    'b0': _pattern(1, size=4),
    'b1a': _pattern(0, 1, size=3),
    'b1b': _pattern(0, 1, 2, 4, size=5),
    'b2': _pattern(size=3),
    'top': _pattern(0, 6, size=7),
}
INCEPTION_ALIVE = {'S': 3, 'B0': 1, 'B1a': 2, 'B1b': 4, 'B2': 0, 'T': 2}
INCEPTION_FULL = {'S': 6, 'B0': 4, 'B1a': 3, 'B1b': 5, 'B2': 3, 'T': 7}


def mobilenet_net(image, var, gammas):
  """conv 3x3/2 (8) -> dw 3x3 -> pw 1x1 (12) -> dw 3x3/2 -> pw 1x1 (16) -> GAP -> fc 5."""
  b = Builder(var, gammas)
  x = b.conv(image, 'conv0', (3, 3), 8, stride=2)
  x = b.conv(b.depthwise(x, 'dw1', (3, 3)), 'pw1', (1, 1), 12)
  x = b.conv(b.depthwise(x, 'dw2', (3, 3), stride=2), 'pw2', (1, 1), 16)
  return b.dense(tf.reduce_mean(x, [1, 2]), 'logits', 5)


def mobilenet_layers(g):
  """Per-layer shapes of mobilenet_net: 8x8 (64) -> 4x4 (16) -> 2x2 (4).

  Groups: G0 = conv0 and dw1 (a depthwise conv keeps its input's channels),
  G1 = pw1 and dw2, G2 = pw2.
  """
  G0, G1, G2 = g['G0'], g['G1'], g['G2']
  return [
      ('conv', 64, 16, 9, 3, G0), ('bn', 16, G0), ('relu', 16, G0),
      ('dw', 16, 16, 9, G0), ('bn', 16, G0), ('relu', 16, G0),
      ('conv', 16, 16, 1, G0, G1), ('bn', 16, G1), ('relu', 16, G1),
      ('dw', 16, 4, 9, G1), ('bn', 4, G1), ('relu', 4, G1),
      ('conv', 4, 4, 1, G1, G2), ('bn', 4, G2), ('relu', 4, G2),
      ('fc', G2, 5),
  ]


MOBILENET_GAMMAS = {
    'conv0': _pattern(0, 1, size=8),
    'dw1': _pattern(1, 2, 7, size=8),
    'pw1': _pattern(3, size=12),
    'dw2': _pattern(3, 4, 5, 6, 11, size=12),
    'pw2': _pattern(*range(9), size=16),
}
# G0 = {0, 1} | {1, 2, 7} -> 4; G1 = {3} | {3, 4, 5, 6, 11} -> 5; G2 -> 9.
MOBILENET_ALIVE = {'G0': 4, 'G1': 5, 'G2': 9}
MOBILENET_FULL = {'G0': 8, 'G1': 12, 'G2': 16}


def dense_head_net(image, var, gammas):
  """conv 3x3 (8) -> GAP -> fc 8->6 -> relu -> fc 6->5 (dense layers without BN)."""
  b = Builder(var, gammas)
  x = b.conv(image, 'conv', (3, 3), 8)
  hidden = b.dense(tf.reduce_mean(x, [1, 2]), 'fc1', 6, relu=True)
  return b.dense(hidden, 'fc2', 5)


def dense_head_layers(g):
  """Per-layer shapes of dense_head_net. fc1 has no source: always 6 alive."""
  C = g['C']
  return [('conv', 64, 64, 9, 3, C), ('bn', 64, C), ('relu', 64, C),
          ('fc', C, 6), ('relu', 1, 6), ('fc', 6, 5)]


DENSE_HEAD_GAMMAS = {'conv': _pattern(2, 3, 5, size=8)}
DENSE_HEAD_ALIVE = {'C': 3}
DENSE_HEAD_FULL = {'C': 8}

# name -> (net_fn, layers_fn, gammas with dead channels, alive counts, full counts)
WHOLE_NETS = {
    'resnet': (resnet_net, resnet_layers, RESNET_GAMMAS, RESNET_ALIVE, RESNET_FULL),
    'inception': (inception_net, inception_layers, INCEPTION_GAMMAS,
                  INCEPTION_ALIVE, INCEPTION_FULL),
    'mobilenet': (mobilenet_net, mobilenet_layers, MOBILENET_GAMMAS,
                  MOBILENET_ALIVE, MOBILENET_FULL),
    'dense_head': (dense_head_net, dense_head_layers, DENSE_HEAD_GAMMAS,
                   DENSE_HEAD_ALIVE, DENSE_HEAD_FULL),
}


def build_whole_net(mode, name, dead_channels):
  """Builds WHOLE_NETS[name]; returns (built, expected per-layer shapes)."""
  net_fn, layers_fn, gammas, alive, full = WHOLE_NETS[name]
  used_gammas = gammas if dead_channels else {}  # {} -> all gammas 1.
  built = graph_modes.build(
      mode, lambda image, var: net_fn(image, var, used_gammas), WHOLE_NET_IMAGE)
  return built, layers_fn(alive if dead_channels else full)


def layer_flops(layer):
  """FLOPs of one layer (batch 1): 2 * S_out * K * C_in * C_out for a conv,
  2 * S_out * K * C for a depthwise conv, 2 * C_in * C_out for a dense layer."""
  kind = layer[0]
  if kind == 'conv':
    _, _, s_out, k, cin, cout = layer
    return 2 * s_out * k * cin * cout
  if kind == 'dw':
    _, _, s_out, k, c = layer
    return 2 * s_out * k * c
  if kind == 'fc':
    _, cin, cout = layer
    return 2 * cin * cout
  return 0


def layer_weights(layer):
  """Weights of one layer: K * C_in * C_out (conv), K * C (depthwise), C_in * C_out."""
  kind = layer[0]
  if kind == 'conv':
    _, _, _, k, cin, cout = layer
    return k * cin * cout
  if kind == 'dw':
    _, _, _, k, c = layer
    return k * c
  if kind == 'fc':
    _, cin, cout = layer
    return cin * cout
  return 0


def layer_bytes(layer, batch_size=1):
  """float32 bytes read + written by one layer (MorphNet's memory model).

  conv: input S_in*C_in*B + weights K*C_in*C_out + output S_out*C_out*B;
  depthwise: the weights count as K*C*C (MorphNet treats them bilinearly);
  dense: C_in*B + C_in*C_out + C_out*B; batch norm and ReLU: input + output
  S*C*B each; add: two inputs + output; concat: input replaced by the output,
  so 2*S*C*B.
  """
  kind, b = layer[0], batch_size
  if kind == 'conv':
    _, s_in, s_out, k, cin, cout = layer
    values = s_in * cin * b + k * cin * cout + s_out * cout * b
  elif kind == 'dw':
    _, s_in, s_out, k, c = layer
    values = s_in * c * b + k * c * c + s_out * c * b
  elif kind == 'fc':
    _, cin, cout = layer
    values = cin * b + cin * cout + cout * b
  elif kind in ('bn', 'relu', 'concat'):
    _, s, c = layer
    values = 2 * s * c * b
  elif kind == 'add':
    _, s, c = layer
    values = 3 * s * c * b
  else:
    raise ValueError(kind)
  return 4 * values


def expected_flops(layers):
  return sum(layer_flops(layer) for layer in layers)


def expected_weights(layers):
  return sum(layer_weights(layer) for layer in layers)


def expected_latency(layers, peak_compute, memory_bandwidth, batch_size=1):
  """Sum over layers of max(FLOPs / peak, bytes / bandwidth)."""
  return sum(
      max(batch_size * layer_flops(layer) / peak_compute,
          layer_bytes(layer, batch_size) / memory_bandwidth)
      for layer in layers)


# --------------------------------------------------------------------------
# Tests.
# --------------------------------------------------------------------------


def test_names():
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  gamma = flop_regularizer.GammaFlopsRegularizer(output_ops(built), THRESHOLD)
  assert (gamma.name, gamma.cost_name) == ('GammaFlops', 'FLOPs')
  assert isinstance(gamma.op_regularizer_manager, orm.OpRegularizerManager)
  lasso = flop_regularizer.GroupLassoFlopsRegularizer(output_ops(built), 0.1)
  assert (lasso.name, lasso.cost_name) == ('GroupLassoFlops', 'FLOPs')


def test_gamma_flops_costs(mode):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer(output_ops(built), THRESHOLD)
  costs = built.evaluate(
      lambda: [reg.get_cost([built.op(name)]) for name in CONV_NAMES])
  # coeff * A_in * A_out: conv1 22610*3*7 (image: 3 channels, no regularizer),
  # conv2 646*3*11, conv3 1620*18*10 and conv4 646*18*17 (concat: 7 + 11).
  expected = [22610 * 7 * 3, 646 * 11 * 3, 1620 * 10 * 18, 646 * 17 * 18]
  assert expected == [474810, 21318, 291600, 197676]
  np.testing.assert_allclose(costs, expected, rtol=1e-6)
  total = built.evaluate(lambda: reg.get_cost(built.ops(CONV_NAMES)))
  assert total == pytest.approx(sum(expected), rel=1e-6)
  # Every other op (batch norms, ReLUs, concat) costs 0 FLOPs.
  assert built.evaluate(reg.get_cost) == pytest.approx(sum(expected), rel=1e-6)


@pytest.mark.parametrize('boundary, expected_sources', [
    (None, ['conv1', 'conv2', 'conv3', 'conv4']),
    (['conv3/Relu'], ['conv1', 'conv2', 'conv4']),
    (['conv3/Relu', 'conv4/Relu'], []),
    (['concat'], ['conv3', 'conv4']),
])
def test_source_ops_per_input_boundary(mode, boundary, expected_sources):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  input_boundary = built.ops(boundary) if boundary else None
  reg = flop_regularizer.GammaFlopsRegularizer(
      output_ops(built), THRESHOLD, input_boundary=input_boundary)
  manager = reg.op_regularizer_manager
  sources = sorted(op.name for op in manager.ops if manager.is_source_op(op))
  assert sources == [f'{c}/BatchNorm/FusedBatchNormV3' for c in expected_sources]


@pytest.mark.parametrize('scale', [None, 0.5])
def test_gamma_flops_regularization(mode, scale):
  built = graph_modes.build(mode, four_conv_net(), IMAGE_SHAPE)
  kwargs = {}
  if scale is not None:
    kwargs = dict(regularizer_decorator=dummy_decorator.DummyDecorator,
                  decorator_parameters={'scale': scale})
  reg = flop_regularizer.GammaFlopsRegularizer(
      output_ops(built), THRESHOLD, **kwargs)
  # coeff * (A_in * R_out + A_out * R_in):
  #   conv1 22610 * (3 * 6.8 + 7 * 0)           = 461244
  #   conv2 646 * (3 * 8.9 + 11 * 0)            = 17248.2
  #   conv3 1620 * (18 * 11.7 + 10 * (6.8 + 8.9)) = 595512
  #   conv4 646 * (18 * 14.1 + 17 * 15.7)       = 336372.2
  # total 1410376.4 (1410376.375 in float32); the decorator scales every R.
  expected = 1410376.4 * (scale or 1.0)
  by_convs, all_ops, empty = built.evaluate(lambda: [
      reg.get_regularization_term(built.ops(CONV_NAMES)),
      reg.get_regularization_term(),
      reg.get_regularization_term([])])
  assert by_convs == pytest.approx(expected, rel=1e-6)
  assert all_ops == pytest.approx(expected, rel=1e-6)
  assert empty == pytest.approx(expected, rel=1e-6)
  # The decorator scales the regularization, not the alive channels.
  cost = built.evaluate(reg.get_cost)
  assert cost == pytest.approx(474810 + 21318 + 291600 + 197676, rel=1e-6)


def _single_conv_net(image, var):
  b = Builder(var, weights={'conv': np.ones([1, 1, 3, 2], np.float32)})
  return b.conv(image, 'conv', (1, 1), 2, relu=False)


@pytest.mark.parametrize('family', ['gamma', 'group_lasso'])
def test_decorated_single_conv(mode, family):
  image_shape = [1, 3, 3, 3]
  if family == 'gamma':
    built = graph_modes.build(mode, _single_conv_net, image_shape)
    reg = flop_regularizer.GammaFlopsRegularizer(
        [built.output.op], 0.1, regularizer_decorator=dummy_decorator.DummyDecorator,
        decorator_parameters={'scale': 0.5})
  else:
    def net_fn(image, var):
      return Builder(var, weights={'conv': np.ones([1, 1, 3, 2])}).conv(
          image, 'conv', (1, 1), 2, bn=False, relu=False)
    built = graph_modes.build(mode, net_fn, image_shape)
    # Every output channel of the all-ones kernel has RMS norm 1 > 0.1.
    reg = flop_regularizer.GroupLassoFlopsRegularizer(
        [built.output.op], 0.1, regularizer_decorator=dummy_decorator.DummyDecorator,
        decorator_parameters={'scale': 0.5})
  # coeff = 2 * 3*3 * 1*1 = 18; two alive channels of regularization 0.5 each.
  # reg = 18 * (A_in * R_out + A_out * R_in) = 18 * (3 * 1 + 2 * 0);
  # cost = 18 * A_in * A_out = 18 * 3 * 2.
  reg_term, cost = built.evaluate(
      lambda: [reg.get_regularization_term(), reg.get_cost()])
  assert reg_term == pytest.approx(18 * 3 * 1)
  assert cost == pytest.approx(18 * 2 * 3)


def _depthwise_variant_net(bn_on_depthwise, gammas):
  """dw1 (3x3 on the image) -> conv1 (13, 7x5); conv2 (23, 1x1) -> dw2 (5x5);
  concat(conv1, dw2) -> conv3 (29, 3x3, stride 2)."""

  def net_fn(image, var):
    b = Builder(var, gammas)
    dw1 = b.depthwise(image, 'dw1', (3, 3), bn=bn_on_depthwise)
    conv1 = b.conv(dw1, 'conv1', (7, 5), 13)
    conv2 = b.conv(image, 'conv2', (1, 1), 23)
    dw2 = b.depthwise(conv2, 'dw2', (5, 5), bn=bn_on_depthwise)
    concat = tf.concat([conv1, dw2], 3, name='concat')
    return b.conv(concat, 'conv3', (3, 3), 29, stride=2)

  return net_fn


@pytest.mark.parametrize('bn_on_depthwise', [True, False])
def test_depthwise_variant(mode, bn_on_depthwise):
  gammas = dict(STANDARD_GAMMAS)
  gammas['dw1'] = [-0.3, -0.9, -0.9]
  gammas['dw2'] = [0.3] * 5 + [0.9] * 10 + [-0.1] * 8
  built = graph_modes.build(
      mode, _depthwise_variant_net(bn_on_depthwise, gammas), IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer(
      [built.output.op], THRESHOLD,
      regularizer_blacklist=['dw1'] if bn_on_depthwise else None)
  names = ['dw1/depthwise', 'conv1/Conv2D', 'conv2/Conv2D', 'dw2/depthwise',
           'conv3/Conv2D']
  costs = built.evaluate(lambda: [reg.get_cost([built.op(n)]) for n in names])
  losses = built.evaluate(
      lambda: [reg.get_regularization_term([built.op(n)]) for n in names])
  # Coefficients 2 * S_out * K: dw1 2*323*9, conv1 2*323*35, conv2 2*323*1,
  # dw2 2*323*25, conv3 2*90*9.
  c_dw1, c1, c2, c_dw2, c3 = 5814, 22610, 646, 16150, 1620
  gamma2 = np.abs(gammas['conv2'])
  if bn_on_depthwise:
    # dw1 is blacklisted: 3 channels, no regularizer. conv2's channels are
    # grouped with dw2's (a depthwise conv keeps its input channels): alive =
    # OR = channels 0..10 | 5..14 = 15; regularization = max of |gammas|.
    alive2 = 15
    reg2 = np.maximum(gamma2, np.abs(gammas['dw2'])).sum()
  else:
    alive2 = 11
    reg2 = gamma2.sum()
  # Depthwise cost c * A_out, regularization c * (R_in + R_out).
  expected_costs = [c_dw1 * 3, c1 * 7 * 3, c2 * alive2 * 3, c_dw2 * alive2,
                    c3 * 10 * (7 + alive2)]
  expected_losses = [
      0.0,  # dw1: no regularizer on its input (the image) nor its output.
      c1 * 3 * 6.8,  # conv1: A_in * R_out with A_in = 3 (dw1 not regularized).
      c2 * 3 * reg2,
      c_dw2 * 2 * reg2,  # R_in = R_out: same group.
      c3 * (10 * (6.8 + reg2) + (7 + alive2) * 11.7),
  ]
  np.testing.assert_allclose(costs, expected_costs, rtol=1e-6)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)


def _random_weights(shape, channel_axis, seed):
  """Random normal weights whose channels are scaled by 0.5..1.5 (RMS ~ scale)."""
  rng = np.random.RandomState(seed)
  scale_shape = [1] * len(shape)
  scale_shape[channel_axis] = shape[channel_axis]
  scales = np.linspace(0.5, 1.5, shape[channel_axis]).reshape(scale_shape)
  return (rng.normal(size=shape) * scales).astype(np.float32)


def test_group_lasso_flops(mode):
  weights = {
      'conv1': _random_weights([7, 5, 3, 13], 3, 1),
      'conv2': _random_weights([1, 1, 3, 23], 3, 2),
      'tconv': _random_weights([3, 3, 29, 3], 2, 3),  # [h, w, out, in]
  }

  def net_fn(image, var):
    b = Builder(var, weights=weights)
    conv1 = b.conv(image, 'conv1', (7, 5), 13, bn=False, relu=False)
    conv2 = b.conv(image, 'conv2', (1, 1), 23, bn=False, relu=False)
    with tf.name_scope('tconv'):
      tconv = tf.nn.conv2d_transpose(
          image, var('tconv/weights', weights['tconv']), [1, 34, 38, 29], 2)
    return conv1, conv2, tconv

  built = graph_modes.build(mode, net_fn, IMAGE_SHAPE)
  reg = flop_regularizer.GroupLassoFlopsRegularizer(output_ops(built), 1.0)
  # Norms: RMS over every axis but the output channels ((0, 1, 2) for a conv,
  # (0, 1, 3) for a transposed conv).
  norms = [np.sqrt(np.mean(weights['conv1'] ** 2, axis=(0, 1, 2))),
           np.sqrt(np.mean(weights['conv2'] ** 2, axis=(0, 1, 2))),
           np.sqrt(np.mean(weights['tconv'] ** 2, axis=(0, 1, 3)))]
  alive = [int(np.sum(n > 1.0)) for n in norms]
  assert all(0 < a < len(n) for a, n in zip(alive, norms))  # a real mix
  # Coefficients: conv1 2*323*35, conv2 2*323*1, tconv 2*S_in*K = 2*323*9.
  coeffs = [22610, 646, 5814]
  # A_in = 3 (the image), R_in = 0: cost = 3 * c * A_out, reg = 3 * c * R_out.
  cost, term = built.evaluate(
      lambda: [reg.get_cost(), reg.get_regularization_term()])
  assert cost == pytest.approx(3 * sum(c * a for c, a in zip(coeffs, alive)))
  assert term == pytest.approx(
      3 * sum(c * n.sum() for c, n in zip(coeffs, norms)), rel=1e-5)


def test_group_lasso_two_layer_mlp(mode):
  w = np.arange(24, dtype=np.float32).reshape([6, 4])
  w2 = np.arange(21, 25, dtype=np.float32).reshape([4, 1])

  def net_fn(x, var):
    h = tf.matmul(x, var('w', w), name='h')
    return tf.matmul(h, var('w2', w2), name='y')

  built = graph_modes.build(mode, net_fn, [2, 6], image_value=1.0)
  # Column RMS of w: sqrt(mean([0,4,..,20]^2)) = sqrt(880/6) = 12.11, then
  # sqrt(1006/6) = 12.95, sqrt(1144/6) = 13.81, sqrt(1294/6) = 14.69; of w2:
  # sqrt(2030/4) = 22.53. (The spec quotes the L2 norms 29.66, ..., 45.06 with
  # threshold 32; GroupLassoRegularizer uses the RMS, hence 13.5 here.)
  reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 13.5)
  r1 = np.sqrt(np.mean(w ** 2, axis=0))
  r2 = np.sqrt(np.mean(w2 ** 2, axis=0))
  np.testing.assert_allclose(r1, [12.11, 12.95, 13.81, 14.69], atol=0.01)
  cost, term = built.evaluate(
      lambda: [reg.get_cost(), reg.get_regularization_term()])
  # h: 2 * A_in * A_out = 2 * 6 * 2 (columns 2, 3 alive); y: 2 * 2 * 1.
  assert cost == pytest.approx(2 * 6 * 2 + 2 * 2 * 1)
  assert cost == pytest.approx(28)
  # h: 2 * (6 * R_h + 2 * 0); y: 2 * (A_h * R_y + A_y * R_h) = 2 * (2 * r2 + 1 * R_h).
  assert term == pytest.approx(
      2 * 6 * r1.sum() + 2 * (2 * r2.sum() + 1 * r1.sum()), rel=1e-5)


def test_group_lasso_conv3d(mode):
  # Channel c of the kernel is +-v_c, so its RMS norm is exactly v_c.
  values = np.array([0.05, 0.1, 0.2, 0.08, 0.12], np.float32)
  signs = np.sign(np.random.RandomState(4).normal(size=[3, 3, 3, 1, 5]))
  kernel = (signs * values).astype(np.float32)

  def net_fn(image, var):
    with tf.name_scope('conv3d'):
      return tf.nn.conv3d(image, var('conv3d/weights', kernel),
                          [1, 1, 1, 1, 1], 'VALID')

  built = graph_modes.build(mode, net_fn, [2, 3, 3, 3, 1])
  reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 0.09)
  cost, term = built.evaluate(
      lambda: [reg.get_cost(), reg.get_regularization_term()])
  # Output 1x1x1 per image, kernel 3*3*3: coeff 2 * 1 * 27 = 54; A_in = 1.
  # Alive: 0.1, 0.2, 0.12 > 0.09 -> 3; regularization sum 0.55.
  assert cost == pytest.approx(54 * 3)
  assert term == pytest.approx(54 * 0.55, rel=1e-5)


@pytest.mark.parametrize('name', sorted(WHOLE_NETS))
@pytest.mark.parametrize('dead_channels', [False, True], ids=['all_alive', 'dead'])
def test_whole_network_flops(mode, name, dead_channels):
  built, layers = build_whole_net(mode, name, dead_channels)
  reg = flop_regularizer.GammaFlopsRegularizer(
      [built.output.op], WHOLE_NET_THRESHOLD)
  assert built.evaluate(reg.get_cost) == pytest.approx(
      expected_flops(layers), rel=1e-6)


def test_dense_head_group_lasso_flops(mode):
  # Columns of constant magnitude: RMS norm = magnitude. Threshold 0.5.
  conv_mag = np.array([1, 0, 1, 1, 0, 0, 1, 1], np.float32)  # 5 alive
  fc1_mag = np.array([0.2, 1, 1, 0.2, 0.2, 1], np.float32)  # 3 alive
  fc2_mag = np.array([1, 1, 0.3, 1, 0.3], np.float32)  # 3 alive
  weights = {
      'conv': np.ones([3, 3, 3, 8], np.float32) * conv_mag,
      'fc1': -np.ones([8, 6], np.float32) * fc1_mag,
      'fc2': np.ones([6, 5], np.float32) * fc2_mag,
  }

  def net_fn(image, var):
    b = Builder(var, weights=weights)
    x = b.conv(image, 'conv', (3, 3), 8, bn=False)
    hidden = b.dense(tf.reduce_mean(x, [1, 2]), 'fc1', 6, relu=True)
    return b.dense(hidden, 'fc2', 5)

  built = graph_modes.build(mode, net_fn, WHOLE_NET_IMAGE)
  reg = flop_regularizer.GroupLassoFlopsRegularizer([built.output.op], 0.5)
  # conv 2*64*9*3*5; fc1 2*5*3 (its input is the pooled conv: 5 alive);
  # fc2 2*3*3.
  expected = 2 * 64 * 9 * 3 * 5 + 2 * 5 * 3 + 2 * 3 * 3
  assert built.evaluate(reg.get_cost) == pytest.approx(expected)
  # Regularization: conv 2*64*9*(3*R_conv); fc1 2*(5*R_fc1 + 3*R_conv);
  # fc2 2*(3*R_fc2 + 3*R_fc1).
  r_conv, r_fc1, r_fc2 = conv_mag.sum(), fc1_mag.sum(), fc2_mag.sum()
  expected_term = (2 * 64 * 9 * 3 * r_conv + 2 * (5 * r_fc1 + 3 * r_conv) +
                   2 * (3 * r_fc2 + 3 * r_fc1))
  assert built.evaluate(reg.get_regularization_term) == pytest.approx(
      expected_term, rel=1e-5)


def test_cost_follows_variables_in_every_context():
  """One regularizer on a trace, read eagerly and inside a tf.function."""
  built = graph_modes.build(graph_modes.TRACED, four_conv_net(), IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer(output_ops(built), THRESHOLD)
  cost_fn = tf.function(reg.get_cost)
  assert float(reg.get_cost()) == pytest.approx(985404, rel=1e-6)
  assert float(cost_fn()) == pytest.approx(985404, rel=1e-6)
  # Kill conv1's seven alive channels: conv1 then costs 0 and the concat
  # feeding conv3 / conv4 has 11 alive channels instead of 18:
  # 0 + 21318 + 1620*10*11 + 646*17*11 = 21318 + 178200 + 120802.
  built.variables['conv1/gamma'].assign(np.zeros([13], np.float32))
  assert float(reg.get_cost()) == pytest.approx(320320, rel=1e-6)
  assert float(cost_fn()) == pytest.approx(320320, rel=1e-6)


def test_regularization_term_is_differentiable_in_gammas():
  built = graph_modes.build(graph_modes.TRACED, four_conv_net(), IMAGE_SHAPE)
  reg = flop_regularizer.GammaFlopsRegularizer(output_ops(built), THRESHOLD)
  gammas = [built.variables[f'conv{i}/gamma'] for i in range(1, 5)]
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  grads = tape.gradient(term, gammas)
  # d term / d gamma_i = sign(gamma_i) * sum over terms where R of its group
  # appears: conv1: own 22610*3 + via the concat conv3 1620*10 + conv4 646*17
  # = 95012; conv2: 646*3 + 16200 + 10982 = 29120; conv3: 1620*18 = 29160;
  # conv4: 646*18 = 11628.
  for grad, name, factor in zip(grads, ['conv1', 'conv2', 'conv3', 'conv4'],
                                [95012, 29120, 29160, 11628]):
    np.testing.assert_allclose(
        grad.numpy(), np.sign(STANDARD_GAMMAS[name]) * factor, rtol=1e-6)


def test_sgd_on_regularized_loss_lowers_cost():
  variables = {}

  def var(name, initial_value):
    if name not in variables:
      with tf.init_scope():
        variables[name] = tf.Variable(np.asarray(initial_value, np.float32),
                                      name=name)
    return variables[name]

  net_fn = four_conv_net()
  model = tf.function(lambda image: net_fn(image, var))
  concrete = model.get_concrete_function(tf.TensorSpec(IMAGE_SHAPE, tf.float32))
  reg = flop_regularizer.GammaFlopsRegularizer(
      [t.op for t in concrete.structured_outputs], THRESHOLD)
  image = tf.constant(np.random.RandomState(0).normal(size=IMAGE_SHAPE),
                      tf.float32)
  strength, learning_rate = 1e-5, 0.1
  costs = [float(reg.get_cost())]
  for _ in range(6):
    with tf.GradientTape() as tape:
      outputs = model(image)
      task_loss = 1e-3 * tf.add_n([tf.reduce_mean(o ** 2) for o in outputs])
      loss = task_loss + strength * reg.get_regularization_term()
    trainable = list(variables.values())
    for v, g in zip(trainable, tape.gradient(loss, trainable)):
      if g is not None:
        v.assign_sub(learning_rate * g)
    costs.append(float(reg.get_cost()))
  # The conv1 gammas get a gradient of ~0.95 per step (95012 * 1e-5), so
  # 0.8 falls below the 0.45 threshold within four steps.
  assert costs[0] == pytest.approx(985404, rel=1e-6)
  assert all(later <= earlier for earlier, later in zip(costs, costs[1:]))
  assert costs[-1] < costs[0]


@pytest.mark.parametrize('kwargs, match', [
    (dict(gamma_threshold=-0.1), r'Received: gamma_threshold=-0.1'),
])
def test_gamma_rejects_negative_threshold(kwargs, match):
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match=match):
    flop_regularizer.GammaFlopsRegularizer(output_ops(built), **kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(threshold=-1.0), r'threshold must be non-negative.*Received: threshold=-1.0'),
    (dict(threshold=0.1, l1_fraction=1.5), r'Received: l1_fraction=1.5'),
    (dict(threshold=0.1, l1_fraction=-0.2), r'Received: l1_fraction=-0.2'),
])
def test_group_lasso_rejects_bad_arguments(kwargs, match):
  built = graph_modes.build(graph_modes.GRAPH, four_conv_net(), IMAGE_SHAPE)
  with pytest.raises(ValueError, match=match):
    flop_regularizer.GroupLassoFlopsRegularizer(output_ops(built), **kwargs)
