"""Tests for MorphNetModel and recommend_strength (keras_integration.training).

Model: 8x8x3 -> c1 (3x3, 4, no bias) -> bn1 -> r1 -> c2 (3x3, 5) -> bn2 -> r2
-> gap -> fc (Dense 2); gammas bn1 [1, 1, 0, 1], bn2 [1, 0, 1, 0, 1]
(threshold 0.1: 3 and 3 alive). With 2 * 8*8 * 3*3 = 1152 FLOPs per channel
pair of a 3x3 conv:
  cost = c1 1152 * 3 * 3 + c2 1152 * 3 * 3 + fc 2 * 3 * 2 = 20748;
  term = c1 1152 * (3 * 3 + 3 * 0) + c2 1152 * (3 * 3 + 3 * 3)
         + fc 2 * (3 * 0 + 2 * 3) = 31116   (R = sum |gamma|).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer

layers = keras.layers

COST = 1152 * 3 * 3 + 1152 * 3 * 3 + 2 * 3 * 2
TERM = 1152 * (3 * 3) + 1152 * (3 * 3 + 3 * 3) + 2 * (2 * 3)


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(inputs)
  x = layers.ReLU(name='r1')(layers.BatchNormalization(name='bn1')(x))
  x = layers.Conv2D(5, 3, padding='same', use_bias=False, name='c2')(x)
  x = layers.ReLU(name='r2')(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalAveragePooling2D(name='gap')(x)
  model = keras.Model(inputs, layers.Dense(2, name='fc')(x))
  model.get_layer('bn1').gamma.assign([1.0, 1.0, 0.0, 1.0])
  model.get_layer('bn2').gamma.assign([1.0, 0.0, 1.0, 0.0, 1.0])
  return model


@pytest.fixture(scope='module')
def model_and_reg():
  model = _model()
  return model, flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(16, 8, 8, 3)).astype(np.float32), rng.integers(0, 2, 16))


def _task_loss(y, logits):
  return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))


def _compiled(model, reg, strength):
  trainer = training.MorphNetModel(model, reg, strength)
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return trainer


def test_regularization_loss_is_strength_times_term(model_and_reg):
  model, reg = model_and_reg
  trainer = training.MorphNetModel(model, reg, 1e-4)
  assert trainer.network_regularizer is reg
  assert trainer.regularization_strength == 1e-4
  assert float(trainer.regularization_loss()) == pytest.approx(1e-4 * TERM, rel=1e-6)
  assert trainer.name == model.name + '_morphnet'


def test_call_delegates_to_the_model(model_and_reg):
  model, reg = model_and_reg
  trainer = training.MorphNetModel(model, reg, 1e-4)
  x, _ = _data()
  np.testing.assert_allclose(trainer(x, training=False).numpy(),
                             model(x, training=False).numpy())
  # The wrapper trains the model's own weights.
  assert {id(v) for v in model.trainable_weights} == {
      id(v) for v in trainer.trainable_weights}


def test_compute_loss_adds_the_term_only_when_training(model_and_reg):
  model, reg = model_and_reg
  trainer = _compiled(model, reg, 1e-4)
  x, y = _data()
  logits = trainer(x, training=False)
  task = _task_loss(y, logits)
  eval_loss = float(trainer.compute_loss(x, y, logits, training=False))
  train_loss = float(trainer.compute_loss(x, y, logits, training=True))
  assert eval_loss == pytest.approx(task, rel=1e-6)
  assert train_loss == pytest.approx(task + 1e-4 * TERM, rel=1e-6)


def test_evaluate_reports_the_task_loss(model_and_reg):
  model, reg = model_and_reg
  trainer = _compiled(model, reg, 1e-4)
  x, y = _data()
  loss = trainer.evaluate(x, y, batch_size=16, verbose=0)
  assert loss == pytest.approx(_task_loss(y, model(x, training=False)), rel=1e-5)


def test_new_strength_applies_to_the_compiled_train_step(model_and_reg):
  model, reg = model_and_reg
  trainer = _compiled(model, reg, 1e-4)
  x, y = _data()
  # Zero learning rate: two one-step fits see the same weights; only the
  # strength differs, by (1e-3 - 1e-4) * 31116.
  first = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history['loss'][0]
  trainer.regularization_strength = 1e-3
  assert trainer.regularization_strength == 1e-3
  second = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history['loss'][0]
  assert second - first == pytest.approx((1e-3 - 1e-4) * TERM, rel=1e-4)
  trainer.regularization_strength = 0.0
  third = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history['loss'][0]
  assert first - third == pytest.approx(1e-4 * TERM, rel=1e-4)


@pytest.mark.parametrize('strength', [-1.0, float('inf'), float('nan')])
def test_bad_strength_values(model_and_reg, strength):
  model, reg = model_and_reg
  with pytest.raises(ValueError, match=r'regularization_strength must be finite and >= 0.'
                     r' Received: regularization_strength=.*recommend_strength'):
    training.MorphNetModel(model, reg, strength)
  trainer = training.MorphNetModel(model, reg, 1.0)
  with pytest.raises(ValueError, match='regularization_strength must be finite'):
    trainer.regularization_strength = strength
  assert trainer.regularization_strength == 1.0


@pytest.mark.parametrize('strength', ['strong', '1e-7', b'1', True, [1.0]])
def test_bad_strength_types(model_and_reg, strength):
  model, reg = model_and_reg
  with pytest.raises(TypeError, match='regularization_strength must be a number'):
    training.MorphNetModel(model, reg, strength)


def test_regularizer_must_be_a_network_regularizer(model_and_reg):
  model, _ = model_and_reg
  with pytest.raises(TypeError, match='must be a morph_net NetworkRegularizer. '
                     'Received: str'):
    training.MorphNetModel(model, 'GammaFlops', 1.0)


def test_recommend_strength_is_one_over_cost(model_and_reg):
  _, reg = model_and_reg
  recommendation = training.recommend_strength(reg)
  assert recommendation.initial_cost == pytest.approx(COST)
  assert recommendation.strength == pytest.approx(1.0 / COST)
  assert recommendation.search_range == pytest.approx(
      (0.1 / COST, 1.0 / COST, 10.0 / COST, 100.0 / COST, 1000.0 / COST))


def test_recommend_strength_of_a_zero_cost_network():

  class _ZeroCost(generic_regularizers.NetworkRegularizer):

    def get_cost(self, ops=None):
      return 0.0

  with pytest.raises(ValueError, match='zero cost under this regularizer.*'
                     r'Received: initial cost 0\.0 from _ZeroCost'):
    training.recommend_strength(_ZeroCost())


def test_scale_for_distribution_without_a_strategy():
  value = tf.constant(3.0)
  assert float(training.scale_for_distribution(value)) == 3.0
