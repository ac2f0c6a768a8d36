"""`morphnet demo --quick`: files, plots, the printed table, consistent numbers."""

import contextlib
import io
import json
import os

import pytest

from morph_net.cli import main as cli_main

pytest.importorskip('sklearn')
pytest.importorskip('matplotlib')

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
LAYERS = ['stem_conv', 'res_a_conv', 'res_b_conv', 'down_conv', 'mix_1x1_conv',
          'mix_3x3_conv', 'head_conv']
# Quick demo: width 8 on 8x8x1 digits. FLOPs = 2*H*W*kh*kw*C_in*C_out per conv:
# stem 2*64*9*1*8 = 9216, res_a and res_b 2*64*9*8*8 = 73728 each, down
# 2*16*9*8*16 = 36864, mix_1x1 2*16*16*8 = 4096, mix_3x3 2*16*9*16*8 = 36864,
# head 2*4*9*16*16 = 18432, logits 2*16*10 = 320.
SEED_FLOPS = 9216 + 2 * 73728 + 36864 + 4096 + 36864 + 18432 + 320  # 253248


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp('demo') / 'out'
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    status = cli_main.main(['demo', '--quick', '--output-dir', str(output_dir)])
  return status, out.getvalue(), output_dir


def test_quick_demo_writes_its_files(quick_run):
  status, _, output_dir = quick_run
  assert status == 0
  from matplotlib import image
  for name in ('widths.png', 'accuracy_vs_flops.png'):
    with open(output_dir / name, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE
    height, width, _ = image.imread(str(output_dir / name)).shape  # decodes
    assert height >= 300 and width >= 500
  with open(output_dir / 'learned_structure.json') as f:
    learned = json.load(f)
  assert sorted(learned) == sorted(LAYERS)
  exports = os.listdir(output_dir / 'learned_structure')
  # 256 images / batch 32 = 8 steps per epoch, 2 epochs: exports after each.
  assert sorted(exports) == ['alive_16', 'alive_8']


def test_quick_demo_numbers_are_consistent(quick_run):
  _, _, output_dir = quick_run
  with open(output_dir / 'demo_results.json') as f:
    result = json.load(f)
  assert result['seed_flops'] == SEED_FLOPS
  assert result['seed_widths'] == {name: 16 if name in ('down_conv', 'head_conv') else 8
                                   for name in LAYERS}
  for name in LAYERS:
    assert 0 <= result['learned_widths'][name] <= result['seed_widths'][name]
  assert result['learned_flops'] <= result['seed_flops']
  # Expanded back to the seed: never above it, within a few percent of it.
  assert 0.95 * SEED_FLOPS <= result['expanded_flops'] <= SEED_FLOPS
  networks = result['networks']
  assert [n['family'] for n in networks] == ['uniform', 'MorphNet'] * 2
  for uniform, morphnet in zip(networks[::2], networks[1::2]):
    assert uniform['budget'] == morphnet['budget']
    for network in (uniform, morphnet):
      assert network['flops'] <= network['budget']
      assert 0.0 <= network['accuracy'] <= 1.0
    assert abs(uniform['flops'] - morphnet['flops']) <= 0.02 * max(
        uniform['flops'], morphnet['flops'])
  # The last pair's budget is the seed itself (omega = 1).
  assert networks[-1]['budget'] == SEED_FLOPS


def test_quick_demo_prints_the_table(quick_run):
  _, out, output_dir = quick_run
  with open(output_dir / 'demo_results.json') as f:
    result = json.load(f)
  for name in LAYERS:
    row = f'{name:<16} {result["seed_widths"][name]:>12} {result["learned_widths"][name]:>12}'
    assert row in out
  assert f'{SEED_FLOPS:,}' in out  # 253,248
  assert 'Test accuracy at matched FLOPs' in out
  assert 'widths.png' in out and 'accuracy_vs_flops.png' in out


def test_help(capsys):
  with pytest.raises(SystemExit) as e:
    cli_main.main(['demo', '--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert '--quick' in out and '--output-dir' in out


def test_output_dir_that_is_a_file_is_rejected(tmp_path, capsys):
  path = tmp_path / 'file'
  path.write_text('')
  assert cli_main.main(['demo', '--quick', '--output-dir', str(path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('morphnet demo: error:') and 'is a file' in err
  assert path.read_text() == ''


def test_missing_dependencies_are_named_with_the_install_command(tmp_path, capsys,
                                                                 monkeypatch):
  import importlib
  real = importlib.import_module

  def fake(name, *args, **kwargs):
    if name == 'sklearn':
      raise ImportError('No module named sklearn')
    return real(name, *args, **kwargs)

  monkeypatch.setattr(importlib, 'import_module', fake)
  assert cli_main.main(['demo', '--quick', '--output-dir', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert 'scikit-learn' in err and "pip install 'morph_net[demo]'" in err
  assert not os.path.exists(tmp_path / 'out')
