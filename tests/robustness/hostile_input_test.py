"""Hostile inputs (issue 7): each gets a clear error naming what was received.

Covered: empty / non-op boundaries; an output boundary not downstream of the
input boundary; thresholds outside their range; unknown hardware; Gamma on a
model without BatchNormalization; unknown op types (registration hint,
grouped convolutions, ops that never align); dynamic shapes; NaN / Inf
gammas and kernels; corrupted, truncated or foreign structure files; an
unwritable export directory. Where a write fails, what was written before is
intact.

FLOP coefficients used below (batch 1): a 3x3 conv on an 8x8 input with SAME
padding costs 2 * 8*8 * 3*3 = 1152 per (input, output) channel pair; a 1x1
conv 2 * 8*8 = 128.
"""

from __future__ import annotations

import json
import logging
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_handler_registry
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.keras_integration import callback
from morph_net.keras_integration import model_analysis
from morph_net.keras_integration import shrink
from morph_net.keras_integration.layer_structure import LayerStructureExporter
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.tools import structure_exporter
from tests import graph_modes

layers = keras.layers
C3X3 = 2 * 8 * 8 * 3 * 3  # 1152
C1X1 = 2 * 8 * 8  # 128


def _bn_model(name='m'):
  """8x8x3 -> c1 (3x3, 4) -> bn1 -> c2 (1x1, 5) -> bn2 -> gap -> fc (2)."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = layers.BatchNormalization(name='bn1')(x)
  x = layers.Conv2D(5, 1, name='c2')(layers.ReLU(name='r1')(x))
  x = layers.BatchNormalization(name='bn2')(x)
  x = layers.GlobalAveragePooling2D(name='gap')(layers.ReLU(name='r2')(x))
  return keras.Model(inputs, layers.Dense(2, name='fc')(x), name=name)


# c1 3*4 pairs of 3x3, c2 4*5 pairs of 1x1, fc 2*5*2.
BN_MODEL_FLOPS = C3X3 * 3 * 4 + C1X1 * 4 * 5 + 2 * 5 * 2


def _conv_bn_net(image, var):
  with tf.name_scope('conv'):
    x = tf.nn.conv2d(image, var('w', np.ones([3, 3, 3, 4])), 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var('gamma', np.ones(4)), var('beta', np.zeros(4)), is_training=True)
  return tf.nn.relu(x, name='output')


# ---------------------------------------------------------------------------
# Boundaries.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('boundary, error, match', [
    ([], ValueError, r'output_boundary must be a non-empty list.*Received: output_boundary=\[\]'),
    (None, ValueError, 'Received: output_boundary=None'),
    ('logits', TypeError, "Received: output_boundary='logits' of type str"),
    ([3], TypeError, 'Received: 3 of type int'),
])
def test_empty_or_non_op_output_boundary(boundary, error, match):
  with pytest.raises(error, match=match):
    flop_regularizer.GammaFlopsRegularizer(boundary, gamma_threshold=0.1)


def test_empty_output_boundary_is_accepted_by_the_manager_only():
  # Issue 14: OpRegularizerManager([]) is accepted, as in the original (its
  # users drive such a manager op by op); a network regularizer on [] would
  # cost nothing, so it is still rejected (above).
  with tf.Graph().as_default():
    manager = orm.OpRegularizerManager([], {})
    assert manager.ops == set()


def test_tensor_instead_of_op_in_boundary(mode):
  built = graph_modes.build(mode, _conv_bn_net, [1, 8, 8, 3])
  output = built.op('output').outputs[0]
  with pytest.raises(TypeError, match=r"not tensors. Received: the tensor 'output:0'; "
                     r'pass `tensor.op`'):
    flop_regularizer.GammaFlopsRegularizer([output], gamma_threshold=0.1)
  with pytest.raises(TypeError, match='input_boundary must contain tf.Operation'):
    flop_regularizer.GammaFlopsRegularizer([output.op], 0.1, input_boundary=[built.image])


def test_output_boundary_inside_input_boundary_warns(mode, caplog):
  # Graph level: the original's empty result is kept (a spec-8 behaviour),
  # now with a warning; from_keras_model rejects it (next tests).
  built = graph_modes.build(mode, _conv_bn_net, [1, 8, 8, 3])
  output = built.op('output')
  with caplog.at_level(logging.WARNING):
    reg = flop_regularizer.GammaFlopsRegularizer([output], 0.1, input_boundary=[output])
  assert reg.op_regularizer_manager.ops == set()
  assert ("found no op to analyse: every op of output_boundary is also in "
          "input_boundary (['output'])") in caplog.text


def test_unreached_input_boundary_warns(mode, caplog):
  def net(image, var):
    out = _conv_bn_net(image, var)
    tf.nn.relu(image, name='side')  # Not upstream of 'output'.
    return out

  built = graph_modes.build(mode, net, [1, 8, 8, 3])
  with caplog.at_level(logging.WARNING):
    reg = flop_regularizer.GammaFlopsRegularizer(
        [built.op('output')], 0.1, input_boundary=[built.op('side')])
  assert "not reached from the output boundary and stop nothing: ['side']" in caplog.text
  # The analysis is the same as without the stray boundary: 3 * 4 pairs.
  assert built.evaluate(reg.get_cost) == pytest.approx(C3X3 * 3 * 4)


def test_keras_input_layers_not_upstream_are_rejected():
  model = _bn_model()
  with pytest.raises(ValueError, match=r"input_layers \['fc'\] are not upstream of the "
                     r"output boundary.*Received: input_layers=\['fc'\]"):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, 0.1, output_layers=['bn2'], input_layers=['fc'])
  with pytest.raises(ValueError, match=r"Nothing to analyse: every op of the output "
                     r"boundary is also in the input boundary.*input_layers=\['bn2'\]"):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, 0.1, output_layers=['bn2'], input_layers=['bn2'])


# ---------------------------------------------------------------------------
# Thresholds, hardware.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('cls, kwargs, error, match', [
    (flop_regularizer.GammaFlopsRegularizer, dict(gamma_threshold=-0.1), ValueError,
     r'gamma_threshold must be non-negative.*Received: gamma_threshold=-0.1'),
    (flop_regularizer.GammaFlopsRegularizer, dict(gamma_threshold=float('nan')), ValueError,
     r'gamma_threshold must be a finite number >= 0.*Received: gamma_threshold=nan'),
    (flop_regularizer.GroupLassoFlopsRegularizer, dict(threshold=float('inf')), ValueError,
     r'threshold must be a finite number >= 0.*Received: threshold=inf'),
    (model_size_regularizer.GammaModelSizeRegularizer, dict(gamma_threshold='0.1'),
     TypeError, r"gamma_threshold must be a number. Received: gamma_threshold='0.1'"),
    (flop_regularizer.GroupLassoFlopsRegularizer, dict(threshold=0.1, l1_fraction=1.5),
     ValueError, r'l1_fraction should be in \[0.0, 1.0\].*Received: l1_fraction=1.5'),
    (flop_regularizer.GroupLassoFlopsRegularizer,
     dict(threshold=0.1, l1_fraction=float('nan')), ValueError, 'Received: l1_fraction=nan'),
    (flop_regularizer.LogisticSigmoidFlopsRegularizer, dict(alive_threshold=1.5), ValueError,
     r'alive_threshold must be in \[0, 1\].*Received: alive_threshold=1.5'),
    (latency_regularizer.GammaLatencyRegularizer,
     dict(gamma_threshold=0.1, hardware='V100', batch_size=0), ValueError,
     'Received: batch_size=0'),
])
def test_thresholds_outside_their_range(mode, cls, kwargs, error, match):
  built = graph_modes.build(mode, _conv_bn_net, [1, 8, 8, 3])
  with pytest.raises(error, match=match):
    cls([built.op('output')], **kwargs)


@pytest.mark.parametrize('hardware', ['H100', 'v100', None])
def test_unknown_hardware_lists_the_valid_ones(hardware):
  with pytest.raises(ValueError, match=(
      rf"Hardware {hardware} must be in \['K80', 'P4', 'T4', 'P100', 'V100', 'TPUv2', "
      rf"'FLOP_LATENCY', 'MEMORY_LATENCY'\]. Received: hardware={hardware!r}")):
    latency_regularizer.GammaLatencyRegularizer.from_keras_model(
        _bn_model(), gamma_threshold=0.1, hardware=hardware)


@pytest.mark.parametrize('cls, args, suggestion', [
    (flop_regularizer.GammaFlopsRegularizer, (0.1,), 'GroupLassoFlopsRegularizer'),
    (model_size_regularizer.GammaModelSizeRegularizer, (0.1,),
     'GroupLassoModelSizeRegularizer'),
    (latency_regularizer.GammaLatencyRegularizer, (0.1, 'V100'),
     'GroupLassoLatencyRegularizer'),
])
def test_gamma_without_batch_norm_suggests_group_lasso(cls, args, suggestion):
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3)(inputs)
  model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)), name='no_bn')
  with pytest.raises(ValueError, match=rf"found no op to regularize in model 'no_bn'.*"
                     rf'use the GroupLasso counterpart \({suggestion}\)'):
    cls.from_keras_model(model, *args)


# ---------------------------------------------------------------------------
# Unknown op types.
# ---------------------------------------------------------------------------


def _cumsum_net(image, var):
  out = _conv_bn_net(image, var)
  return tf.math.cumsum(out, axis=1, name='cumsum')


def test_unknown_op_type_error_policy_hints_registration(mode):
  built = graph_modes.build(mode, _cumsum_net, [1, 8, 8, 3])
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.unknown_op_policy = 'error'
  handlers.register('FusedBatchNormV3', flop_regularizer._gamma_op_handler_dict(
      0.1, None, None)['FusedBatchNormV3'])
  with pytest.raises(errors.UnsupportedOpError,
                     match=r"Received: op='cumsum' of type 'Cumsum'. To support it, "
                     'register a handler for its type'):
    orm.OpRegularizerManager([built.op('cumsum')], handlers)


def test_unknown_op_type_default_policy_warns_once(mode, caplog):
  built = graph_modes.build(mode, _cumsum_net, [1, 8, 8, 3])
  with caplog.at_level(logging.WARNING):
    reg = flop_regularizer.GammaFlopsRegularizer([built.op('cumsum')], 0.1)
  assert caplog.text.count("no op handler for op type 'Cumsum'") == 1
  assert built.evaluate(reg.get_cost) == pytest.approx(C3X3 * 3 * 4)


def _grouped_conv_model(batch_norm=True):
  inputs = keras.Input((8, 8, 4))
  x = layers.Conv2D(6, 3, padding='same', groups=2, name='grouped')(inputs)
  if batch_norm:
    x = layers.BatchNormalization(name='bn')(x)
  x = layers.Conv2D(3, 1, name='head')(x)
  return keras.Model(inputs, layers.BatchNormalization(name='bn_head')(x))


@pytest.mark.parametrize('cls, args, batch_norm', [
    (flop_regularizer.GammaFlopsRegularizer, (0.1,), True),
    (flop_regularizer.GammaFlopsRegularizer, (0.1,), False),
    (flop_regularizer.GroupLassoFlopsRegularizer, (0.1,), True),
])
def test_grouped_conv_is_costed(cls, args, batch_norm):
  # Before: Keras' nested tf.function for groups > 1 hid the conv (a
  # StatefulPartitionedCall) and the analysis was rejected. Tracing now makes
  # it a Conv2D op whose filter sees C_in / groups channels.
  start = time.perf_counter()
  reg = cls.from_keras_model(_grouped_conv_model(batch_norm), *args)
  # grouped: 2 * 8*8 * 3*3 * C_in * C_out / groups = 2*64*9*4*6/2 = 13824;
  # head: 2 * 8*8 * 6 * 3 = 2304.
  assert float(reg.get_cost()) == 2 * 64 * 9 * 4 * 6 / 2 + 2 * 64 * 6 * 3
  assert time.perf_counter() - start < 20


class _NestedFunctionLayer(layers.Layer):
  """A custom layer whose ops run in a nested tf.function (a function call op)."""

  @tf.function
  def _double(self, x):
    return tf.nn.relu(x) * 2.0

  def call(self, x):
    return self._double(x)


def test_nested_function_call_names_the_layer():
  inputs = keras.Input((8, 8, 4))
  x = layers.Conv2D(6, 3, padding='same', name='conv')(inputs)
  x = layers.BatchNormalization(name='bn')(x)
  x = _NestedFunctionLayer(name='nested')(x)
  model = keras.Model(inputs, layers.Conv2D(3, 1, name='head')(x))
  with pytest.raises(model_analysis.UnsupportedLayerError,
                     match=r"Layer 'nested' \(_NestedFunctionLayer\) cannot be analysed: it "
                     r"runs as a nested function call \(op '.*PartitionedCall' of "
                     r"type '(Stateful)?PartitionedCall'\)") as info:
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  assert info.value.layer_name == 'nested'


def test_grouped_conv_outside_the_analysed_part_is_fine():
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      _grouped_conv_model(), 0.1, input_layers=['bn'])
  # Only the head is analysed: 1x1 conv, 6 -> 3 channels.
  assert float(reg.get_cost()) == C1X1 * 6 * 3


def test_nested_tf_function_in_a_graph_is_an_unsupported_op():
  @tf.function
  def nested(x):
    return tf.nn.relu(x) * 2.0

  graph = tf.Graph()
  with graph.as_default():
    image = tf.zeros([1, 8, 8, 3])
    kernel = tf.compat.v1.get_variable('w', initializer=tf.ones([3, 3, 3, 4]),
                                       use_resource=True)
    gamma = tf.compat.v1.get_variable('gamma', initializer=tf.ones([4]), use_resource=True)
    beta = tf.compat.v1.get_variable('beta', initializer=tf.zeros([4]), use_resource=True)
    x = tf.nn.conv2d(image, kernel, 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)
    out = nested(x)
    with pytest.raises(errors.UnsupportedOpError,
                       match=r"calls a nested function.*Received: op='.*' of type "
                       r"'(Stateful)?PartitionedCall'"):
      flop_regularizer.GammaFlopsRegularizer([out.op], 0.1)


def test_ops_that_never_align_fail_fast():
  # An unknown op type that changes the number of channels (treated as
  # element-wise by default) cannot be aligned with its neighbours: the
  # original spun until the iteration limit (1e6 handler calls); the manager
  # now stops when nothing changes any more and names the ops. (A channel
  # split, the former example, now has a handler.)
  def net(image, var):
    with tf.name_scope('conv'):
      x = tf.nn.conv2d(image, var('w', np.ones([1, 1, 3, 5])), 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('gamma', np.ones(5)), var('beta', np.zeros(5)), is_training=True)
    patches = tf.image.extract_patches(x, [1, 1, 2, 1], [1, 1, 1, 1], [1, 1, 1, 1],
                                       'SAME', name='patches')  # 5 -> 10 channels
    with tf.name_scope('conv_a'):
      y = tf.nn.conv2d(image, var('wa', np.ones([1, 1, 3, 10])), 1, 'SAME')
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
          y, var('ga', np.ones(10)), var('ba', np.zeros(10)), is_training=True)
    return tf.add(patches, y, name='add_a')

  built = graph_modes.build(graph_modes.GRAPH, net, [1, 8, 8, 3])
  start = time.perf_counter()
  with pytest.raises(RuntimeError, match=r"could not handle ops: \[.*'patches "
                     r"\(ExtractImagePatches\)'.*\]. "
                     r'The grouping made no progress in 10000 handler calls'):
    flop_regularizer.GammaFlopsRegularizer([built.op('add_a')], 0.1)
  assert time.perf_counter() - start < 20


def test_layer_normalization_is_analysed_and_is_not_a_gamma_source():
  # Before: the LayerNorm's Mean over the channel axis (size 1) waited forever
  # for its 4-channel input (iteration limit after ~20 s), and its
  # Mul(x, rsqrt * gamma) was taken for a batch norm gamma.
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 1, name='c1')(inputs)
  x = layers.LayerNormalization(name='ln')(x)
  x = layers.Conv2D(5, 1, name='c2')(x)
  model = keras.Model(inputs, layers.BatchNormalization(name='bn')(x))
  start = time.perf_counter()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  assert time.perf_counter() - start < 20
  assert LayerStructureExporter(reg).alive_counts() == {'c2': 5}
  assert float(reg.get_cost()) == C1X1 * 3 * 4 + C1X1 * 4 * 5
  model.get_layer('ln').gamma.assign(np.zeros(4, np.float32))
  assert float(reg.get_cost()) == C1X1 * 3 * 4 + C1X1 * 4 * 5
  lasso = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(model, 0.0)
  assert float(lasso.get_cost()) == C1X1 * 3 * 4 + C1X1 * 4 * 5


def test_nearest_upsampling_is_analysed():
  # Keras 3 repeats with Reshape -> Tile -> Reshape; the Tile's multiples are
  # computed by a Pack. Before: the two waited for each other until the
  # iteration limit (~40 s).
  inputs = keras.Input((8, 8, 3))
  x = layers.BatchNormalization(name='bn1')(layers.Conv2D(4, 1, name='c1')(inputs))
  x = layers.UpSampling2D(2, name='up')(x)
  x = layers.BatchNormalization(name='bn2')(layers.Conv2D(2, 1, name='c2')(x))
  model = keras.Model(inputs, x)
  start = time.perf_counter()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  assert time.perf_counter() - start < 20
  # c1: 2 * 8*8 * 3 * 4; c2 on the 16x16 upsampled map: 2 * 16*16 * 4 * 2.
  assert float(reg.get_cost()) == 2 * 64 * 3 * 4 + 2 * 256 * 4 * 2


# ---------------------------------------------------------------------------
# Dynamic shapes.
# ---------------------------------------------------------------------------


def test_keras_model_with_unknown_spatial_dims_asks_for_input_shape():
  inputs = keras.Input((None, None, 3))
  x = layers.BatchNormalization()(layers.Conv2D(4, 3, padding='same')(inputs))
  model = keras.Model(inputs, x)
  with pytest.raises(ValueError, match=r'input 0 has shape \(1, None, None, 3\). Pass a '
                     r'concrete shape with `input_shape=`'):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, 0.1, input_shape=(1, 8, 8, 3))
  assert float(reg.get_cost()) == C3X3 * 3 * 4


def test_graph_with_unknown_spatial_dims_costs_the_fed_size():
  graph = tf.Graph()
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
    kernel = tf.compat.v1.get_variable('w', initializer=tf.ones([3, 3, 3, 4]),
                                       use_resource=True)
    gamma = tf.compat.v1.get_variable('gamma', initializer=tf.ones([4]), use_resource=True)
    beta = tf.compat.v1.get_variable('beta', initializer=tf.zeros([4]), use_resource=True)
    x = tf.nn.conv2d(image, kernel, 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)
    reg = flop_regularizer.GammaFlopsRegularizer([tf.nn.relu(x).op], 0.1)
    cost = reg.get_cost()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      # Spatial size read at run time: 2 * H*W * 3*3 * 3 * 4.
      assert sess.run(cost, {image: np.zeros([1, 8, 8, 3])}) == C3X3 * 3 * 4
      assert sess.run(cost, {image: np.zeros([1, 4, 6, 3])}) == 2 * 24 * 9 * 3 * 4


def test_unknown_channel_dimension_warns_naming_the_op(caplog):
  graph = tf.Graph()
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, None], name='image')
    kernel = tf.compat.v1.get_variable('w', initializer=tf.ones([3, 3, 3, 4]),
                                       use_resource=True)
    gamma = tf.compat.v1.get_variable('gamma', initializer=tf.ones([4]), use_resource=True)
    beta = tf.compat.v1.get_variable('beta', initializer=tf.zeros([4]), use_resource=True)
    x = tf.nn.conv2d(image, kernel, 1, 'SAME', name='conv')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)
    with caplog.at_level(logging.WARNING):
      reg = flop_regularizer.GammaFlopsRegularizer([tf.nn.relu(x).op], 0.1)
      cost = reg.get_cost()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      # The conv's input channels are unknown: counted as 0 (as the original).
      assert sess.run(cost, {image: np.zeros([1, 8, 8, 3])}) == 0.0
  assert 'cannot read the number of channels of op image (Placeholder)' in caplog.text
  assert "Unknown number of channels for tensor 'image:0' (read by conv)" in caplog.text


# ---------------------------------------------------------------------------
# NaN and Inf gammas / kernels.
# ---------------------------------------------------------------------------


@pytest.fixture
def bn_reg():
  model = _bn_model()
  return model, flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_gammas_give_non_finite_cost_and_term(bn_reg, bad):
  model, reg = bn_reg
  assert float(reg.get_cost()) == BN_MODEL_FLOPS
  model.get_layer('bn1').gamma.assign([1.0, bad, 1.0, 1.0])
  # |nan| > t is False: without propagation the channel would count as dead
  # and the cost would silently drop.
  assert np.isnan(float(reg.get_cost()))
  assert not np.isfinite(float(reg.get_regularization_term()))
  assert np.isnan(float(tf.function(reg.get_cost, autograph=False)()))
  # The fc layer reads bn2's channels only: its cost stays finite (2 * 5 * 2
  # with all 5 bn2 channels alive), as in the per-op path.
  fc = [op for op in reg.op_regularizer_manager.ops
        if op.type == 'MatMul']
  assert float(reg.get_cost(fc)) == 2 * 5 * 2


@pytest.mark.parametrize('bad, description', [
    (float('nan'), '1 NaN, 0 inf'), (float('inf'), '0 NaN, 1 inf')])
def test_non_finite_gammas_are_not_exported(bn_reg, tmp_path, bad, description):
  model, reg = bn_reg
  exporter = LayerStructureExporter(reg)
  path = exporter.save(str(tmp_path), 1)
  with open(path) as f:
    before = f.read()
  model.get_layer('bn2').gamma.assign([1.0, 1.0, bad, 1.0, 1.0])
  with pytest.raises(ValueError, match=rf"regularization values .* of 'c2' \(1 of 5 values: "
                     rf'{description}\) are not finite'):
    exporter.save(str(tmp_path), 2)
  # Keyed by op name: Keras 3 names a Conv2D's op '<layer scope>/convolution'.
  with pytest.raises(ValueError, match=r"of 'm_\d+/c2_\d+/convolution' \(1 of 5 values"):
    structure_exporter.StructureExporter(reg.op_regularizer_manager).get_alive_counts()
  # Nothing lost, nothing half-written.
  assert sorted(os.listdir(tmp_path / 'learned_structure')) == ['alive_1']
  with open(path) as f:
    assert f.read() == before


def test_nan_kernels_are_not_exported_by_group_lasso():
  model = _bn_model()
  reg = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(model, 0.1)
  kernel = model.get_layer('c1').kernel
  kernel.assign(np.full(kernel.shape, np.nan, np.float32))
  with pytest.raises(ValueError, match=r"of 'c1' \(4 of 4 values: 4 NaN, 0 inf\)"):
    LayerStructureExporter(reg).alive_counts()
  assert np.isnan(float(reg.get_cost()))


# ---------------------------------------------------------------------------
# Structure files applied to a model.
# ---------------------------------------------------------------------------


def test_corrupted_or_truncated_structure_file_names_the_file(tmp_path):
  model = _bn_model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  path = LayerStructureExporter(reg).save(str(tmp_path), 3)
  with open(path) as f:
    text = f.read()
  truncated = tmp_path / 'truncated'
  truncated.write_text(text[:len(text) // 2])
  with pytest.raises(ValueError, match=rf"structure file '{truncated}' is not valid JSON.*"
                     'it may be truncated or corrupted'):
    shrink.shrink_model(model, str(truncated))
  corrupted = tmp_path / 'corrupted'
  corrupted.write_bytes(b'\x00\xff' + text.encode()[2:])
  with pytest.raises(ValueError, match=rf"structure file '{corrupted}' is not"):
    shrink.shrink_model(model, str(corrupted))
  wrong_value = tmp_path / 'wrong_value'
  wrong_value.write_text(json.dumps({'c1': -3, 'c2': 5}))
  with pytest.raises(ValueError, match=r"width of layer 'c1' in the structure file .* must "
                     r'be >= 0. Received: -3'):
    shrink.shrink_model(model, str(wrong_value))


def test_structure_of_another_model_names_the_unknown_layers(tmp_path):
  other = _bn_model('other')
  other_reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(other, 0.1)
  path = LayerStructureExporter(other_reg).save(str(tmp_path), 1)
  inputs = keras.Input((8, 8, 3))
  x = layers.BatchNormalization(name='bn_a')(layers.Conv2D(4, 3, name='conv_a')(inputs))
  model = keras.Model(inputs, layers.Dense(2, name='fc_a')(layers.Flatten()(x)))
  with pytest.raises(ValueError, match=r"structure file '.*alive_1'.*'c1'"):
    shrink.shrink_model(model, path)


# ---------------------------------------------------------------------------
# Unwritable export directories; nothing written before is lost.
# ---------------------------------------------------------------------------


def test_export_dir_that_is_a_file(bn_reg, tmp_path):
  _, reg = bn_reg
  blocker = tmp_path / 'train_dir'
  blocker.write_text('not a directory')
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  with pytest.raises(OSError, match=rf"Cannot create the learned-structure directory "
                     rf"'{blocker}/learned_structure'"):
    exporter.create_file_and_save_alive_counts(str(blocker), 5)
  assert blocker.read_text() == 'not a directory'


def test_unwritable_directory_keeps_the_previous_file(bn_reg, tmp_path, monkeypatch):
  _, reg = bn_reg
  exporter = structure_exporter.StructureExporter(reg.op_regularizer_manager)
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  with open(path) as f:
    before = f.read()
  directory = os.path.dirname(path)
  real_open = os.open

  def refusing_open(file, flags, *args, **kwargs):
    if os.path.dirname(os.fspath(file)) == directory and flags & os.O_CREAT:
      raise PermissionError(13, 'Permission denied', file)
    return real_open(file, flags, *args, **kwargs)

  monkeypatch.setattr(os, 'open', refusing_open)
  with pytest.raises(OSError, match=rf"Cannot write the learned structure to directory "
                     rf"'{directory}'.*Permission denied"):
    exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  monkeypatch.undo()
  with open(path) as f:
    assert f.read() == before
  assert os.listdir(directory) == ['alive_5']


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0,
                    reason='needs POSIX permissions and a non-root user')
def test_read_only_export_dir(bn_reg, tmp_path):
  _, reg = bn_reg
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path))
  first = cb.export(1)
  os.chmod(os.path.dirname(first), 0o500)
  try:
    with pytest.raises(OSError, match='Cannot write the learned structure to directory'):
      cb.export(2)
  finally:
    os.chmod(os.path.dirname(first), 0o700)
  assert os.listdir(os.path.dirname(first)) == ['alive_1']


def test_op_handler_dict_policy_is_validated():
  with pytest.raises(ValueError, match=r"unknown_op_policy must be one of \('group', "
                     r"'error'\). Received: unknown_op_policy='raise'"):
    op_handler_registry.OpHandlerDict(unknown_op_policy='raise')
