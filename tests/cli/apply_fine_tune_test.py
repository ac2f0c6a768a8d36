"""`morphnet shrink --data ... --recalibrate-steps / --fine-tune-epochs`."""

import json
import os

import keras
import numpy as np
import pytest

from morph_net.cli import main as cli_main

L = keras.layers


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp('apply_fine_tune')
  image = keras.Input((6, 6, 1), name='image')
  x = L.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.ReLU(name='c1_relu')(L.BatchNormalization(name='c1_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  model = keras.Model(image, L.Dense(3, name='logits')(x), name='tiny')
  paths = {'model': str(directory / 'tiny.keras'), 'masks': str(directory / 'masks.json'),
           'data': str(directory / 'data.npz')}
  model.save(paths['model'])
  with open(paths['masks'], 'w') as f:
    json.dump({'c1': [True, False, True, True]}, f)
  rng = np.random.default_rng(0)
  np.savez(paths['data'], x=rng.normal(2.0, 3.0, (12, 6, 6, 1)).astype(np.float32),
           y=rng.integers(0, 3, 12).astype(np.int32))
  return paths


def _shrink(files, output, *extra):
  """The exit status (argparse exits with SystemExit(2) on a bad flag value)."""
  try:
    return _main(files, output, *extra)
  except SystemExit as e:
    return e.code


def _main(files, output, *extra):
  return cli_main.main(['shrink', '--model', files['model'], '--structure', files['masks'],
                        '--output', output, '--transfer-weights', *extra])


def test_recalibrates_on_the_first_batches(files, tmp_path, capsys):
  output = str(tmp_path / 'small.keras')
  assert _shrink(files, output, '--data', files['data'], '--recalibrate-steps', '2',
                 '--batch-size', '4') == 0
  assert 'recalibrated 1 BatchNormalization layer(s) on 2 batch(es)' in capsys.readouterr().out
  small = keras.models.load_model(output, compile=False)
  # Statistics of c1's output (3 kept channels) on the first 2 x 4 = 8 examples.
  x = np.load(files['data'])['x'][:8]
  conv = np.asarray(small.get_layer('c1')(x), np.float64)
  bn = small.get_layer('c1_bn')
  np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(axis=(0, 1, 2)), rtol=1e-4)


def test_fine_tunes_after_recalibration(files, tmp_path, capsys):
  output = str(tmp_path / 'small.keras')
  assert _shrink(files, output, '--recalibrate-data', files['data'], '--fine-tune-epochs',
                 '2', '--batch-size', '6', '--learning-rate', '0.01') == 0
  out = capsys.readouterr().out
  assert 'on all batch(es)' in out and 'fine-tuned 2 epoch(s): accuracy' in out
  small = keras.models.load_model(output, compile=False)
  assert small.get_layer('c1').filters == 3
  # Fine-tuning moved the kernel away from the transferred one.
  old = keras.models.load_model(files['model'], compile=False)
  assert not np.allclose(small.get_layer('c1').kernel.numpy(),
                         old.get_layer('c1').kernel.numpy()[..., [0, 2, 3]])


@pytest.mark.parametrize('argv, message', [
    (['--fine-tune-epochs', '2'], '--fine-tune-epochs needs --data'),
    (['--recalibrate-steps', '3'], '--recalibrate-steps needs --data'),
    (['--recalibrate-steps', '0', '--data', 'DATA'], '--recalibrate-steps must be >= 1'),
    (['--fine-tune-epochs', '-1', '--data', 'DATA'], '--fine-tune-epochs must be >= 0'),
])
def test_bad_arguments(files, tmp_path, capsys, argv, message):
  output = str(tmp_path / 'small.keras')
  argv = [files['data'] if a == 'DATA' else a for a in argv]
  assert _shrink(files, output, *argv) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1
  assert not os.path.exists(output)


def test_data_needs_transfer_weights(files, tmp_path, capsys):
  output = str(tmp_path / 'small.keras')
  assert cli_main.main(['shrink', '--model', files['model'], '--structure', files['masks'],
                        '--output', output, '--data', files['data']]) == 2
  assert 'add --transfer-weights' in capsys.readouterr().err
