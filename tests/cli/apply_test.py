"""`morphnet shrink` and `morphnet expand` on a tiny model."""

import json
import os

import keras
import numpy as np
import pytest

from morph_net.cli import main as cli_main

L = keras.layers

# The tiny model: 6x6x1 image -> 3x3 conv 'c1' (SAME, w channels) -> BN -> ReLU
# -> global average pooling -> Dense(3) 'logits'. FLOPs per example:
# conv 2*6*6*3*3*1*w = 648w, dense 2*w*3 = 6w: 654w in all. Weights (conv and
# dense kernels): 3*3*1*w + w*3 = 12w.
SEED_WIDTH = 4
SEED_FLOPS = 654 * 4  # 2616


def _tiny_model():
  image = keras.Input((6, 6, 1), name='image')
  x = L.Conv2D(SEED_WIDTH, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.ReLU(name='c1_relu')(L.BatchNormalization(name='c1_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='tiny')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  directory = tmp_path_factory.mktemp('apply')
  model = _tiny_model()
  # Distinct, recognisable BN parameters for the weight-transfer check.
  model.get_layer('c1_bn').gamma.assign(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
  model_path = str(directory / 'tiny.keras')
  model.save(model_path)
  paths = {'model': model_path, 'dir': directory}
  for name, structure in (('counts', {'c1': 2}), ('masks', {'c1': [True, False, True, False]})):
    paths[name] = str(directory / f'{name}.json')
    with open(paths[name], 'w') as f:
      json.dump(structure, f)
  paths['truncated'] = str(directory / 'truncated.json')
  with open(paths['truncated'], 'w') as f:
    f.write('{"c1": 2')
  paths['unknown_layer'] = str(directory / 'unknown.json')
  with open(paths['unknown_layer'], 'w') as f:
    json.dump({'conv_9': 2}, f)
  return paths


def _load(path):
  return keras.models.load_model(path, compile=False)


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_shrink_with_counts(files, tmp_path, capsys):
  output = str(tmp_path / 'small.keras')
  assert cli_main.main(['shrink', '--model', files['model'], '--structure', files['counts'],
                        '--output', output]) == 0
  assert _load(output).get_layer('c1').filters == 2
  out = capsys.readouterr().out
  # 654 * 4 = 2616 -> 654 * 2 = 1308.
  assert 'FLOPs: 2,616 -> 1,308 (50.0%)' in out
  assert 'fresh weights' in out


def test_shrink_transfers_the_weights_of_surviving_channels(files, tmp_path):
  output = str(tmp_path / 'small.keras')
  assert cli_main.main(['shrink', '--model', files['model'], '--structure', files['masks'],
                        '--output', output, '--transfer-weights']) == 0
  old, new = _load(files['model']), _load(output)
  kept = [0, 2]
  np.testing.assert_array_equal(new.get_layer('c1').kernel.numpy(),
                                old.get_layer('c1').kernel.numpy()[..., kept])
  np.testing.assert_array_equal(new.get_layer('c1_bn').gamma.numpy(), [1.0, 3.0])
  np.testing.assert_array_equal(new.get_layer('logits').kernel.numpy(),
                                old.get_layer('logits').kernel.numpy()[kept])


@pytest.mark.parametrize('structure, extra, message', [
    ('counts', ['--transfer-weights'], 'needs per-channel masks'),
    ('truncated', [], 'not valid JSON'),
    ('unknown_layer', [], "not in model 'tiny'"),
    ('missing', [], 'no such file'),
])
def test_shrink_bad_arguments(files, tmp_path, capsys, structure, extra, message):
  output = tmp_path / 'small.keras'
  path = files.get(structure, str(tmp_path / 'missing.json'))
  assert cli_main.main(['shrink', '--model', files['model'], '--structure', path,
                        '--output', str(output), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith('morphnet shrink: error:') and message in err
  assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(output) and os.listdir(tmp_path) == []


def test_shrink_output_must_be_a_keras_file(files, tmp_path, capsys):
  assert cli_main.main(['shrink', '--model', files['model'], '--structure', files['counts'],
                        '--output', str(tmp_path / 'small.h5')]) == 2
  assert 'ending in .keras' in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


def test_expand_to_the_seed_flops_by_default(files, tmp_path, capsys):
  output = str(tmp_path / 'big.keras')
  assert cli_main.main(['expand', '--model', files['model'], '--structure', files['counts'],
                        '--output', output]) == 0
  # Learned c1 = 2, target = seed FLOPs 2616 = 654 * 4: the largest width is 4
  # (omega = 2); width 5 costs 654 * 5 = 3270 > 2616.
  assert _load(output).get_layer('c1').filters == 4
  costs = _read(str(tmp_path / 'big_costs.json'))
  assert costs['widths'] == {'c1': 4}
  assert costs['learned_structure'] == {'c1': 2}
  assert (costs['seed_cost'], costs['shrunk_cost'], costs['expanded_cost'],
          costs['next_cost'], costs['target_cost']) == (2616, 1308, 2616, 3270, 2616)
  assert costs['cost'] == 'flops' and costs['cost_name'] == 'FLOPs'
  assert 'wrote' in capsys.readouterr().out


@pytest.mark.parametrize('argv, width', [
    (['--target-flops', '2000'], 3),        # 654*3 = 1962 <= 2000 < 654*4 = 2616
    (['--target-flops', '0.5x'], 2),        # 0.5 * 2616 = 1308 = 654*2
    (['--target-cost', '30', '--cost', 'model_size'], 2),  # 12*2 = 24 <= 30 < 12*3 = 36
    (['--target-cost', '1x', '--cost', 'latency', '--hardware', 'K80'], 4),  # the seed's own
])
def test_expand_targets(files, tmp_path, argv, width):
  output = str(tmp_path / 'big.keras')
  costs = str(tmp_path / 'costs.json')
  assert cli_main.main(['expand', '--model', files['model'], '--structure', files['counts'],
                        '--output', output, '--costs-json', costs, *argv]) == 0
  assert _load(output).get_layer('c1').filters == width
  assert _read(costs)['widths'] == {'c1': width}


def test_expand_accepts_masks(files, tmp_path):
  output = str(tmp_path / 'big.keras')
  # Masks with two alive channels expand like the count 2.
  assert cli_main.main(['expand', '--model', files['model'], '--structure', files['masks'],
                        '--output', output, '--target-flops', '2000']) == 0
  assert _load(output).get_layer('c1').filters == 3


@pytest.mark.parametrize('argv, message', [
    (['--target-flops', '-5'], '--target-flops must be > 0'),
    (['--target-cost', '0'], '--target-cost must be > 0'),
    (['--target-flops', 'lots'], '--target-flops must be a number'),
    (['--target-flops', '100'], 'below the cost of the smallest network'),  # width 1: 654
    (['--cost', 'latency', '--hardware', 'Z80'], '--hardware must be one of'),
    (['--target-flops', '1e3', '--cost', 'latency'], '--target-flops sets a FLOP target'),
    (['--structure', 'TRUNCATED'], 'not valid JSON'),
    (['--model', 'MISSING'], 'no such file'),
])
def test_expand_bad_arguments(files, tmp_path, capsys, argv, message):
  output = tmp_path / 'big.keras'
  args = {'--model': files['model'], '--structure': files['counts'], '--output': str(output)}
  rest = []
  for option, value in zip(argv[::2], argv[1::2]):
    if value == 'TRUNCATED':
      args[option] = files['truncated']
    elif value == 'MISSING':
      args[option] = str(tmp_path / 'missing.keras')
    else:
      rest += [option, value]
  argv = ['expand'] + [part for item in args.items() for part in item] + rest
  assert cli_main.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('morphnet expand: error:') and message in err
  assert len(err.strip().splitlines()) == 1
  assert os.listdir(tmp_path) == []


def test_expand_targets_are_exclusive(files, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli_main.main(['expand', '--model', files['model'], '--structure', files['counts'],
                   '--output', str(tmp_path / 'big.keras'), '--target-flops', '1',
                   '--target-cost', '1'])
  assert e.value.code == 2
  assert 'not allowed with argument' in capsys.readouterr().err


@pytest.mark.parametrize('command', ['shrink', 'expand'])
def test_help(capsys, command):
  with pytest.raises(SystemExit) as e:
    cli_main.main([command, '--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert '--model' in out and '--structure' in out and '--output' in out
  if command == 'expand':
    assert '--target-flops' in out and '--target-cost' in out and '--hardware' in out
  else:
    assert '--transfer-weights' in out
