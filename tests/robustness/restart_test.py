"""Interruption and restart (issue 7): nothing written is lost.

* An export killed in the middle of writing (SIGKILL of the process) leaves
  the previous `alive_<step>` file intact: files are written to a temporary
  file and moved into place with `os.replace`.
* A model saved as `.keras` and loaded again gives the same cost and the same
  alive counts.
* After a restart (model reloaded, fresh optimizer, new callback), the
  callback's step numbering continues after the last exported file, and the
  earlier files are untouched.

Model: 8x8x3 -> c1 (3x3, 4, SAME) -> bn1 -> relu -> c2 (3x3, 5, SAME) -> bn2
-> relu -> gap -> fc (2); gammas bn1 [1, 0, 1, 1], bn2 [0, 1, 0, 1, 1] with a
threshold of 0.1: 3 and 3 alive. FLOPs: 2 * 8*8 * 3*3 = 1152 per channel pair:
c1 1152 * 3 * 3 + c2 1152 * 3 * 3 + fc 2 * 3 * 2 = 20748.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from morph_net.keras_integration import callback
from morph_net.keras_integration import structure_io
from morph_net.keras_integration import training
from morph_net.keras_integration.layer_structure import LayerStructureExporter
from morph_net.network_regularizers import flop_regularizer

layers = keras.layers
FLOPS = 1152 * 3 * 3 + 1152 * 3 * 3 + 2 * 3 * 2
ALIVE = {'c1': 3, 'c2': 3}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding='same', name='c1')(inputs)
  x = layers.ReLU()(layers.BatchNormalization(name='bn1')(x))
  x = layers.Conv2D(5, 3, padding='same', name='c2')(x)
  x = layers.ReLU()(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, layers.Dense(2, name='fc')(x))
  model.get_layer('bn1').gamma.assign([1.0, 0.0, 1.0, 1.0])
  model.get_layer('bn2').gamma.assign([0.0, 1.0, 0.0, 1.0, 1.0])
  return model


_KILLED_WRITER = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from morph_net.tools import structure_exporter

    real_fdopen = os.fdopen

    class _SlowFile:
      """Writes half of the content, then hangs (until killed)."""

      def __init__(self, f):
        self._f = f

      def __enter__(self):
        return self

      def __exit__(self, *args):
        return self._f.__exit__(*args)

      def write(self, text):
        self._f.write(text[:len(text) // 2])
        self._f.flush()
        open({marker!r}, 'w').close()
        time.sleep(600)

      def __getattr__(self, name):
        return getattr(self._f, name)

    os.fdopen = lambda fd, *a, **k: _SlowFile(real_fdopen(fd, *a, **k))
    structure_exporter.write_file_atomically(
        {path!r}, structure_exporter.format_structure({new!r}))
''')


def test_export_killed_mid_write_keeps_the_previous_file(tmp_path):
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(_model(), 0.1)
  path = LayerStructureExporter(reg).save(str(tmp_path), 7)
  with open(path) as f:
    before = f.read()
  marker = str(tmp_path / 'half_written')
  script = _KILLED_WRITER.format(repo=REPO, marker=marker, path=path,
                                 new={'c1': 1, 'c2': 1, 'fc': 2})
  child = subprocess.Popen([sys.executable, '-c', script])
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(marker):
      assert child.poll() is None, 'the writer exited before writing'
      assert time.monotonic() < deadline, 'the writer never started writing'
      time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
  finally:
    child.kill()
    child.wait()
  # The half-written temporary file is left behind, under another name.
  directory = os.path.dirname(path)
  leftovers = [n for n in os.listdir(directory) if n != 'alive_7']
  assert len(leftovers) == 1 and leftovers[0].startswith('.alive_7.tmp-')
  with open(path) as f:
    assert f.read() == before
  assert structure_io.load_structure(path) == ALIVE
  # It is neither an exported step nor in the way of the next export.
  assert callback.last_exported_step(str(tmp_path)) == 7
  LayerStructureExporter(reg).save(str(tmp_path), 8)
  assert structure_io.load_structure(os.path.join(directory, 'alive_8')) == ALIVE


@pytest.mark.parametrize('cls, args', [
    (flop_regularizer.GammaFlopsRegularizer, (0.1,)),
    (flop_regularizer.GroupLassoFlopsRegularizer, (0.5,)),
])
def test_saved_and_loaded_model_gives_the_same_cost_and_alive_counts(tmp_path, cls, args):
  model = _model()
  # GroupLasso: kernel slices with RMS 1 (alive) or 0 (dead): c1 [1,0,1,1],
  # c2 [0,1,0,1,1], fc [1,1] -- the same alive counts as the gammas.
  for name, alive in (('c1', [1, 0, 1, 1]), ('c2', [0, 1, 0, 1, 1]), ('fc', [1, 1])):
    kernel = model.get_layer(name).kernel
    kernel.assign(np.ones(kernel.shape, np.float32) * np.asarray(alive, np.float32))
  reg = cls.from_keras_model(model, *args)
  cost = float(reg.get_cost())
  counts = LayerStructureExporter(reg).alive_counts()
  assert cost == FLOPS
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.models.load_model(path)
  loaded_reg = cls.from_keras_model(loaded, *args)
  assert float(loaded_reg.get_cost()) == cost
  assert LayerStructureExporter(loaded_reg).alive_counts() == counts
  assert float(loaded_reg.get_regularization_term()) == pytest.approx(
      float(reg.get_regularization_term()), rel=1e-6)


def _train(model, export_dir, epochs):
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.1)
  trainer = training.MorphNetModel(model, reg, 1e-4)
  # A zero learning rate keeps the gammas (and so the exported counts) fixed.
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
  y = rng.integers(0, 2, 16)
  cb = callback.MorphNetCallback(reg, export_dir=export_dir, export_every_n_steps=1,
                                 export_each_epoch=False)
  trainer.fit(x, y, batch_size=8, epochs=epochs, callbacks=[cb], verbose=0, shuffle=False)
  return cb


def _alive_files(export_dir):
  names = os.listdir(os.path.join(export_dir, 'learned_structure'))
  return sorted(names, key=lambda name: int(name.split('_')[1]))


def test_callback_resumes_its_step_numbering_after_a_restart(tmp_path):
  export_dir = str(tmp_path / 'train_dir')
  model = _model()
  _train(model, export_dir, epochs=1)  # 2 steps of 8 examples.
  assert _alive_files(export_dir) == ['alive_1', 'alive_2']
  first = {name: (tmp_path / 'train_dir' / 'learned_structure' / name).read_text()
           for name in _alive_files(export_dir)}
  path = str(tmp_path / 'model.keras')
  model.save(path)
  # Restart: the model is loaded, the optimizer and the callback are new.
  cb = _train(keras.models.load_model(path), export_dir, epochs=2)
  assert _alive_files(export_dir) == [f'alive_{step}' for step in range(1, 7)]
  assert [os.path.basename(p) for p in cb.exported_paths] == [
      'alive_3', 'alive_4', 'alive_5', 'alive_6']
  for name, text in first.items():
    assert (tmp_path / 'train_dir' / 'learned_structure' / name).read_text() == text
  assert structure_io.load_structure(cb.exported_paths[-1]) == ALIVE
