"""MorphNetModel in the usual Keras workflows.

ModelCheckpoint (full model and weights only), save / load_model, EarlyStopping,
TensorBoard, BackupAndRestore (a resumed run keeps the adapted strength and the
export step numbering) and mixed precision, in target mode. tf.distribute is
covered by fit_test (a MirroredStrategy subprocess, which also runs target
mode).

Model: tests/integration/small_cnn (5 BatchNorm'd convs); 64 examples in
batches of 16: 4 steps per epoch.
"""

from __future__ import annotations

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from tests.integration import small_cnn

STEPS_PER_EPOCH = 4


def _trainer(learning_rate=0.01, **kwargs):
  model = small_cnn.build_model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.01)
  kwargs.setdefault('target_fraction', 0.5)
  trainer = training.MorphNetModel(model, reg, adapt_rate=0.05, **kwargs)
  trainer.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model, reg, trainer


def _fit(trainer, callbacks, epochs=1, **kwargs):
  x, y = small_cnn.make_data(16 * STEPS_PER_EPOCH)
  return trainer.fit(x, y, batch_size=16, epochs=epochs, callbacks=callbacks,
                     verbose=0, shuffle=False, **kwargs)


def _outputs(model):
  x, _ = small_cnn.make_data(4, seed=1)
  return model(x, training=False).numpy()


@pytest.fixture(scope='module')
def checkpointed(tmp_path_factory):
  """One fit with checkpoints (full, weights only), EarlyStopping, TensorBoard."""
  directory = tmp_path_factory.mktemp('workflows')
  model, reg, trainer = _trainer()
  cb = callback.MorphNetCallback(reg)
  # The strength grows every epoch while the cost is above the target: with
  # mode='min' EarlyStopping sees no improvement after epoch 1 (patience 1).
  callbacks = [
      cb, keras.callbacks.ModelCheckpoint(str(directory / 'ckpt.keras')),
      keras.callbacks.ModelCheckpoint(str(directory / 'ckpt.weights.h5'),
                                      save_weights_only=True),
      keras.callbacks.EarlyStopping(monitor='strength', mode='min', patience=1)]
  if _has_tensorboard():
    callbacks.append(keras.callbacks.TensorBoard(str(directory / 'tb')))
  history = _fit(trainer, callbacks, epochs=10).history
  return model, trainer, cb, history, directory


def _has_tensorboard():
  try:
    import tensorboard  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def test_model_checkpoint_of_the_full_model_loads_as_the_plain_model(checkpointed):
  model, _, _, _, directory = checkpointed
  loaded = keras.models.load_model(str(directory / 'ckpt.keras'))
  assert loaded.name == model.name  # save() saved the wrapped model
  np.testing.assert_allclose(_outputs(loaded), _outputs(model), atol=1e-5)


def test_save_and_load_model_round_trip(checkpointed, tmp_path):
  model, trainer, _, _, _ = checkpointed
  trainer.save(str(tmp_path / 'trainer.keras'))
  loaded = keras.models.load_model(str(tmp_path / 'trainer.keras'))
  np.testing.assert_allclose(_outputs(loaded), _outputs(model), atol=1e-5)
  with pytest.raises(NotImplementedError, match='cannot be serialized.*trainer.save'):
    trainer.get_config()


def test_weights_only_checkpoint_loads_into_trainer_and_bare_model(checkpointed):
  model, trainer, _, _, directory = checkpointed
  path = str(directory / 'ckpt.weights.h5')
  adapted = trainer.regularization_strength
  fresh_model, _, fresh_trainer = _trainer()
  assert fresh_trainer.regularization_strength != pytest.approx(adapted)
  fresh_trainer.load_weights(path)
  assert fresh_trainer.regularization_strength == pytest.approx(adapted, rel=1e-6)
  assert fresh_trainer.target_cost == pytest.approx(trainer.target_cost)
  np.testing.assert_allclose(_outputs(fresh_model), _outputs(model), atol=1e-6)
  bare = training.load_model_weights(small_cnn.build_model(), path)
  np.testing.assert_allclose(_outputs(bare), _outputs(model), atol=1e-6)


def test_early_stopping_on_a_morphnet_log(checkpointed):
  _, _, cb, history, _ = checkpointed
  assert len(history['strength']) == 2  # stopped after patience + 1 epochs
  assert history['strength'][1] > history['strength'][0]
  assert cb.completion is not None  # the train-end completion still ran


def test_tensorboard_records_cost_and_strength(checkpointed):
  """The event file holds, per epoch, the same FLOPs / strength / alive fraction as History."""
  if not _has_tensorboard():
    pytest.skip('the tensorboard package is not installed (pip install -e .[test])')
  _, _, _, history, directory = checkpointed
  paths = glob.glob(str(directory / 'tb' / 'train' / 'events.*'))
  assert paths, f'TensorBoard wrote no event file under {directory / "tb" / "train"}'
  logged = {}  # tag -> {epoch: value}
  for path in paths:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        logged.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  for name in ('FLOPs', 'strength', 'alive_fraction'):
    by_epoch = logged.get('epoch_' + name)
    assert by_epoch is not None, f'epoch_{name} missing; tags: {sorted(logged)}'
    assert sorted(by_epoch) == list(range(len(history[name])))
    np.testing.assert_allclose([by_epoch[e] for e in sorted(by_epoch)], history[name], rtol=1e-6)
  # Epoch 0, every channel alive: the full small_cnn's FLOPs by hand,
  # 2 * positions * taps * C_in * C_out per conv (c1 3x3/2 on 16x16 -> 8x8):
  # c1 2*64*9*1*8 + c2 2*64*9*8*8 + c3 2*64*1*8*6 + c4 2*64*9*8*6
  # + c5 (3x3/2 -> 4x4) 2*16*9*12*8 + fc 2*8*4 = 172096.
  assert logged['epoch_alive_fraction'][0] == 1.0
  assert logged['epoch_FLOPs'][0] == 172096
  assert logged['epoch_strength'][1] > logged['epoch_strength'][0]  # adapted toward the target


class _Interrupt(keras.callbacks.Callback):
  """Stops training by an exception after epoch `epoch` (as a crash would)."""

  def __init__(self, epoch):
    super().__init__()
    self._epoch = epoch
    self.strength = None

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self._epoch:
      self.strength = self.model.regularization_strength
      raise RuntimeError('interrupted')


class _FirstStrength(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.strength = None

  def on_train_batch_begin(self, batch, logs=None):
    if self.strength is None:
      self.strength = self.model.regularization_strength


@pytest.mark.slow  # ~35 s on 2 shared cores
def test_backup_and_restore_keeps_the_strength_and_the_step_numbering(tmp_path):
  backup, export = str(tmp_path / 'backup'), str(tmp_path / 'export')
  _, reg, trainer = _trainer()
  interrupt = _Interrupt(epoch=1)
  with pytest.raises(RuntimeError, match='interrupted'):
    _fit(trainer, [callback.MorphNetCallback(reg, export_dir=export),
                   keras.callbacks.BackupAndRestore(backup), interrupt], epochs=4)
  assert sorted(os.listdir(os.path.join(export, 'learned_structure'))) == [
      'alive_4', 'alive_8']
  # A new process would build everything again: fresh model, strength s0.
  _, reg2, trainer2 = _trainer()
  first = _FirstStrength()
  cb = callback.MorphNetCallback(reg2, export_dir=export)
  _fit(trainer2, [cb, keras.callbacks.BackupAndRestore(backup), first], epochs=4)
  assert first.strength == pytest.approx(interrupt.strength, rel=1e-6)
  names = sorted(os.listdir(os.path.join(export, 'learned_structure')))
  # Epochs 3 and 4 continue at steps 12 and 16 (the final export is the
  # structure within the target, with its record).
  assert names == ['alive_12', 'alive_16', 'alive_16.budget.json', 'alive_4', 'alive_8']
  record = json.loads(open(os.path.join(export, 'learned_structure',
                                        'alive_16.budget.json')).read())
  assert record['exported_cost'] <= trainer2.target_cost


@pytest.fixture
def mixed_float16():
  keras.mixed_precision.set_global_policy('mixed_float16')
  yield
  keras.mixed_precision.set_global_policy('float32')


@pytest.mark.slow  # ~20 s; fit_test covers mixed precision without a target
def test_target_mode_under_mixed_precision(mixed_float16):
  model, reg, trainer = _trainer()
  assert model.get_layer('c1').compute_dtype == 'float16'
  cb = callback.MorphNetCallback(reg)
  history = _fit(trainer, [cb], epochs=2).history
  assert np.all(np.isfinite(history['loss']))
  assert history['strength'][1] > history['strength'][0]  # above the target
  assert cb.completion.cost <= trainer.target_cost
