"""run_morphnet's pruned-model step: shrink with weights, recalibrate, fine-tune."""

import json
import os

import keras
import numpy as np
import pytest

from morph_net.keras_integration import morphnet_loop
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer

L = keras.layers


def _model_fn():
  image = keras.Input((8, 8, 3), name='image')
  x = image
  for name, filters in (('c1', 6), ('c2', 8)):
    x = L.Conv2D(filters, 3, padding='same', use_bias=False, name=name)(x)
    x = L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  model = keras.Model(image, L.Dense(2, name='logits')(x), name='tiny')
  # Channels 4..7 of c2 start far below the threshold (0.3); with no
  # regularized epoch (epochs=0, to keep the test fast) the learned structure
  # is c1 = 6, c2 = 4.
  model.get_layer('c2_bn').gamma.assign(np.array([1.0] * 4 + [0.05] * 4, np.float32))
  return model


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(16, 8, 8, 3)).astype('float32'),
          rng.integers(0, 2, size=16).astype('int32'))


def _run(tmp_path, **kwargs):
  return morphnet_loop.run_morphnet(
      _model_fn, _data(), output_dir=str(tmp_path / 'run'),
      compile_kwargs=dict(optimizer=keras.optimizers.Adam(1e-3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
      regularizer_class=GammaFlopsRegularizer, regularizer_kwargs=dict(gamma_threshold=0.3),
      iterations=1, epochs=0, retrain_epochs=0, regularization_strength=1e-6,
      fit_kwargs=dict(batch_size=8, verbose=0), **kwargs)


def test_recalibration_only(tmp_path):
  x, _ = _data()
  iteration = _run(tmp_path, recalibrate_steps=1).iterations[0]
  pruned = iteration.pruned_model
  assert (pruned.get_layer('c1').filters, pruned.get_layer('c2').filters) == (6, 4)
  assert iteration.fine_tune_logs == {}
  # c1_bn now holds the mean / variance of c1's output on the first batch (8 images).
  conv = np.asarray(pruned.get_layer('c1')(x[:8]), np.float64)
  bn = pruned.get_layer('c1_bn')
  np.testing.assert_allclose(np.asarray(bn.moving_mean), conv.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.moving_variance), conv.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)


def test_fine_tune_trains_the_pruned_model_and_logs(tmp_path):
  result = _run(tmp_path, recalibrate_steps=2, fine_tune_epochs=2)
  iteration = result.iterations[0]
  pruned = iteration.pruned_model
  assert pruned.get_layer('c2').filters == 4
  assert 'loss' in iteration.fine_tune_logs
  assert pruned.optimizer.iterations.numpy() == 2 * 2  # 2 epochs x 16 / 8 steps.
  with open(os.path.join(iteration.directory, 'costs.json')) as f:
    assert json.load(f)['fine_tune_logs'].keys() == iteration.fine_tune_logs.keys()
  # The seed of the next round is still the expanded model, not the pruned one.
  assert result.model is not pruned


def test_target_mode_prunes_the_completed_structure(tmp_path):
  # With a shrink target of 40 % of the initial FLOPs (at which c1 = 6, c2 = 4
  # are alive), no epoch to reach it: the completion removes more channels,
  # and the pruned model must be that completed structure, not the 6 / 4
  # channels alive in training.
  iteration = _run(tmp_path, recalibrate_steps=1,
                   shrink_target_fraction=0.4).iterations[0]
  assert iteration.shrink['completed']
  learned = iteration.learned_structure
  assert learned['c1'] + learned['c2'] < 6 + 4
  pruned = iteration.pruned_model
  assert (pruned.get_layer('c1').filters, pruned.get_layer('c2').filters) == (
      learned['c1'], learned['c2'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(fine_tune_epochs=-1), r'fine_tune_epochs must be an integer >= 0. '
                                r'Received: fine_tune_epochs=-1'),
    (dict(recalibrate_steps=True), r'recalibrate_steps must be an integer >= 0'),
])
def test_bad_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _run(tmp_path, **kwargs)
