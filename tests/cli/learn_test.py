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


# ----------------------------------------------------------------------------
# Target mode, data formats, input shapes, warnings, re-runs.


def test_learn_to_a_target_completes_and_expands_back(files, tmp_path, capsys):
  export_dir = tmp_path / 'run'
  assert _learn(files, export_dir, '--target', '0.5x', '--cost-neutral', '--epochs', '1',
                '--strength-multiplier', '10') == 0
  out = capsys.readouterr().out
  # Seed 2616 FLOPs (conv 648 per channel, dense 6 per channel); target 1308.
  # Three Adam steps kill nothing; one channel saves 648 + 6 = 654:
  # 3 channels 1962 > 1308, 2 channels 1296 + 12 = 1308 <= 1308.
  assert 'target 1,308 (the strength adapts)' in out
  assert 'x 10 (--strength-multiplier)' in out
  assert 'FLOPs: 2,616 -> 1,308 (50.0%)' in out
  assert 'completed to 1,308' in out
  assert _read(export_dir / 'learned_structure.json') == {'c1': 2}
  assert sum(_read(export_dir / 'learned_masks.json')['c1']) == 2
  summary = _read(export_dir / 'learn_summary.json')
  assert summary['budget']['completed'] and summary['trained_cost'] == 2616
  # Cost-neutral: 2 channels expanded back within 2616: 4 channels (2616).
  assert _read(export_dir / 'expanded_structure.json') == {'c1': 4}
  expanded = keras.models.load_model(str(export_dir / 'expanded_model.keras'))
  assert expanded.get_layer('c1').filters == 4
  budget_files = [n for n in os.listdir(export_dir / 'learned_structure')
                  if n.endswith('.budget.json')]
  assert budget_files == ['alive_3.budget.json']


def test_rerun_into_an_export_dir_needs_overwrite(files, tmp_path, capsys):
  export_dir = tmp_path / 'run'
  assert _learn(files, export_dir, '--strength', '0', '--epochs', '1') == 0
  capsys.readouterr()
  assert _learn(files, export_dir, '--strength', '0', '--epochs', '1') == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert 'holds the learned structure of an earlier run (up to alive_3)' in err
  assert _learn(files, export_dir, '--strength', '0', '--epochs', '2', '--overwrite') == 0
  # Numbering restarts: 3 steps per epoch.
  assert sorted(os.listdir(export_dir / 'learned_structure')) == ['alive_3', 'alive_6']


def test_flags_that_do_not_apply_are_named(files, tmp_path, capsys):
  assert _learn(files, tmp_path / 'run', '--strength', '0', '--epochs', '1',
                '--hardware', 'K80', '--strength-multiplier', '3') == 0
  err = capsys.readouterr().err
  assert 'warning: --hardware is ignored: it sets the latency hardware, but --cost is flops' in err
  assert 'warning: --strength-multiplier is ignored' in err


def test_npy_pairs_and_validation_split(files, tmp_path, capsys):
  rng = np.random.default_rng(1)
  np.save(tmp_path / 'x.npy', rng.normal(size=(12, 6, 6, 1)).astype('float32'))
  np.save(tmp_path / 'y.npy', rng.integers(0, 3, size=12).astype('int32'))
  argv = ['learn', '--model', files['model'], '--data', str(tmp_path / 'x.npy'),
          '--export-dir', str(tmp_path / 'run'), '--strength', '0', '--epochs', '1',
          '--batch-size', '3', '--quiet', '--validation-split', '0.25']
  assert cli_main.main(argv + ['--labels', str(tmp_path / 'y.npy')]) == 0
  out = capsys.readouterr().out
  assert re.search(r'final validation accuracy: [01]\.\d{4}', out)
  # 9 training examples / batch 3 = 3 steps.
  assert os.listdir(tmp_path / 'run' / 'learned_structure') == ['alive_3']
  assert cli_main.main(argv[:6] + [str(tmp_path / 'other')] + argv[7:]) == 2
  assert 'pass the targets with --labels' in capsys.readouterr().err


def test_image_folder(files, tmp_path, capsys):
  rng = np.random.default_rng(2)
  for label in ('cats', 'dogs'):
    (tmp_path / 'images' / label).mkdir(parents=True)
    for i in range(3):
      keras.utils.save_img(str(tmp_path / 'images' / label / f'{i}.png'),
                           rng.integers(0, 255, (6, 6, 1)).astype('uint8'), scale=False)
  argv = ['learn', '--model', files['model'], '--data', str(tmp_path / 'images'),
          '--export-dir', str(tmp_path / 'run'), '--strength', '0', '--epochs', '1',
          '--batch-size', '2', '--quiet']
  assert cli_main.main(argv) == 0
  # 6 images / batch 2 = 3 steps; labels 0 (cats) and 1 (dogs) of 3 outputs.
  assert os.listdir(tmp_path / 'run' / 'learned_structure') == ['alive_3']
  capsys.readouterr()
  (tmp_path / 'empty').mkdir()
  argv[4] = str(tmp_path / 'empty')
  argv[6] = str(tmp_path / 'run2')
  assert cli_main.main(argv) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and 'images' in err


def _any_size_model():
  image = keras.Input((None, None, 1), name='image')
  x = image
  for name, filters in (('zc', 4), ('ac', 3)):
    x = L.Conv2D(filters, 3, padding='same', use_bias=False, name=name)(x)
    x = L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='any_size')


def test_input_shape_from_the_data_table_in_model_order(files, tmp_path, capsys):
  model_path = str(tmp_path / 'any.keras')
  _any_size_model().save(model_path)
  argv = ['learn', '--model', model_path, '--data', files['data'], '--export-dir',
          str(tmp_path / 'run'), '--strength', '0', '--epochs', '1', '--quiet']
  assert cli_main.main(argv) == 0
  out = capsys.readouterr().out
  # 6x6 from the data: zc 2*36*9*1*4 = 2592, ac 2*36*9*4*3 = 7776, dense 2*3*3 = 18.
  assert 'FLOPs: 10,386 -> 10,386' in out
  lines = [line.split()[0] for line in out.splitlines() if line.startswith(('zc', 'ac'))]
  assert lines == ['zc', 'ac']  # model order, not alphabetical
  # A given --input-shape that does not fit the data (or model) is a one-line error.
  assert cli_main.main(argv[:6] + [str(tmp_path / 'run2')] + argv[7:]
                       + ['--input-shape', '1,5,5,1']) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and 'does not match the data' in err
  assert cli_main.main(['learn', '--model', files['model'], '--data', files['data'],
                        '--export-dir', str(tmp_path / 'run3'),
                        '--input-shape', '1,6,6,3']) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert "takes inputs of shape (6, 6, 1)" in err
