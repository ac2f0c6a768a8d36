"""Tests for the compiled cost: same numbers as the per-op CostCalculator.

The per-op `CostCalculator` is the reference (its own tests pin its numbers
by hand); here every comparison evaluates both on the same manager, with
random alive patterns, in the contexts users evaluate in.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import grouping_regularizers
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import activation_regularizer
from morph_net.network_regularizers import compiled_cost
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.network_regularizers import resource_function
from morph_net.probabilistic_gating import activation_gating
from morph_net.testing import dummy_decorator
from tests.robustness import random_models

RTOL = 1e-6


def _conv_graph():
  """An 11x13x3 image -> 7x5 conv, stride 2, SAME (6x7 output), and a depthwise."""
  graph = tf.Graph()
  with graph.as_default():
    image = tf.constant(np.zeros([1, 11, 13, 3], np.float32))
    conv = tf.nn.conv2d(image, tf.ones([7, 5, 3, 4]), 2, 'SAME', name='conv')
    tf.nn.depthwise_conv2d(conv, tf.ones([3, 3, 4, 1]), [1, 1, 1, 1], 'SAME',
                           name='dw')
  return graph


def test_fit_bilinear_gives_the_flop_and_memory_coefficients():
  graph = _conv_graph()
  conv = graph.get_operation_by_name('conv')
  dw = graph.get_operation_by_name('dw')
  # Monomials: 1, A_in, A_out, A_in*A_out, R_in, R_out, A_in*R_out, A_out*R_in.
  # Conv FLOPs: 2 * (6*7 output positions) * (7*5 kernel) = 2940 per pair.
  assert compiled_cost.fit_bilinear(
      resource_function.flop_function, conv, False) == pytest.approx(
          [0, 0, 0, 2940, 0, 0, 0, 0])
  assert compiled_cost.fit_bilinear(
      resource_function.flop_function, conv, True) == pytest.approx(
          [0, 0, 0, 0, 0, 0, 2940, 2940])
  # Depthwise: 2 * (6*7) * (3*3) = 756 per output channel; term 756*(R_in+R_out).
  assert compiled_cost.fit_bilinear(
      resource_function.flop_function, dw, False) == pytest.approx(
          [0, 0, 756, 0, 0, 0, 0, 0])
  assert compiled_cost.fit_bilinear(
      resource_function.flop_function, dw, True) == pytest.approx(
          [0, 0, 0, 0, 756, 756, 0, 0])
  # Memory of the conv (float32, B = 1): input 11*13 = 143 and output 6*7 =
  # 42 positions per channel, 7*5 weights per pair, 4 bytes each.
  assert compiled_cost.fit_bilinear(
      resource_function.memory_function, conv, False) == pytest.approx(
          [0, 143 * 4, 42 * 4, 35 * 4, 0, 0, 0, 0])
  assert compiled_cost.fit_bilinear(
      resource_function.memory_function, conv, True) == pytest.approx(
          [0, 0, 0, 0, 143 * 4, 42 * 4, 35 * 4, 35 * 4])


def test_fit_bilinear_rejects_other_forms():
  graph = _conv_graph()
  conv = graph.get_operation_by_name('conv')

  def squared(op, is_regularization, a_in, a_out, r_in, r_out):
    del op, is_regularization, a_out, r_in, r_out
    return a_in * a_in

  def maximum(op, is_regularization, a_in, a_out, r_in, r_out):
    del op, is_regularization, r_in, r_out
    return max(a_in, 2 * a_out)

  def tensor(op, is_regularization, a_in, a_out, r_in, r_out):
    del op, is_regularization, r_in, r_out
    return tf.constant(a_in * a_out)

  for fn in (squared, maximum, tensor):
    assert compiled_cost.fit_bilinear(fn, conv, False) is None, fn.__name__


def _bn_net(image_shape=(1, 8, 8, 3)):
  """conv1 -> bn1 -> relu; conv2(bn) + conv3(bn) residual; concat with conv4(bn)."""
  graph = tf.Graph()
  rng = np.random.default_rng(0)
  gammas = {}
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.float32, image_shape, name='image')

    def conv_bn(x, name, out, kernel=3):
      w = tf.compat.v1.get_variable(
          name + '/w', initializer=tf.constant(
              rng.normal(size=[kernel, kernel, x.shape[-1], out]).astype(
                  np.float32)), use_resource=True)
      y = tf.nn.conv2d(x, w, 1, 'SAME', name=name + '/Conv2D')
      gamma = tf.compat.v1.get_variable(
          name + '/gamma', initializer=tf.constant(
              rng.choice([-1.0, 1.0], out) * rng.uniform(0, 1, out),
              tf.float32), use_resource=True)
      gammas[name] = gamma
      beta = tf.zeros([out])
      z, _, _ = tf.compat.v1.nn.fused_batch_norm(y, gamma, beta,
                                                 is_training=True,
                                                 name=name + '/bn')
      return tf.nn.relu(z)

    x = conv_bn(image, 'conv1', 6)
    a = conv_bn(x, 'conv2', 5)
    b = conv_bn(x, 'conv3', 5)
    c = conv_bn(x, 'conv4', 4)
    y = tf.concat([a + b, c], 3)
    # A batch norm on the concat: its gamma is sliced like the concat.
    concat_gamma = tf.compat.v1.get_variable(
        'concat/gamma', initializer=tf.constant(
            rng.uniform(-1, 1, 9), tf.float32), use_resource=True)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, concat_gamma, tf.zeros([9]),
                                               is_training=True,
                                               name='concat/bn')
    out = conv_bn(y, 'conv5', 7, kernel=1)
  return graph, out, gammas


def _gamma_manager(output, threshold, grouping):
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers['FusedBatchNormV3'] = (
      batch_norm_source_op_handler.BatchNormSourceOpHandler(threshold))
  return orm.OpRegularizerManager([output.op], handlers,
                                  create_grouping_regularizer=grouping)


@pytest.mark.parametrize('grouping', [
    grouping_regularizers.MaxGroupingRegularizer,
    grouping_regularizers.L2GroupingRegularizer])
@pytest.mark.parametrize('function_name', [
    'flop_function', 'model_size_function', 'activation_count_function',
    'memory_function'])
def test_graph_mode_equals_per_op(grouping, function_name):
  graph, out, _ = _bn_net()
  fn = getattr(resource_function, function_name)
  with graph.as_default():
    manager = _gamma_manager(out, 0.4, grouping)
    per_op = cost_calculator.CostCalculator(manager, fn)
    compiled = compiled_cost.CompiledCostCalculator(manager, fn)
    subset = [graph.get_operation_by_name('conv2/Conv2D')] * 2 + [
        graph.get_operation_by_name('conv5/Conv2D')]
    tensors = [per_op.get_cost(), compiled.get_cost(),
               per_op.get_regularization_term(),
               compiled.get_regularization_term(),
               per_op.get_cost(subset), compiled.get_cost(subset)]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors, {'image:0': np.zeros([1, 8, 8, 3])})
  assert values[0] > 0
  for reference, value in zip(values[::2], values[1::2]):
    assert value == pytest.approx(reference, rel=RTOL)


def test_partly_regularized_gammas_are_gathered():
  # Blacklisting conv4's group leaves the concat batch norm's last 4 gammas
  # without regularizer: the gammas are read, then gathered.
  graph, out, _ = _bn_net()
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer(
        [out.op], 0.4, regularizer_blacklist=['conv4'])
    per_op = cost_calculator.CostCalculator(reg.op_regularizer_manager,
                                            resource_function.flop_function)
    assert not reg._calculator.program._gamma_identity
    tensors = [per_op.get_cost(), reg.get_cost(),
               per_op.get_regularization_term(), reg.get_regularization_term()]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors, {'image:0': np.zeros([1, 8, 8, 3])})
  assert values[1] == pytest.approx(values[0], rel=RTOL)
  assert values[3] == pytest.approx(values[2], rel=RTOL)


def test_latency_components_equal_the_latency_function():
  graph, out, _ = _bn_net()
  latency = resource_function.latency_function_factory('P100', 4)
  with graph.as_default():
    manager = _gamma_manager(out, 0.4, grouping_regularizers.MaxGroupingRegularizer)
    per_op = cost_calculator.CostCalculator(manager, latency)
    compiled = compiled_cost.CompiledCostCalculator(
        manager, latency,
        components=latency_regularizer.latency_components('P100', 4))
    assert not compiled.program.fallback_ops
    tensors = [per_op.get_cost(), compiled.get_cost(),
               per_op.get_regularization_term(),
               compiled.get_regularization_term()]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors, {'image:0': np.zeros([1, 8, 8, 3])})
  assert values[0] == pytest.approx(values[1], rel=RTOL)
  assert values[2] == pytest.approx(values[3], rel=RTOL)


def test_latency_without_components_falls_back_per_op(caplog):
  graph, out, _ = _bn_net()
  latency = resource_function.latency_function_factory('V100', 1)
  with graph.as_default():
    manager = _gamma_manager(out, 0.4, grouping_regularizers.MaxGroupingRegularizer)
    per_op = cost_calculator.CostCalculator(manager, latency)
    compiled = compiled_cost.CompiledCostCalculator(manager, latency)
    with caplog.at_level(logging.WARNING):
      tensors = [per_op.get_cost(), compiled.get_cost()]
    # A maximum of two forms is not one form: every op with memory traffic
    # is costed by the per-op path (FLOP-free ops that are memory bound
    # everywhere still compile).
    assert compiled.program.fallback_ops
    assert 'costed op by op' in caplog.text
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors, {'image:0': np.zeros([1, 8, 8, 3])})
  assert values[1] == pytest.approx(values[0], rel=RTOL)


def test_unknown_spatial_shape_falls_back_per_op(caplog):
  graph, out, _ = _bn_net(image_shape=(1, None, None, 3))
  with graph.as_default():
    manager = _gamma_manager(out, 0.4, grouping_regularizers.MaxGroupingRegularizer)
    per_op = cost_calculator.CostCalculator(
        manager, resource_function.flop_function)
    compiled = compiled_cost.CompiledCostCalculator(
        manager, resource_function.flop_function)
    with caplog.at_level(logging.WARNING):
      tensors = [per_op.get_cost(), compiled.get_cost(),
                 per_op.get_regularization_term(),
                 compiled.get_regularization_term()]
    fallback = sorted(op.name for op in compiled.program.fallback_ops)
    assert fallback == [f'conv{i}/Conv2D' for i in range(1, 6)]
    assert 'conv1/Conv2D (Conv2D)' in caplog.text
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors, {'image:0': np.zeros([1, 9, 10, 3])})
  assert values[0] > 0
  assert values[1] == pytest.approx(values[0], rel=RTOL)
  assert values[3] == pytest.approx(values[2], rel=RTOL)


def test_repeated_graph_reads_return_one_tensor():
  graph, out, _ = _bn_net()
  with graph.as_default():
    reg = flop_regularizer.GammaFlopsRegularizer([out.op], gamma_threshold=0.4)
    assert reg.get_cost() is reg.get_cost()
    assert reg.get_regularization_term() is reg.get_regularization_term()


def test_no_supported_op_gives_python_zero(caplog):
  graph = tf.Graph()
  with graph.as_default():
    pool = tf.nn.max_pool2d(tf.zeros([1, 4, 4, 3]), 2, 2, 'SAME')
    manager = orm.OpRegularizerManager([pool.op], op_handlers.get_gamma_op_handler_dict())
    compiled = compiled_cost.CompiledCostCalculator(
        manager, resource_function.flop_function)
    with caplog.at_level(logging.WARNING):
      assert compiled.get_cost() == 0.0
      assert compiled.get_cost([pool.op]) == 0.0
  assert 'No supported ops found.' in caplog.text


def _keras_net(width=8, branches=2):
  """A Keras model whose concat has `branches` members (slices grow with it)."""
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(width, 3, padding='same')(inputs)
  x = keras.layers.BatchNormalization()(x)
  members = [x]
  for _ in range(branches):
    y = keras.layers.Conv2D(4, 1)(keras.layers.Concatenate()(members)
                                  if len(members) > 1 else members[0])
    y = keras.layers.BatchNormalization()(y)
    members.append(keras.layers.ReLU()(y))
  x = keras.layers.Concatenate()(members)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(3)(x))


def _randomize(model, rng):
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.gamma.assign(
          (rng.choice([-1.0, 1.0], n) * rng.uniform(0.0, 1.0, n)).astype(np.float32))


def _node_types(fn):
  graph = tf.function(fn, autograph=False).get_concrete_function().graph
  return [op.type for op in graph.get_operations()
          if op.type not in ('ReadVariableOp', 'Placeholder', 'Const')]


def test_node_count_does_not_grow_with_op_slices():
  counts = {}
  slices = {}
  for branches in (2, 6):
    keras.backend.clear_session()
    reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        _keras_net(branches=branches), gamma_threshold=0.5)
    manager = reg.op_regularizer_manager
    slices[branches] = sum(len(manager.get_op_slices(op)) for op in manager.ops)
    counts[branches] = (len(_node_types(reg.get_cost)),
                        len(_node_types(reg.get_regularization_term)))
  assert slices[6] > 2 * slices[2]  # The DenseNet-like concats slice a lot.
  assert counts[6] == counts[2]


def test_group_lasso_kernel_sliced_by_a_concat_is_summed_once():
  # conv_a (8 channels) is added to concat(conv_b, conv_c) (4 + 4): the
  # manager cuts conv_a into two 4-channel slices, whose group-lasso sources
  # are slices of one kernel along its output axis. The compiled program sums
  # the squares of each of the 4 kernels once (conv_a, conv_b, conv_c, the
  # dense head) for 5 sources; cost and term equal the per-op path.
  keras.backend.clear_session()
  inputs = keras.Input((6, 6, 3))
  a = keras.layers.Conv2D(8, 3, padding='same', name='conv_a')(inputs)
  b = keras.layers.Conv2D(4, 1, name='conv_b')(inputs)
  c = keras.layers.Conv2D(4, 1, name='conv_c')(inputs)
  x = keras.layers.Add()([a, keras.layers.Concatenate()([b, c])])
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(3, name='head')(x))
  rng = np.random.default_rng(7)
  for layer in model.layers:
    if layer.weights:
      kernel = layer.weights[0]
      # Channels of norm 0.05-0.5 around the threshold 0.2.
      values = rng.normal(size=kernel.shape) * rng.uniform(
          0.05, 0.5, kernel.shape[-1])
      kernel.assign(values.astype(np.float32))
  reg = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(
      model, threshold=0.2)
  sizes = reg._calculator.program.describe()
  assert (sizes['lasso_sources'], sizes['lasso_kernels']) == (5, 4)
  per_op = cost_calculator.CostCalculator(reg.op_regularizer_manager,
                                          resource_function.flop_function)
  assert float(reg.get_cost()) == pytest.approx(float(per_op.get_cost()),
                                                rel=RTOL)
  kernels = [layer.weights[0] for layer in model.layers if layer.weights]
  with tf.GradientTape(persistent=True) as tape:
    term = reg.get_regularization_term()
    reference = per_op.get_regularization_term()
  assert float(term) == pytest.approx(float(reference), rel=RTOL)
  for grad, expected in zip(tape.gradient(term, kernels),
                            tape.gradient(reference, kernels)):
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-9)
  # One eager function serves both the cost and the term (group lasso).
  assert list(reg._calculator._programs[None][1]) == ['both']


def test_eager_function_and_distribute_equal_per_op():
  keras.backend.clear_session()
  model = _keras_net(branches=3)
  _randomize(model, np.random.default_rng(3))
  reg = model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(
      model, gamma_threshold=0.5)
  per_op = cost_calculator.CostCalculator(
      reg.op_regularizer_manager, resource_function.model_size_function)
  expected_cost = float(per_op.get_cost())
  expected_term = float(per_op.get_regularization_term())
  assert float(reg.get_cost()) == pytest.approx(expected_cost, rel=RTOL)
  assert float(reg.get_regularization_term()) == pytest.approx(
      expected_term, rel=RTOL)
  in_function = tf.function(
      lambda: (reg.get_cost(), reg.get_regularization_term()), autograph=False)()
  assert [float(v) for v in in_function] == pytest.approx(
      [expected_cost, expected_term], rel=RTOL)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  with strategy.scope():
    result = strategy.run(tf.function(reg.get_regularization_term,
                                      autograph=False))
  assert float(strategy.reduce('SUM', result, axis=None)) == pytest.approx(
      expected_term, rel=RTOL)
  # Gradients reach exactly the gammas of the per-op path, with its values.
  gammas = [layer.gamma for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]
  with tf.GradientTape(persistent=True) as tape:
    compiled_term = reg.get_regularization_term()
    reference_term = per_op.get_regularization_term()
  for got, want in zip(tape.gradient(compiled_term, gammas),
                       tape.gradient(reference_term, gammas)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                               atol=1e-6)


def test_decorated_and_gated_regularizers_equal_per_op():
  keras.backend.clear_session()
  model = _keras_net(branches=2)
  _randomize(model, np.random.default_rng(5))
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=0.5,
      regularizer_decorator=dummy_decorator.DummyDecorator,
      decorator_parameters={'scale': 0.5})
  per_op = cost_calculator.CostCalculator(
      reg.op_regularizer_manager, resource_function.flop_function)
  assert reg._calculator.program.describe()['generic_sources'] > 0
  assert float(reg.get_regularization_term()) == pytest.approx(
      float(per_op.get_regularization_term()), rel=RTOL)
  # Probabilistic gates, grouped by a residual add (1 - prod(1 - p)).
  keras.backend.clear_session()
  inputs = keras.Input((6, 6, 3))
  gate = lambda: activation_gating.LogisticSigmoidGating(axis=-1)  # noqa: E731
  a = gate()(keras.layers.Conv2D(5, 3, padding='same')(inputs))
  b = gate()(keras.layers.Conv2D(5, 1)(inputs))
  x = keras.layers.Conv2D(4, 1)(keras.layers.Add()([a, b]))
  model = keras.Model(inputs, x)
  rng = np.random.default_rng(7)
  for layer in model.layers:
    if isinstance(layer, activation_gating.LogisticSigmoidGating):
      layer.mask_logits.assign(rng.normal(0, 3, 5).astype(np.float32))
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(model)
  per_op = cost_calculator.CostCalculator(
      reg.op_regularizer_manager, resource_function.flop_function)
  assert float(reg.get_cost()) == pytest.approx(float(per_op.get_cost()), rel=RTOL)
  assert float(reg.get_regularization_term()) == pytest.approx(
      float(per_op.get_regularization_term()), rel=RTOL)


_FAMILIES = {
    'gamma_flops': (flop_regularizer.GammaFlopsRegularizer,
                    dict(gamma_threshold=0.5), resource_function.flop_function),
    'gamma_activation': (activation_regularizer.GammaActivationRegularizer,
                         dict(gamma_threshold=0.5),
                         resource_function.activation_count_function),
    'gamma_latency': (latency_regularizer.GammaLatencyRegularizer,
                      dict(gamma_threshold=0.5, hardware='P100', batch_size=2),
                      resource_function.latency_function_factory('P100', 2)),
    'group_lasso_size': (model_size_regularizer.GroupLassoModelSizeRegularizer,
                         dict(threshold=0.1),
                         resource_function.model_size_function),
    'group_lasso_latency': (latency_regularizer.GroupLassoLatencyRegularizer,
                            dict(threshold=0.1, hardware='V100'),
                            resource_function.latency_function_factory('V100', 1)),
}


def _check_equal_to_per_op(spec, family, subset_seed):
  keras.backend.clear_session()
  built = random_models.build(spec)
  cls, kwargs, fn = _FAMILIES[family]
  if family.startswith('gamma'):
    if not built.has_batch_norm:
      return
    built.randomize_gammas(np.random.default_rng(spec.seed))
  else:
    if not built.kernels:  # No conv or dense: nothing to regularize (rejected).
      return
    built.randomize_kernels(np.random.default_rng(spec.seed))
  try:
    reg = cls.from_keras_model(built.model, **kwargs)
  except ValueError as e:
    # The documented refusal of a model without any source (e.g. pooling only).
    assert 'found no op to regularize' in str(e)
    return
  assert not reg._calculator.program.fallback_ops
  per_op = cost_calculator.CostCalculator(reg.op_regularizer_manager, fn)
  for getter, reference in ((reg.get_cost, per_op.get_cost),
                            (reg.get_regularization_term,
                             per_op.get_regularization_term)):
    assert float(getter()) == pytest.approx(float(reference()), rel=RTOL)
  # A random subset of ops, with repetitions (each listed op counts).
  ops = sorted(reg.op_regularizer_manager.ops, key=lambda op: op.name)
  rng = np.random.default_rng(subset_seed)
  subset = [ops[i] for i in rng.integers(0, len(ops), size=min(6, len(ops)))]
  cost = reg.get_cost(subset)
  reference = per_op.get_cost(subset)
  assert float(cost) == pytest.approx(float(reference), rel=RTOL, abs=1e-9)
  traced = tf.function(lambda: reg.get_regularization_term(subset),
                       autograph=False)()
  assert float(traced) == pytest.approx(
      float(per_op.get_regularization_term(subset)), rel=RTOL, abs=1e-9)


_COMMON = dict(deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow,
                                      HealthCheck.data_too_large])


@settings(max_examples=10, **_COMMON)
@given(spec=random_models.model_specs(max_blocks=4),
       family=st.sampled_from(sorted(_FAMILIES)),
       subset_seed=st.integers(0, 2**16))
def test_random_networks_compiled_equals_per_op(spec, family, subset_seed):
  _check_equal_to_per_op(spec, family, subset_seed)


@pytest.mark.slow
@settings(max_examples=150, **_COMMON)
@given(spec=random_models.model_specs(),
       family=st.sampled_from(sorted(_FAMILIES)),
       subset_seed=st.integers(0, 2**16))
def test_random_networks_compiled_equals_per_op_slow(spec, family, subset_seed):
  _check_equal_to_per_op(spec, family, subset_seed)
