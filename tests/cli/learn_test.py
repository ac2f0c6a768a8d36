"""`morphnet learn` on a tiny model and tiny .npz data."""

import json
import os
import re

import keras
import numpy as np
import pytest

from morph_net.cli import main as cli_main

L = keras.layers


def _tiny_model():
  image = keras.Input((6, 6, 1), name='image')
  x = L.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.ReLU(name='c1_relu')(L.BatchNormalization(name='c1_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='tiny')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp('learn')
  model_path = str(directory / 'tiny.keras')
  _tiny_model().save(model_path)
  rng = np.random.default_rng(0)
  data_path = str(directory / 'data.npz')
  np.savez(data_path, x=rng.normal(size=(12, 6, 6, 1)).astype('float32'),
           y=rng.integers(0, 3, size=12).astype('int32'))
  return {'model': model_path, 'data': data_path, 'dir': directory}


def _learn(files, export_dir, *extra):
  return cli_main.main(['learn', '--model', files['model'], '--data', files['data'],
                        '--export-dir', str(export_dir), '--batch-size', '4', '--quiet',
                        *extra])


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_learn_without_strength_keeps_every_channel(files, tmp_path, capsys):
  export_dir = tmp_path / 'run'
  assert _learn(files, export_dir, '--strength', '0', '--epochs', '1') == 0
  out = capsys.readouterr().out
  # FLOPs of the seed, per example: conv 2*6*6*3*3*1*4 = 2592, dense 2*4*3 = 24.
  assert 'FLOPs: 2,616 -> 2,616 (100.0%)' in out
  # Strength 0 and three Adam steps (lr 1e-3) from gamma = 1: every gamma stays
  # far above the 0.01 threshold.
  assert _read(export_dir / 'learned_structure.json') == {'c1': 4}
  assert _read(export_dir / 'learned_masks.json') == {'c1': [True] * 4}
  # 12 examples / batch 4 = 3 steps in the one epoch: the callback's export.
  assert _read(export_dir / 'learned_structure' / 'alive_3') == {'c1': 4}
  summary = _read(export_dir / 'learn_summary.json')
  assert summary['initial_cost'] == 2616 and summary['final_cost'] == 2616
  assert summary['regularization_strength'] == 0
  assert summary['regularizer'] == 'GammaFlopsRegularizer'
  trained = keras.models.load_model(str(export_dir / 'trained_model.keras'), compile=False)
  assert trained.get_layer('c1').filters == 4


def test_learn_uses_the_threshold_and_recommended_strength(files, tmp_path, capsys):
  export_dir = tmp_path / 'run'
  # Threshold 2: gammas start at 1 and move by ~1e-3 per Adam step, so every
  # channel is dead; the strength then cannot come from the (zero) cost.
  assert _learn(files, export_dir, '--threshold', '2', '--strength', '1e-3') == 0
  assert _read(export_dir / 'learned_structure.json') == {'c1': 0}
  capsys.readouterr()
  # Recommended strength = multiplier / initial cost = 10 / 2616.
  export_dir = tmp_path / 'recommended'
  assert _learn(files, export_dir, '--strength-multiplier', '10', '--epochs', '1') == 0
  assert _read(export_dir / 'learn_summary.json')['regularization_strength'] == (
      pytest.approx(10 / 2616))
  assert 'recommended' in capsys.readouterr().out


def test_learn_group_lasso_latency(files, tmp_path):
  export_dir = tmp_path / 'run'
  assert _learn(files, export_dir, '--regularizer', 'group_lasso', '--cost', 'latency',
                '--hardware', 'K80', '--strength', '0', '--epochs', '1') == 0
  summary = _read(export_dir / 'learn_summary.json')
  assert summary['regularizer'] == 'GroupLassoLatencyRegularizer'
  assert 'K80' in summary['cost_name']
  # GroupLasso sources are the conv and dense kernels: both are exported.
  assert _read(export_dir / 'learned_structure.json') == {'c1': 4, 'logits': 3}


def test_help(capsys):
  with pytest.raises(SystemExit) as e:
    cli_main.main(['learn', '--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for option in ('--model', '--data', '--export-dir', '--regularizer', '--cost',
                 '--hardware', '--strength', '--strength-multiplier', '--epochs',
                 '--batch-size'):
    assert option in out


def _bad_data(directory, name, **arrays):
  path = str(directory / name)
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize('case, message', [
    ('missing_model', 'no such file'),
    ('missing_data', 'no such file'),
    ('corrupted_data', 'cannot read'),
    ('no_labels', r"no array\(s\) \['y'\]"),
    ('wrong_shape', r'shape \(5, 5, 1\)'),
    ('bad_labels', r'class indices in \[0, 3\)'),
    ('unknown_hardware', '--hardware must be one of'),
    ('export_dir_is_a_file', '--export-dir is a file'),
])
def test_bad_arguments_fail_on_one_line_and_write_nothing(files, tmp_path, capsys, case,
                                                          message):
  export_dir = tmp_path / 'run'
  args = {'--model': files['model'], '--data': files['data'], '--export-dir': str(export_dir)}
  extra = []
  if case == 'missing_model':
    args['--model'] = str(tmp_path / 'missing.keras')
  elif case == 'missing_data':
    args['--data'] = str(tmp_path / 'missing.npz')
  elif case == 'corrupted_data':
    args['--data'] = str(tmp_path / 'bad.npz')
    (tmp_path / 'bad.npz').write_text('not an archive')
  elif case == 'no_labels':
    args['--data'] = _bad_data(tmp_path, 'x.npz', x=np.zeros((4, 6, 6, 1), 'float32'))
  elif case == 'wrong_shape':
    args['--data'] = _bad_data(tmp_path, 'x.npz', x=np.zeros((4, 5, 5, 1), 'float32'),
                               y=np.zeros(4, 'int32'))
  elif case == 'bad_labels':
    args['--data'] = _bad_data(tmp_path, 'x.npz', x=np.zeros((4, 6, 6, 1), 'float32'),
                               y=np.array([0, 1, 2, 3], 'int32'))
  elif case == 'unknown_hardware':
    extra = ['--cost', 'latency', '--hardware', 'Z80']
  elif case == 'export_dir_is_a_file':
    export_dir.write_text('')
  argv = ['learn'] + [part for item in args.items() for part in item] + extra
  assert cli_main.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert err.startswith('morphnet learn: error:')
  assert re.search(message, err)
  if case != 'export_dir_is_a_file':
    assert not os.path.exists(export_dir)


@pytest.mark.parametrize('option, value', [('--epochs', '-1'), ('--batch-size', '0'),
                                           ('--strength', '-2'), ('--threshold', 'x'),
                                           ('--cost', 'energy')])
def test_bad_numbers_and_choices_are_argparse_errors_on_one_line(files, tmp_path, capsys,
                                                                 option, value):
  with pytest.raises(SystemExit) as e:
    _learn(files, tmp_path / 'run', option, value)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert option in err
  assert not os.path.exists(tmp_path / 'run')
