"""LogisticSigmoid regularizers on Keras 3 models with gating layers.

Model: Input (8, 8, 3) -> Conv2D 'conv1' (6, 3x3, same) -> BatchNormalization
-> ReLU -> gate1 -> Conv2D 'conv2' (5, 1x1) -> ReLU -> gate2 ->
GlobalAveragePooling2D -> Dense 'dense' (2). FLOP coefficients 2 * S_out * K:
conv1 2*64*9 = 1152, conv2 2*64*1 = 128, dense (MatMul) 2.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import logistic_sigmoid_source_op_handler as ls_handler
from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.probabilistic_gating import activation_gating


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _model(log_odds_init=2.5, temperature=0.001):
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(6, 3, padding='same', name='conv1')(inputs)
  x = keras.layers.BatchNormalization(name='bn1')(x)
  x = keras.layers.ReLU(name='relu1')(x)
  x = activation_gating.LogisticSigmoidGating(
      axis=-1, temperature=temperature, log_odds_init=log_odds_init,
      name='gate1')(x)
  x = keras.layers.Conv2D(5, 1, name='conv2')(x)
  x = keras.layers.ReLU(name='relu2')(x)
  x = activation_gating.LogisticSigmoidGating(
      axis=-1, temperature=temperature, log_odds_init=log_odds_init,
      name='gate2')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  outputs = keras.layers.Dense(2, name='dense')(x)
  return keras.Model(inputs, outputs)


def _set_gates(model):
  # +-20: training samples are exactly 1 / 0 (the noise is below 13.8).
  model.get_layer('gate1').mask_logits.assign([20.0, 20.0, -20.0, 20.0, -20.0, 20.0])
  model.get_layer('gate2').mask_logits.assign([-20.0, 20.0, 20.0, -20.0, 20.0])


def test_gates_are_the_sources_of_a_traced_model():
  model = _model()
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(model)
  manager = reg.op_regularizer_manager
  sources = sorted(op.name.split('/', 1)[1] for op in manager.ops
                   if manager.is_source_op(op))
  # The trace is in inference mode; the gating op exists all the same.
  assert sources == ['gate1/LogisticSigmoidGating', 'gate2/LogisticSigmoidGating']
  for op in manager.ops:
    if manager.is_source_op(op):
      assert ls_handler.get_gating_op_record(op).is_training is False
  traced = reg.traced_model
  assert {traced.layer_name_of(op) for op in manager.ops
          if manager.is_source_op(op)} == {'gate1', 'gate2'}


@pytest.mark.parametrize('mask_as_alive_vector', [True, False])
def test_costs_of_a_keras_model(mask_as_alive_vector):
  model = _model()
  _set_gates(model)
  flops = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(
      model, mask_as_alive_vector=mask_as_alive_vector)
  size = model_size_regularizer.LogisticSigmoidModelSizeRegularizer.from_keras_model(
      model, mask_as_alive_vector=mask_as_alive_vector)
  # 4 of 6 and 3 of 5 channels kept. FLOPs: conv1 1152 * 3 * 4, conv2
  # 128 * 4 * 3, dense 2 * 3 * 2 = 13824 + 1536 + 12.
  assert float(flops.get_cost()) == pytest.approx(13824 + 1536 + 12)
  # Weights: conv1 9 * 3 * 4, conv2 1 * 4 * 3, dense 1 * 3 * 2.
  assert float(size.get_cost()) == pytest.approx(108 + 12 + 6)


def test_regularization_term_of_a_keras_model():
  model = _model()
  _set_gates(model)
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(
      model, regularize_on_mask=False)
  r1 = _sigmoid(model.get_layer('gate1').mask_logits.numpy()).sum()
  r2 = _sigmoid(model.get_layer('gate2').mask_logits.numpy()).sum()
  # coeff * (A_in * R_out + A_out * R_in): conv1 1152 * (3 * r1), conv2
  # 128 * (4 * r2 + 3 * r1), dense 2 * (3 * 0 + 2 * r2).
  expected = 1152 * 3 * r1 + 128 * (4 * r2 + 3 * r1) + 2 * 2 * r2
  assert float(reg.get_regularization_term()) == pytest.approx(expected, rel=1e-5)
  with tf.GradientTape() as tape:
    term = reg.get_regularization_term()
  gradients = tape.gradient(term, model.get_layer('gate1').logits_variable)
  assert gradients is not None


def _expected_flops(model):
  """FLOPs expected under independent gates keeping channel i w.p. p_i."""
  s1 = _sigmoid(model.get_layer('gate1').mask_logits.numpy()).sum()
  s2 = _sigmoid(model.get_layer('gate2').mask_logits.numpy()).sum()
  return 1152 * 3 * s1 + 128 * s1 * s2 + 2 * s2 * 2


def test_fit_expected_flops_fall_as_strength_rises(tmp_path):
  rng = np.random.RandomState(0)
  x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32)
  y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
  expected_flops, costs = [], []
  for strength in (0.0, 1e-4, 1e-3):
    keras.utils.set_random_seed(0)
    model = _model(log_odds_init=1.0, temperature=0.5)
    reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(model)
    # Deterministic cost: alive iff the keep probability is >= 0.1.
    expected_reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(
        model, mask_as_alive_vector=False)
    initial = _expected_flops(model)
    trainer = training.MorphNetModel(model, reg, regularization_strength=strength)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    export_dir = str(tmp_path / f'run_{strength}')
    history = trainer.fit(
        x, y, epochs=6, batch_size=16, verbose=0,
        callbacks=[callback.MorphNetCallback(reg, export_dir=export_dir)])
    assert len(history.history['FLOPs']) == 6
    expected_flops.append(_expected_flops(model))
    costs.append(float(expected_reg.get_cost()))
    # The exported structure counts the channels of each conv layer.
    directory = os.path.join(export_dir, 'learned_structure')
    with open(os.path.join(directory, sorted(os.listdir(directory))[-1])) as f:
      exported = json.load(f)
    assert set(exported) >= {'conv1', 'conv2'}
    assert all(0 <= exported[name] <= 6 for name in ('conv1', 'conv2'))
  # All channels start at p = sigmoid(1) = 0.731, s1 = 6p, s2 = 5p:
  # 1152*3*4.386 + 128*4.386*3.655 + 4*3.655 = 15158 + 2052 + 15 = 17226.
  p = _sigmoid(1.0)
  assert initial == pytest.approx(1152 * 3 * 6 * p + 128 * 6 * 5 * p ** 2 + 4 * 5 * p)
  assert expected_flops[0] > expected_flops[1] > expected_flops[2]
  assert expected_flops[2] < 0.5 * expected_flops[0]
  assert costs[0] >= costs[1] >= costs[2]
  assert costs[2] < costs[0]
