"""MorphNet on `keras.applications` architectures (issue 4, "Coverage").

For each architecture, built with `weights=None` (no download) and a small valid
input, the test checks that:
  1. `GammaFlopsRegularizer.from_keras_model` analyses it;
  2. every BatchNormalization layer whose inbound layer is a Conv2D /
     DepthwiseConv2D / SeparableConv2D / Dense is a gamma source of that
     layer's op: setting this BN's gammas above 1 (all others at 1, their
     initial value) makes the op's regularization vector equal these gammas
     exactly. Grouped BNs (residual adds, depthwise convolutions, concats) are
     combined by element-wise max, so the BN under test is the max of its group;
     equality also checks that channels are neither permuted nor offset;
  3. `get_cost()` with every channel alive equals the FLOP count of the
     independent counter `flop_count` (derived from layer configs only).

VGG16 has no BatchNormalization and InceptionV3 uses `scale=False` everywhere:
neither has a gamma, so GammaFlopsRegularizer rejects them with the documented
ValueError, and their FLOPs are checked with GroupLassoFlopsRegularizer.

Only cheap models run in the default suite (`-m "not slow"`); run all of them
with `-m slow`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import keras
import numpy as np
import pytest

from morph_net.network_regularizers import flop_regularizer
from tests.keras_integration import flop_count

THRESHOLD = 1e-3
_CONV_OP_TYPES = {
    # Layer class -> type of the op whose output channels the BN normalizes.
    # A SeparableConv2D is DepthwiseConv2dNative -> Conv2D (the pointwise one).
    keras.layers.Conv2D: 'Conv2D',
    keras.layers.SeparableConv2D: 'Conv2D',
    keras.layers.DepthwiseConv2D: 'DepthwiseConv2dNative',
    keras.layers.Dense: 'MatMul',
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One architecture: constructor name, input size, whether it has gammas."""
  name: str
  size: int
  has_gamma: bool = True

  def build(self) -> keras.Model:
    constructor = getattr(keras.applications, self.name)
    return constructor(weights=None, input_shape=(self.size, self.size, 3),
                       include_top=True, classes=10)

  @property
  def input_shape(self):
    return (1, self.size, self.size, 3)


# Sizes: 96x96 is valid for all (InceptionV3 needs >= 75, Xception >= 71; with
# weights=None NASNetMobile and MobileNet accept any size >= 32).
FAST = ('MobileNetV3Small', 'MobileNet', 'VGG16')
CASES = [
    Case('ResNet50', 96), Case('ResNet101', 96), Case('ResNet50V2', 96),
    Case('MobileNet', 96), Case('MobileNetV2', 96), Case('MobileNetV3Small', 96),
    Case('DenseNet121', 96), Case('InceptionV3', 96, has_gamma=False),
    Case('Xception', 96), Case('EfficientNetB0', 96),
    Case('VGG16', 96, has_gamma=False), Case('NASNetMobile', 96),
]


def _param(case: Case):
  marks = () if case.name in FAST else (pytest.mark.slow,)
  return pytest.param(case, id=case.name, marks=marks)


@dataclasses.dataclass
class Analysed:
  case: Case
  model: keras.Model
  regularizer: object


def analyse(case: Case) -> Analysed:
  """Builds the model and its FLOP regularizer (Gamma, or GroupLasso without gammas)."""
  keras.backend.clear_session()
  model = case.build()
  if case.has_gamma:
    reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, gamma_threshold=THRESHOLD, input_shape=case.input_shape)
  else:
    # Initial kernels are random, so every group-lasso norm is > 1e-9: all alive.
    reg = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(
        model, threshold=1e-9, input_shape=case.input_shape)
  return Analysed(case, model, reg)


@pytest.fixture(scope='module', params=[_param(c) for c in CASES])
def analysed(request) -> Analysed:
  # Module scope: pytest groups the tests by model and builds each model once.
  return analyse(request.param)


def _conv_bn_pairs(model: keras.Model):
  """(conv layer, BN layer) for every scaled BN whose inbound layer is a conv/dense."""
  pairs = []
  for layer in model.layers:
    if not isinstance(layer, keras.layers.BatchNormalization) or not layer.scale:
      continue
    parents = layer._inbound_nodes[0].parent_nodes
    if len(parents) != 1:
      continue
    inbound = parents[0].operation
    if type(inbound) in _CONV_OP_TYPES:
      pairs.append((inbound, layer))
  return pairs


def _ops_by_layer(regularizer) -> Dict[str, list]:
  traced = regularizer.traced_model
  ops = {}
  for op in traced.graph.get_operations():
    name = traced.layer_name_of(op)
    if name is not None:
      ops.setdefault(name, []).append(op)
  return ops


def test_analysis_completes(analysed):
  manager = analysed.regularizer.op_regularizer_manager
  assert manager.ops
  # Every conv / dense layer of the model is reached by the crawl.
  ops_by_layer = _ops_by_layer(analysed.regularizer)
  weighted = [layer.name for layer in analysed.model.layers
              if type(layer) in _CONV_OP_TYPES]
  assert weighted
  for name in weighted:
    assert any(op in manager.ops for op in ops_by_layer[name]), name


def test_flops_match_independent_count(analysed):
  expected = flop_count.model_flops(analysed.model)
  cost = float(analysed.regularizer.get_cost())
  # get_cost sums float32 terms: compare to a relative 1e-6.
  assert cost == pytest.approx(expected, rel=1e-6)


def test_batch_norm_after_conv_is_gamma_source(analysed):
  if not analysed.case.has_gamma:
    pytest.skip('no gamma in this model: see test_gamma_rejects_model_without_gamma')
  manager = analysed.regularizer.op_regularizer_manager
  ops_by_layer = _ops_by_layer(analysed.regularizer)
  pairs = _conv_bn_pairs(analysed.model)
  assert pairs
  rng = np.random.default_rng(0)
  for conv, bn in pairs:
    op_type = _CONV_OP_TYPES[type(conv)]
    conv_ops = [op for op in ops_by_layer[conv.name] if op.type == op_type]
    assert len(conv_ops) == 1, (conv.name, conv_ops)
    channels = bn.gamma.shape[0]
    # All other gammas are 1 (Keras init): values in (1, 2) make this BN the max
    # of its group, so the group's vector is exactly these values.
    assert np.all(keras.ops.convert_to_numpy(bn.gamma) == 1.0), bn.name
    gamma = rng.uniform(1.1, 2.0, channels).astype(np.float32)
    gamma[::3] *= -1.0  # The vector is |gamma|.
    bn.gamma.assign(gamma)
    try:
      regularizer = manager.get_regularizer(conv_ops[0])
      assert regularizer is not None, (conv.name, bn.name)
      vector = np.asarray(regularizer.regularization_vector)
      np.testing.assert_array_equal(vector, np.abs(gamma), err_msg=f'{conv.name} -> {bn.name}')
    finally:
      bn.gamma.assign(np.ones(channels, np.float32))


def test_every_scaled_batch_norm_is_a_source(analysed):
  if not analysed.case.has_gamma:
    pytest.skip('no gamma in this model')
  manager = analysed.regularizer.op_regularizer_manager
  traced = analysed.regularizer.traced_model
  sources = {traced.layer_name_of(op) for op in manager.ops if manager.is_source_op(op)}
  scaled = {layer.name for layer in analysed.model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and layer.scale}
  assert scaled == sources


@pytest.mark.parametrize('case', [_param(c) for c in CASES if not c.has_gamma])
def test_gamma_rejects_model_without_gamma(case):
  keras.backend.clear_session()
  model = case.build()
  bns = [layer for layer in model.layers
         if isinstance(layer, keras.layers.BatchNormalization)]
  # VGG16 has no BN; InceptionV3's BNs all have scale=False.
  assert all(not bn.scale for bn in bns)
  with pytest.raises(ValueError, match='found no op to regularize.*GroupLassoFlopsRegularizer'):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, gamma_threshold=THRESHOLD, input_shape=case.input_shape)


# Small hand-checked models: the counter's formulas (including the paths the
# applications above do not use) and gaps of the cost model.


def test_flop_count_and_get_cost_on_every_costed_layer_type():
  L = keras.layers
  inputs = keras.Input((11, 13, 5))
  x = L.Conv2D(7, 3, strides=2, padding='same', name='conv')(inputs)  # -> 6x7x7
  x = L.BatchNormalization()(x)
  x = L.DepthwiseConv2D(3, depth_multiplier=2, padding='same', name='dw')(x)  # -> 6x7x14
  x = L.BatchNormalization()(x)
  x = L.SeparableConv2D(4, 3, name='sep')(x)  # valid: -> 4x5x4
  x = L.BatchNormalization()(x)
  x = L.Conv2DTranspose(3, 2, strides=2, name='convt')(x)  # -> 8x10x3
  x = L.Reshape((80, 3))(x)
  x = L.Dense(6, name='dense3d')(x)  # on a 3-D input: (80, 3) -> (80, 6)
  x = L.Flatten()(x)  # 480
  outputs = L.Dense(2, name='head')(x)
  model = keras.Model(inputs, outputs)
  expected = {
      # 2 * H_out * W_out * kh * kw * C_in * C_out = 2*6*7*3*3*5*7
      'conv': 2 * 6 * 7 * 3 * 3 * 5 * 7,  # 26460
      # 2 * H_out * W_out * kh * kw * C * multiplier = 2*6*7*3*3*7*2
      'dw': 2 * 6 * 7 * 3 * 3 * 7 * 2,  # 10584
      # depthwise 2*4*5*3*3*14*1 + pointwise 2*4*5*14*4
      'sep': 2 * 4 * 5 * 3 * 3 * 14 + 2 * 4 * 5 * 14 * 4,  # 7280
      # 2 * S_in * K * C_in * C_out, S_in = 4*5 (input spatial size), K = 2*2
      'convt': 2 * 4 * 5 * 2 * 2 * 4 * 3,  # 1920
      # 2 * rows * C_in * C_out: a Dense on a rank-3 input multiplies its 80
      # rows (the original counted 2 * 3 * 6 = 36, whatever the rows).
      'dense3d': 2 * 80 * 3 * 6,  # 2880
      'head': 2 * 480 * 2,  # 1920
  }
  assert flop_count.flops_by_layer(model) == expected
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=THRESHOLD)
  assert float(reg.get_cost()) == sum(expected.values())  # 51044


def test_get_cost_of_dilated_conv():
  inputs = keras.Input((11, 13, 4))
  x = keras.layers.Conv2D(6, 3, padding='same', dilation_rate=2)(inputs)
  model = keras.Model(inputs, keras.layers.BatchNormalization()(x))
  # 2 * H_out * W_out * kh * kw * C_in * C_out, SAME: output 11x13. (TF traces
  # SpaceToBatchND -> Conv2D -> BatchToSpaceND; the Conv2D's own output is
  # (4, 6, 7, 6), which the original under-counted as 2*6*7*9*4*6 = 18144.)
  expected = 2 * 11 * 13 * 3 * 3 * 4 * 6  # 61776
  assert flop_count.model_flops(model) == expected
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=THRESHOLD)
  assert float(reg.get_cost()) == expected


def test_get_cost_of_grouped_conv():
  # Keras 3 runs a grouped Conv2D in a nested tf.function; tracing makes it a
  # plain Conv2D op whose filter sees C_in / groups channels.
  inputs = keras.Input((11, 13, 4))
  x = keras.layers.Conv2D(6, 3, padding='same', groups=2)(inputs)
  model = keras.Model(inputs, keras.layers.BatchNormalization()(x))
  # 2 * H_out * W_out * kh * kw * C_in * C_out / groups = 2*11*13*3*3*4*6/2
  expected = 2 * 11 * 13 * 3 * 3 * 4 * 6 // 2  # 30888
  assert flop_count.model_flops(model) == expected
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=THRESHOLD)
  assert float(reg.get_cost()) == expected
