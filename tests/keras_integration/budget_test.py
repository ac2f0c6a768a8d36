"""Tests for training to a budget: the strength rule, completion, target mode.

Model (as in callback_test): 8x8x3 -> c1 (3x3, 4, no bias) -> bn1 -> r1 -> c2
(3x3, 5) -> bn2 -> r2 -> gap -> fc (Dense 2), threshold 0.1. With A1 / A2 alive
channels of c1 / c2 and 2 * 8*8 * 3*3 = 1152 FLOPs per channel pair of a 3x3
conv, FLOPs = c1 1152 * 3 * A1 + c2 1152 * A1 * A2 + fc 2 * A2 * 2.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import keras
import numpy as np
import pytest

from morph_net.keras_integration import budget
from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer

layers = keras.layers


def _flops(a1, a2):
  return 1152 * 3 * a1 + 1152 * a1 * a2 + 4 * a2


def _model(bn1=(1.0, 1.0, 0.0, 1.0), bn2=(1.0, 0.0, 1.0, 0.0, 1.0)):
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(inputs)
  x = layers.ReLU(name='r1')(layers.BatchNormalization(name='bn1')(x))
  x = layers.Conv2D(5, 3, padding='same', use_bias=False, name='c2')(x)
  x = layers.ReLU(name='r2')(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalAveragePooling2D(name='gap')(x)
  model = keras.Model(inputs, layers.Dense(2, name='fc')(x))
  model.get_layer('bn1').gamma.assign(list(bn1))
  model.get_layer('bn2').gamma.assign(list(bn2))
  return model


def _data(steps=4):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(8 * steps, 8, 8, 3)).astype(np.float32),
          rng.integers(0, 2, 8 * steps))


def _trainer(model, reg, **kwargs):
  trainer = training.MorphNetModel(model, reg, **kwargs)
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return trainer


# ----------------------------------------------------------------------------
# The strength rule.


def test_strength_rule_is_multiplicative_in_the_relative_excess():
  # log s += rate * steps * clip(C / T - 1, -1, 1).
  # (Target 100: the strength may range over [1e-6, 100].)
  assert budget.next_strength(1e-3, 150.0, 100.0, 10, rate=0.01) == pytest.approx(
      1e-3 * math.exp(0.01 * 10 * 0.5))
  assert budget.next_strength(1e-3, 50.0, 100.0, 4, rate=0.01) == pytest.approx(
      1e-3 * math.exp(-0.01 * 4 * 0.5))
  # The excess is clipped at 1: ten times the target grows like twice it.
  assert budget.next_strength(1e-3, 1000.0, 100.0, 1, rate=0.1) == pytest.approx(
      1e-3 * math.exp(0.1))
  # At the target, no change; a NaN cost leaves the strength alone.
  assert budget.next_strength(1e-3, 100.0, 100.0, 7) == pytest.approx(1e-3)
  assert budget.next_strength(1e-3, float('nan'), 100.0, 7) == 1e-3


def test_strength_stays_within_its_range():
  # [1e-4, 1e4] / target.
  assert budget.next_strength(99.0, 300.0, 100.0, 10**6) == pytest.approx(1e4 / 100.0)
  assert budget.next_strength(1e-5, 1.0, 100.0, 10**6) == pytest.approx(1e-4 / 100.0)
  assert budget.next_strength(0.0, 300.0, 100.0, 1) == pytest.approx(1e-4 / 100.0)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(target_cost=1.0, target_fraction=0.5), ValueError, 'not both'),
    (dict(target_fraction=0.0), ValueError, 'target_fraction must be finite and > 0. '
     'Received: target_fraction=0.0'),
    (dict(target_cost=float('inf')), ValueError, 'target_cost must be finite'),
    (dict(target_fraction='0.5'), TypeError, "Received: target_fraction='0.5'"),
])
def test_bad_targets(kwargs, error, match):
  with pytest.raises(error, match=match):
    budget.check_target(**kwargs)


# ----------------------------------------------------------------------------
# Completion.


@pytest.fixture(scope='module')
def ranked():
  # bn1 all alive, values 1, .5, .2, .9; bn2 channel 3 dead (0.05 < 0.1).
  model = _model(bn1=(1.0, 0.5, 0.2, 0.9), bn2=(1.0, 0.3, 0.8, 0.05, 0.6))
  return model, flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)


def test_completion_within_the_target_keeps_the_trained_structure(ranked):
  _, reg = ranked
  # Turning bn2's dead channel back on would cost _flops(4, 5) = 36884 > 35000.
  result = budget.complete_to_target(reg, 35000.0)
  assert result.trained_cost == pytest.approx(_flops(4, 4))  # 32272
  assert not result.completed and result.reached
  assert result.counts == {'c1': 4, 'c2': 4}
  assert result.removed == {} and result.refilled == {}
  assert 'exported as is' in result.describe()


def test_completion_below_the_target_refills_dead_channels(ranked):
  _, reg = ranked
  # _flops(4, 5) = 13824 + 23040 + 20 = 36884 <= 40000: bn2 ch3 comes back.
  result = budget.complete_to_target(reg, 40000.0)
  assert result.cost == pytest.approx(_flops(4, 5))
  assert result.refilled == {'c2': 1} and not result.completed
  np.testing.assert_array_equal(result.masks['c2'], [True] * 5)
  assert 'turned back on' in result.describe()
  assert budget.complete_to_target(reg, 40000.0, refill=False).counts == {
      'c1': 4, 'c2': 4}


def test_completion_removes_least_value_per_unit_of_cost_first(ranked):
  _, reg = ranked
  # Saving of one channel at the trained structure (A1 = A2 = 4):
  #   bn1: c1 1152 * 3 + c2 1152 * 4 = 8064; bn2: c2 1152 * 4 + fc 4 = 4612.
  # Scores (the largest value of each group is kept): bn1 ch2 .2/8064,
  # ch1 .5/8064, bn2 ch1 .3/4612, bn1 ch3 .9/8064, bn2 ch4 .6/4612, bn2 ch2.
  # Target 20000: one removal costs _flops(3, 4) = 24208 > 20000, two
  # _flops(2, 4) = 16144 <= 20000; putting either back exceeds the target.
  result = budget.complete_to_target(reg, 20000.0, refill=False)
  assert result.completed and result.reached
  assert result.cost == pytest.approx(_flops(2, 4))
  assert result.counts == {'c1': 2, 'c2': 4}
  assert result.removed == {'c1': 2}
  np.testing.assert_array_equal(result.masks['c1'], [True, False, False, True])
  np.testing.assert_array_equal(result.masks['c2'], [True, True, True, False, True])
  assert 'completed to 16,144' in result.describe('FLOPs')
  # Refill: bn2's dead ch3 fits, _flops(2, 5) = 6912 + 11520 + 20 = 18452.
  result = budget.complete_to_target(reg, 20000.0)
  assert result.cost == pytest.approx(_flops(2, 5))
  assert result.counts == {'c1': 2, 'c2': 5} and result.refilled == {'c2': 1}


def test_completion_puts_back_what_the_target_allows(ranked):
  _, reg = ranked
  # Target 12000: k = 3 gives _flops(2, 3) = 13836 > 12000, k = 4 gives
  # _flops(1, 3) = 6924. Put back, last removed first: bn1 ch3 -> 13836 (no),
  # bn2 ch1 -> _flops(1, 4) = 8080 (yes), bn1 ch1 / ch2 -> 16144 (no).
  result = budget.complete_to_target(reg, 12000.0, refill=False)
  assert result.cost == pytest.approx(_flops(1, 4))
  np.testing.assert_array_equal(result.masks['c1'], [True, False, False, False])
  np.testing.assert_array_equal(result.masks['c2'], [True, True, True, False, True])
  # Refill then turns bn2's dead ch3 on: _flops(1, 5) = 3456 + 5760 + 20 = 9236.
  assert budget.complete_to_target(reg, 12000.0).cost == pytest.approx(_flops(1, 5))


def test_completion_that_cannot_reach_the_target_says_so(ranked):
  _, reg = ranked
  result = budget.complete_to_target(reg, 100.0)
  assert not result.reached
  assert result.counts == {'c1': 1, 'c2': 1}  # one channel per group kept
  assert result.cost == pytest.approx(_flops(1, 1))
  assert 'cannot be reached' in result.describe()


def test_completion_for_model_size(ranked):
  model, _ = ranked
  reg = model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(model, 0.1)
  # Weights: c1 3*3*3 * A1 + c2 3*3 * A1 * A2 + fc A2 * 2; (4, 4): 260.
  # Savings at (4, 4): bn1 27 + 9 * 4 = 63, bn2 9 * 4 + 2 = 38. Order: bn1 ch2
  # (.2/63), bn2 ch1 (.3/38 = .00789), bn1 ch1 (.5/63 = .00794), ...
  # Target 150: (3, 4) 197, (3, 3) 168, (2, 3) 54 + 54 + 6 = 114 <= 150.
  # Put back: bn1 ch1 -> 168 (no), bn2 ch1 -> (2, 4) 54 + 72 + 8 = 134 (yes),
  # bn1 ch2 -> 197 (no). Refill: bn1 +63 -> 197, bn2 ch3 +20 -> 154: no.
  result = budget.complete_to_target(reg, 150.0)
  assert result.trained_cost == 260 and result.cost == 134
  np.testing.assert_array_equal(result.masks['c1'], [True, False, False, True])
  np.testing.assert_array_equal(result.masks['c2'], [True, True, True, False, True])


# ----------------------------------------------------------------------------
# Target mode in fit (zero learning rate: the cost stays at its hand value).


def test_target_mode_adapts_and_logs_the_strength():
  model = _model()  # A1 = A2 = 3: 20748 FLOPs
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = _trainer(model, reg, target_fraction=0.5, adapt_rate=0.01)
  assert trainer.target_cost == pytest.approx(_flops(3, 3) / 2)
  assert trainer.regularization_strength == pytest.approx(1.0 / _flops(3, 3))
  x, y = _data()
  # No callback given: fit adds one. C / T - 1 = 1: x e^0.01 per step.
  history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False).history
  s0 = 1.0 / _flops(3, 3)
  assert history['strength'] == pytest.approx([s0 * math.exp(0.04), s0 * math.exp(0.08)],
                                              rel=1e-5)
  assert history['FLOPs'] == pytest.approx([_flops(3, 3)] * 2)
  assert trainer.regularization_strength == pytest.approx(s0 * math.exp(0.08), rel=1e-5)


def test_target_given_to_the_callback_and_completed_export(tmp_path):
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = _trainer(model, reg, regularization_strength=1e-4)
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path), target_cost=15000.0)
  x, y = _data()
  trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
  assert trainer.target_cost == 15000.0
  # Ranking (all values 1; savings bn1 1152 * 3 + 1152 * 3 = 6912, bn2
  # 1152 * 3 + 4 = 3460): bn1's ch1 goes first; _flops(2, 3) = 13836 <= 15000.
  assert cb.completion.completed
  assert cb.completion.cost == pytest.approx(_flops(2, 3))
  directory = tmp_path / 'learned_structure'
  assert sorted(os.listdir(directory)) == ['alive_4', 'alive_4.budget.json']
  assert json.loads((directory / 'alive_4').read_text()) == {'c1': 2, 'c2': 3}
  record = json.loads((directory / 'alive_4.budget.json').read_text())
  assert record['completed'] and record['target_cost'] == 15000.0
  assert record['trained_cost'] == pytest.approx(_flops(3, 3))
  assert record['removed_channels'] == {'c1': 1}
  assert 'above the target' in record['note']


def test_no_pruning_warning_gives_the_figures():
  model = _model(bn1=(1.0, 0.8, 1.0, 1.0), bn2=(1.0,) * 5)  # nothing dead
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = _trainer(model, reg, regularization_strength=2e-5)
  x, y = _data()
  cb = callback.MorphNetCallback(reg, warn_after_epochs=2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    trainer.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[cb])
  messages = [str(w.message) for w in caught
              if issubclass(w.category, callback.NoPruningWarning)]
  assert len(messages) == 1  # once, after epoch 2
  assert 'after 2 epoch(s) (8 steps)' in messages[0]
  assert 'smallest regularization value (|gamma| or norm) is 0.8' in messages[0]
  assert 'threshold 0.1' in messages[0] and 'Strength 2e-05' in messages[0]
  assert 'learning rate 0.0' in messages[0]
  assert 'larger learning rate' in messages[0]


# ----------------------------------------------------------------------------
# Misuse.


def test_callback_on_a_model_without_the_term_is_an_error():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  model.compile(optimizer='sgd', loss='mse')
  x, y = _data()
  with pytest.raises(ValueError, match=r'needs a model whose loss holds the MorphNet term'
                     r'.*Received: a Functional .*MorphNetModel\(model, reg\)'):
    model.fit(x, np.zeros((len(x), 2)), epochs=1, verbose=0,
              callbacks=[callback.MorphNetCallback(reg)])


def test_callback_with_another_regularizer_is_an_error():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  other = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = _trainer(model, reg, regularization_strength=1e-4)
  x, y = _data()
  with pytest.raises(ValueError, match='use different network regularizers'):
    trainer.fit(x, y, epochs=1, verbose=0, callbacks=[callback.MorphNetCallback(other)])


def test_regularizer_of_another_model_is_an_error():
  model_a, model_b = _model(), _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model_a, 0.1)
  with pytest.raises(ValueError, match=r"traced from another model.*Received: a "
                     r"regularizer traced from model '.*' for model '.*'\. Build it "
                     r'from this model'):
    training.MorphNetModel(model_b, reg, 1e-4)


def test_callback_needs_a_network_regularizer():
  with pytest.raises(TypeError, match='Received: str'):
    callback.MorphNetCallback('GammaFlops')
