"""`morphnet expand --input-shape` on a model of unknown input size."""

import json

import keras

from morph_net.cli import main as cli_main

L = keras.layers


def _any_size_model():
  image = keras.Input((None, None, 1), name='image')
  x = L.Conv2D(4, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.ReLU(name='c1_relu')(L.BatchNormalization(name='c1_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(3, name='logits')(x), name='any_size')


def test_expand_with_an_input_shape(tmp_path, capsys):
  model_path = str(tmp_path / 'any.keras')
  _any_size_model().save(model_path)
  structure = tmp_path / 'counts.json'
  structure.write_text(json.dumps({'c1': 2}))
  argv = ['expand', '--model', model_path, '--structure', str(structure),
          '--output', str(tmp_path / 'big.keras')]
  assert cli_main.main(argv + ['--input-shape', '1,6,6,1']) == 0
  # At 6x6: 654 FLOPs per channel (conv 2*36*9, dense 2*3): seed 2616, and
  # 2 channels expand back to 4 (2616 <= 2616).
  costs = json.loads((tmp_path / 'big_costs.json').read_text())
  assert costs['seed_cost'] == 2616 and costs['widths'] == {'c1': 4}
  capsys.readouterr()
  assert cli_main.main(argv + ['--input-shape', '1,6,6,3']) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert 'takes inputs of shape (None, None, 1)' in err
