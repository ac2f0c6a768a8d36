"""README examples run as written."""

import os
import subprocess
import sys

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
