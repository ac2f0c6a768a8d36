"""Tests for MorphNetCallback: logged values and structure export.

The model is trained with a zero learning rate, so its gammas keep the values
set by hand and every logged value can be derived by hand:

  8x8x3 -> c1 (3x3, 4, no bias) -> bn1 -> r1 -> c2 (3x3, 5) -> bn2 -> r2 -> gap
  -> fc (Dense 2); gammas bn1 [1, 1, 0, 1] (3 alive), bn2 [1, 0, 1, 0, 1] (3).

  FLOPs (2 * 8*8 * 3*3 = 1152 per channel pair for a 3x3 conv):
    c1 1152 * 3 * 3 + c2 1152 * 3 * 3 + fc 2 * 3 * 2 = 20748.
  Regularization term, B * c * (A_in * R_out + A_out * R_in), R = sum |gamma|:
    c1 1152 * (3 * 3 + 3 * 0) + c2 1152 * (3 * 3 + 3 * 3) + fc 2 * (3 * 0 + 2 * 3)
    = 31116.
  alive_fraction over the exported (regularized) layers c1, c2: (3 + 3) / (4 + 5).

32 examples with batch size 8 give 4 steps per epoch.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer

layers = keras.layers

FLOPS = 1152 * 3 * 3 + 1152 * 3 * 3 + 2 * 3 * 2
TERM = 1152 * (3 * 3) + 1152 * (3 * 3 + 3 * 3) + 2 * (2 * 3)
ALIVE_FRACTION = (3 + 3) / (4 + 5)
STRENGTH = 1e-4
STEPS_PER_EPOCH = 4
LOGGED = ('FLOPs', 'regularization_loss', 'alive_fraction')


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


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8 * STEPS_PER_EPOCH, 8, 8, 3)).astype(np.float32)
  y = rng.integers(0, 2, 8 * STEPS_PER_EPOCH)
  return x, y


def _compile(trainer):
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


@pytest.fixture(scope='module')
def setup():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = training.MorphNetModel(model, reg, STRENGTH)
  _compile(trainer)
  return reg, trainer


def _restart_step_count(trainer):
  """Steps count from 0 again, without the cost of recompiling."""
  trainer.optimizer.iterations.assign(0)


def _fit(trainer, callbacks, epochs=1):
  x, y = _data()
  return trainer.fit(x, y, batch_size=8, epochs=epochs, callbacks=callbacks,
                     verbose=0, shuffle=False)


class _BatchRecorder(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.logs = []

  def on_train_batch_end(self, batch, logs=None):
    self.logs.append(dict(logs))


def _expected_logs(strength=STRENGTH):
  return {'FLOPs': FLOPS, 'regularization_loss': strength * TERM,
          'alive_fraction': ALIVE_FRACTION}


def _assert_logged(logs, expected):
  for key, value in expected.items():
    assert logs[key] == pytest.approx(value, rel=1e-5), key


def _alive_files(export_dir):
  directory = os.path.join(export_dir, 'learned_structure')
  return sorted(os.listdir(directory), key=lambda name: int(name.split('_')[1]))


# ---------------------------------------------------------------------------
# Logged values.
# ---------------------------------------------------------------------------


def test_logs_per_batch_and_per_epoch(setup):
  reg, trainer = setup
  recorder = _BatchRecorder()
  history = _fit(trainer, [callback.MorphNetCallback(reg), recorder], epochs=2)
  assert len(recorder.logs) == 2 * STEPS_PER_EPOCH
  for logs in recorder.logs:
    _assert_logged(logs, _expected_logs())
  for key in LOGGED:
    assert len(history.history[key]) == 2
  _assert_logged({k: v[-1] for k, v in history.history.items()}, _expected_logs())
  # The training loss includes the term: strength * 31116 = 3.1116 on top of a
  # two-class cross-entropy.
  assert history.history['loss'][-1] > STRENGTH * TERM


def test_cost_name_of_the_regularizer_is_the_key():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  size_reg = model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(model, 0.1)
  logs = callback.MorphNetCallback(size_reg).compute_logs()
  # Model size: c1 9*3*3 + c2 9*3*3 + fc 3*2.
  assert logs['ModelSize'] == pytest.approx(9 * 3 * 3 + 9 * 3 * 3 + 3 * 2)
  assert 'FLOPs' not in logs
  assert callback.MorphNetCallback(reg).compute_logs()['FLOPs'] == pytest.approx(FLOPS)


def test_raw_term_without_a_strength():
  model = _model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x, y = _data()
  recorder = _BatchRecorder()
  # A plain model (no MorphNetModel) monitored knowingly: no strength known,
  # the raw term is logged.
  model.fit(x, y, batch_size=8, epochs=1, verbose=0,
            callbacks=[callback.MorphNetCallback(reg, monitor_only=True), recorder])
  _assert_logged(recorder.logs[-1], _expected_logs(strength=1.0))
  # An explicit strength is used as given.
  logs = callback.MorphNetCallback(reg, regularization_strength=0.5).compute_logs()
  _assert_logged(logs, _expected_logs(strength=0.5))


def test_log_every_n_steps_keeps_the_keys_in_every_batch(setup):
  reg, trainer = setup
  recorder = _BatchRecorder()
  _fit(trainer, [callback.MorphNetCallback(reg, log_every_n_steps=3), recorder])
  assert len(recorder.logs) == STEPS_PER_EPOCH
  for logs in recorder.logs:
    _assert_logged(logs, _expected_logs())


# ---------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------


def test_export_every_n_steps_and_each_epoch(setup, tmp_path):
  reg, trainer = setup
  _restart_step_count(trainer)
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path), export_every_n_steps=3)
  _fit(trainer, [cb], epochs=2)
  # Every 3 steps (3, 6) and at the end of each 4-step epoch (4, 8).
  assert _alive_files(str(tmp_path)) == ['alive_3', 'alive_4', 'alive_6', 'alive_8']
  assert [os.path.basename(p) for p in cb.exported_paths] == [
      'alive_3', 'alive_4', 'alive_6', 'alive_8']
  with open(os.path.join(str(tmp_path), 'learned_structure', 'alive_8')) as f:
    # fc has no regularizer under a Gamma regularizer: not exported.
    assert json.load(f) == {'c1': 3, 'c2': 3}


def test_export_by_steps_only(setup, tmp_path):
  reg, trainer = setup
  _restart_step_count(trainer)
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path), export_every_n_steps=2,
                                 export_each_epoch=False, key_by='op')
  _fit(trainer, [cb])
  assert _alive_files(str(tmp_path)) == ['alive_2', 'alive_4']
  with open(cb.exported_paths[-1]) as f:
    counts = json.load(f)
  assert sorted(counts.values()) == [3, 3]
  assert all(name.endswith('/convolution') for name in counts)


def test_step_numbering_resumes_after_a_restart(setup, tmp_path):
  reg, trainer = setup
  _restart_step_count(trainer)
  _fit(trainer, [callback.MorphNetCallback(reg, export_dir=str(tmp_path))])
  assert _alive_files(str(tmp_path)) == ['alive_4']
  assert callback.last_exported_step(str(tmp_path)) == 4
  # "Restart": a fresh optimizer (iterations back at 0) and a new callback
  # with the same export dir continue after the last file.
  _compile(trainer)
  assert int(trainer.optimizer.iterations.numpy()) == 0
  _fit(trainer, [callback.MorphNetCallback(reg, export_dir=str(tmp_path))], epochs=2)
  assert _alive_files(str(tmp_path)) == ['alive_4', 'alive_8', 'alive_12']


def test_resumed_optimizer_keeps_its_own_step(setup, tmp_path):
  reg, trainer = setup
  _restart_step_count(trainer)
  _fit(trainer, [callback.MorphNetCallback(reg, export_dir=str(tmp_path))])
  # Same optimizer (as restored from a checkpoint): its iteration count (4)
  # already includes the earlier steps, no offset is added.
  _fit(trainer, [callback.MorphNetCallback(reg, export_dir=str(tmp_path))])
  assert _alive_files(str(tmp_path)) == ['alive_4', 'alive_8']


def test_last_exported_step_ignores_other_files(tmp_path):
  assert callback.last_exported_step(str(tmp_path)) is None
  directory = tmp_path / 'learned_structure'
  directory.mkdir()
  for name in ('alive_7', 'alive_12', 'alive_3', 'alive_x', '.alive_99.tmp-1-a', 'notes'):
    (directory / name).write_text('{}')
  assert callback.last_exported_step(str(tmp_path)) == 12


def test_failed_write_keeps_the_existing_file(setup, tmp_path, monkeypatch):
  reg, trainer = setup
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path))
  cb.set_model(trainer)
  path = cb.export(5)
  with open(path) as f:
    before = f.read()
  reg.traced_model.model.get_layer('bn2').gamma.assign(np.ones(5, np.float32))
  try:
    def failing_replace(src, dst):
      raise OSError('simulated failure')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='simulated failure'):
      cb.export(5)
    monkeypatch.undo()
    with open(path) as f:
      assert f.read() == before  # still {"c1": 3, "c2": 3}, not c2: 5
    assert os.listdir(os.path.dirname(path)) == ['alive_5']
  finally:
    reg.traced_model.model.get_layer('bn2').gamma.assign([1.0, 0.0, 1.0, 0.0, 1.0])


def test_unwritable_export_dir(setup, tmp_path):
  reg, trainer = setup
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('')
  cb = callback.MorphNetCallback(reg, export_dir=str(not_a_dir))
  with pytest.raises(OSError, match='Cannot create the learned-structure directory.*'
                     'Pass an export_dir that is a writable directory'):
    _fit(trainer, [cb])


# ---------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    ({'export_every_n_steps': 0}, 'export_every_n_steps must be a positive integer'),
    ({'export_every_n_steps': 2.5}, 'export_every_n_steps must be a positive integer'),
    ({'log_every_n_steps': 0}, 'log_every_n_steps must be a positive integer'),
    ({'key_by': 'name'}, 'key_by must be one of'),
    ({'regularization_strength': -1.0}, 'regularization_strength must be finite and >= 0'),
])
def test_bad_arguments(setup, kwargs, match):
  reg, _ = setup
  with pytest.raises(ValueError, match=match):
    callback.MorphNetCallback(reg, **kwargs)
