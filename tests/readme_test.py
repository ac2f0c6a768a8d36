"""README examples run as written."""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_block(after_heading: str) -> str:
  with open(os.path.join(_ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split(after_heading, 1)[1]
  return section.split('```python', 1)[1].split('```', 1)[0]


def test_graph_mode_example_runs_and_prints_the_flop_cost(tmp_path):
  code = _python_block('## Graph mode, as with the original').replace(
      "'/tmp/train_dir'", repr(str(tmp_path)))
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  # One 3x3 conv, 32x32 SAME output, 3 -> 16 channels, all gammas 1 (alive):
  # 2 * 32 * 32 * 3 * 3 * 3 * 16 = 884736.
  assert result.stdout.strip().splitlines()[-1] == '884736.0'
  with open(tmp_path / 'learned_structure' / 'alive_2') as f:
    assert f.read() == '{\n  "Conv2D": 16\n}'


def test_apply_structure_example_runs():
  code = _python_block('## Apply the learned structure: shrink, expand, repeat')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  # 8 of mix_3x3's 32 gammas stay above the threshold (not grouped with others).
  assert result.stdout.strip().splitlines()[-1].startswith('8 ')


def test_custom_op_handler_example_runs_and_prints_the_flop_cost():
  code = _python_block('## Extending: your own op types')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  # conv1: 2 * 32*32 * 3*3 * 3 * 8 alive = 442368; the ReverseV2 leaf ends the
  # chain, so conv2 keeps its 16 inputs: 2 * 32*32 * 3*3 * 16 * 8 = 2359296.
  assert result.stdout.strip().splitlines()[-1] == str(float(442368 + 2359296))
  # unknown_op_policy='error' and no other unknown op: nothing was warned about.
  assert 'no op handler' not in result.stderr


def _run_keras_example(tmp_path, code):
  # Seeded, so that the run is reproducible; the code is the README's.
  code = 'import keras\nkeras.utils.set_random_seed(0)\n' + code
  code += '\nprint("HISTORY", __import__("json").dumps(trainer.history.history))\n'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                                   PYTHONPATH=_ROOT))
  assert result.returncode == 0, result.stderr[-2000:]
  line = [x for x in result.stdout.splitlines() if x.startswith('HISTORY ')][-1]
  return json.loads(line[len('HISTORY '):])


def test_keras_example_prunes_and_lands_on_its_target(tmp_path):
  history = _run_keras_example(tmp_path, _python_block('## Keras 3 in five lines'))
  # Training itself removed channels within the stated 5 epochs.
  assert history['alive_fraction'][-1] < 1.0
  directory = tmp_path / 'train_dir' / 'learned_structure'
  # 1347 examples / batch 32 = 43 steps per epoch: the final export is step 215.
  record = json.loads((directory / 'alive_215.budget.json').read_text())
  # small_cnn(width 16) on 8x8x1 FLOPs, all channels: stem 2*64*9*1*16 = 18432,
  # res_a and res_b 2*64*9*16*16 = 294912 each, down 2*16*9*16*32 = 147456,
  # mix_1x1 2*16*32*16 = 16384, mix_3x3 2*16*9*32*16 = 147456,
  # head 2*4*9*32*32 = 73728, logits 2*32*10 = 640: 993920; target half of it.
  assert record['target_cost'] == 993920 / 2
  assert record['trained_cost'] < 993920
  assert abs(record['exported_cost'] / record['target_cost'] - 1) <= 0.05
  with open(directory / 'alive_215') as f:
    assert json.load(f) == record['structure']


@pytest.mark.slow  # ~40 s on 2 shared cores
def test_keras_example_with_the_recommended_fixed_strength_prunes(tmp_path):
  code = _python_block('## Keras 3 in five lines')
  assert 'target_fraction=0.5' in code
  history = _run_keras_example(tmp_path, code.replace(', target_fraction=0.5', ''))
  assert 'strength' in history and len(set(history['strength'])) == 1
  assert history['alive_fraction'][-1] < 1.0
