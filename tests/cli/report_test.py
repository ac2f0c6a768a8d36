"""`morphnet report` on the embedded CNN and on a saved model."""

import json

import keras
import pytest

from morph_net.cli import main as cli_main
from morph_net.cli import report


@pytest.fixture(scope='module')
def small_report():
  from morph_net.examples import models
  return report.cost_report(models.small_cnn(), hardware='K80')


def test_embedded_cnn_flops_match_a_hand_count(small_report):
  # 32x32 input, width 32, 'same' padding; FLOPs = 2*H_out*W_out*kh*kw*C_in*C_out.
  expected = {
      'stem_conv': 2 * 32 * 32 * 3 * 3 * 3 * 32,
      'res_a_conv': 2 * 32 * 32 * 3 * 3 * 32 * 32,
      'res_b_conv': 2 * 32 * 32 * 3 * 3 * 32 * 32,
      'down_conv': 2 * 16 * 16 * 3 * 3 * 32 * 64,   # stride 2
      'mix_1x1_conv': 2 * 16 * 16 * 1 * 1 * 64 * 32,
      'mix_3x3_conv': 2 * 16 * 16 * 3 * 3 * 64 * 32,
      'head_conv': 2 * 8 * 8 * 3 * 3 * 64 * 64,     # concat 32+32 -> 64, stride 2
      'logits': 2 * 64 * 10,                         # dense: 2*C_in*C_out
  }
  got = {row.layer: row.flops for row in small_report.rows}
  assert got == pytest.approx(expected)
  assert small_report.total_flops == pytest.approx(sum(expected.values()))
  # Weights: kh*kw*C_in*C_out (dense: C_in*C_out).
  weights = {row.layer: row.weights for row in small_report.rows}
  assert weights['down_conv'] == 3 * 3 * 32 * 64
  assert weights['logits'] == 64 * 10
  assert all(row.alive == row.channels for row in small_report.rows)
  assert small_report.total_latency > 0


def test_cli_prints_table_and_json(capsys, tmp_path):
  model = keras.Sequential([keras.Input((8, 8, 3)),
                            keras.layers.Conv2D(4, 3, name='c'),
                            keras.layers.BatchNormalization(name='bn')])
  path = str(tmp_path / 'm.keras')
  model.save(path)
  assert cli_main.main(['report', '--model', path, '--json']) == 0
  data = json.loads(capsys.readouterr().out)
  # 6x6 VALID output: 2*6*6*3*3*3*4 = 7776.
  assert data['total_flops'] == 7776
  assert [r['layer'] for r in data['rows']] == ['c']
  assert cli_main.main(['report', '--model', path]) == 0
  assert 'total' in capsys.readouterr().out


def test_cli_rejects_bad_arguments(capsys, tmp_path):
  assert cli_main.main(['report', '--model', str(tmp_path / 'missing.keras')]) == 2
  assert 'no such file' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli_main.main(['report', '--hardware', 'Z80'])
  with pytest.raises(SystemExit):
    cli_main.main(['report', '--input-shape', 'a,b'])
  bad = tmp_path / 'bad.keras'
  bad.write_text('not a model')
  assert cli_main.main(['report', '--model', str(bad)]) == 2
  assert 'cannot load' in capsys.readouterr().err


def test_cli_reports_models_without_batch_norm_clearly(capsys, tmp_path):
  model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
  path = str(tmp_path / 'nobn.keras')
  model.save(path)
  assert cli_main.main(['report', '--model', path]) == 2
  assert 'GroupLasso' in capsys.readouterr().err
  assert cli_main.main(['report', '--model', path, '--regularizer', 'group_lasso']) == 0
