"""MorphNet in `model.fit`: the structure shrinks while the model learns.

A small CNN with a residual add and a concat (tests/integration/small_cnn.py)
learns which quadrant of a 16x16 image is brightest, with a GammaFlops
regularizer whose strength is large enough to remove channels within a few
dozen steps. Also checked: the eager and compiled train steps, mixed
precision, and a two-replica MirroredStrategy (in a subprocess, which can
split the CPU into two logical devices before TensorFlow initialises them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from tests.integration import small_cnn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THRESHOLD = 0.3


def _fit_small_cnn(export_dir, run_eagerly, epochs):
  """Fits the small CNN with a strong GammaFlops regularizer; returns history."""
  model = small_cnn.build_model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.2)
  strength = training.recommend_strength(reg).strength
  trainer = training.MorphNetModel(model, reg, 3 * strength)
  trainer.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'], run_eagerly=run_eagerly)
  assert trainer.run_eagerly == run_eagerly
  x, y = small_cnn.make_data(128)
  cb = callback.MorphNetCallback(reg, export_dir=export_dir, export_every_n_steps=8,
                                 export_each_epoch=False)
  # 8 steps per epoch.
  history = trainer.fit(x, y, batch_size=16, epochs=epochs, callbacks=[cb], verbose=0,
                        shuffle=False)
  return history.history, 1.0 / strength


@pytest.fixture(scope='module')
def compiled_fit(tmp_path_factory):
  export_dir = tmp_path_factory.mktemp('compiled')
  history, initial_cost = _fit_small_cnn(str(export_dir), run_eagerly=False, epochs=3)
  return history, initial_cost, export_dir


def test_fit_shrinks_the_structure(compiled_fit):
  history, initial_cost, _ = compiled_fit
  flops = history['FLOPs']
  assert flops[0] <= initial_cost
  assert flops[-1] < 0.5 * initial_cost  # channels were removed
  assert history['alive_fraction'][-1] < 1.0
  assert history['loss'][-1] < history['loss'][0]
  assert history['accuracy'][-1] > 0.5  # 4 classes: chance is 0.25


def test_fit_exports_alive_counts_by_layer(compiled_fit):
  _, _, export_dir = compiled_fit
  directory = export_dir / 'learned_structure'
  assert sorted(os.listdir(directory)) == ['alive_16', 'alive_24', 'alive_8']
  with open(directory / 'alive_24') as f:
    structure = json.load(f)
  assert set(structure) == set(small_cnn.FILTERS)  # layer names, fc not regularized
  for name, alive in structure.items():
    assert isinstance(alive, int)
    assert 0 <= alive <= small_cnn.FILTERS[name]
  assert sum(structure.values()) < sum(small_cnn.FILTERS.values())


def test_eager_train_step_matches_the_compiled_one(compiled_fit, tmp_path):
  compiled_history, _, _ = compiled_fit
  history, _ = _fit_small_cnn(str(tmp_path), run_eagerly=True, epochs=1)
  # Same seeded model, data and order: the first epoch is the same.
  for key in ('loss', 'regularization_loss', 'FLOPs', 'alive_fraction'):
    assert history[key][0] == pytest.approx(compiled_history[key][0], rel=1e-3), key
  assert os.listdir(tmp_path / 'learned_structure') == ['alive_8']


@pytest.fixture(scope='module')
def float32_reference():
  """Weights (with some dead gammas) and the single-device float32 values."""
  model = small_cnn.build_model()
  small_cnn.set_random_gammas(model)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  cost, term = float(reg.get_cost()), float(reg.get_regularization_term())
  initial_cost = sum(  # all channels alive, for comparison
      2 * n_out * k * k * c_in * c_out for n_out, k, c_in, c_out in (
          (8 * 8, 3, 1, 8), (8 * 8, 3, 8, 8), (8 * 8, 1, 8, 6), (8 * 8, 3, 8, 6),
          (4 * 4, 3, 12, 8))) + 2 * 8 * 4
  assert 0 < cost < initial_cost  # the random gammas kill some channels
  return model.get_weights(), cost, term


@pytest.fixture
def policy(request):
  keras.mixed_precision.set_global_policy(request.param)
  yield request.param
  keras.mixed_precision.set_global_policy('float32')


# The compiled step (with loss scaling) under mixed_float16; the eager one under
# mixed_bfloat16 (compiling each costs seconds).
@pytest.mark.parametrize('policy, run_eagerly', [('mixed_float16', False),
                                                 ('mixed_bfloat16', True)],
                         indirect=['policy'])
def test_mixed_precision_matches_float32(policy, run_eagerly, float32_reference):
  weights, cost, term = float32_reference
  model = small_cnn.build_model()
  assert model.get_layer('c1').compute_dtype == policy.split('_')[1]
  model.set_weights(weights)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, THRESHOLD)
  # One source per BatchNormalization, found through the Casts.
  manager = reg.op_regularizer_manager
  assert len([op for op in manager.ops if manager.is_source_op(op)]) == 5
  assert float(reg.get_cost()) == pytest.approx(cost, rel=1e-6)
  assert float(reg.get_regularization_term()) == pytest.approx(term, rel=1e-6)

  trainer = training.MorphNetModel(model, reg, 1e-5)
  trainer.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
  x, y = small_cnn.make_data(32)
  gamma = model.get_layer('c1_bn').gamma
  before = gamma.numpy()
  history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=[callback.MorphNetCallback(reg)]).history
  assert np.isfinite(history['loss'][0])
  assert not np.array_equal(gamma.numpy(), before)  # the gammas were trained
  # The epoch-end log is the cost of the trained weights.
  assert history['FLOPs'][0] == pytest.approx(float(reg.get_cost()), rel=1e-6)


def test_mirrored_strategy_matches_single_device(float32_reference):
  _, cost, term = float32_reference
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO_ROOT)
  result = subprocess.run(
      [sys.executable, '-m', 'tests.integration.small_cnn'], cwd=REPO_ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['replicas'] == 2
  assert report['variable_type'] == 'MirroredVariable'
  # The subprocess builds the same seeded model with the same gammas.
  assert report['single'] == pytest.approx([cost, term], rel=1e-6)
  assert report['mirrored'] == pytest.approx([cost, term], rel=1e-6)
  for replica_values in report['per_replica']:
    assert replica_values == pytest.approx([cost, term], rel=1e-6)
  # Every replica's tape gets the term's gradient for its own gamma copies
  # (the second replica used to get none: the trace reads the primary copies).
  assert len(report['gradients_per_replica']) == 2
  for replica_gradients in report['gradients_per_replica']:
    assert len(replica_gradients) == len(report['single_gradients'])
    for got, expected in zip(replica_gradients, report['single_gradients']):
      assert len(expected) > 0
      np.testing.assert_allclose(got, expected, rtol=1e-6)
  history = report['history']
  assert np.isfinite(history['loss'][0])
  assert report['gamma_changed']  # the mirrored gammas were trained
  # The epoch-end log is the cost of the trained weights.
  assert history['FLOPs'][0] == pytest.approx(report['cost_after_fit'], rel=1e-6)
  # Target mode under the strategy: the strength grows while above the target
  # (at most x e^0.05 per step: 4 steps), and the export is within the target.
  target = report['target']
  assert target['initial_strength'] < target['strength'][0] <= (
      target['initial_strength'] * np.exp(0.05 * 4) * (1 + 1e-6))
  assert target['exported_cost'] <= target['target_cost']
