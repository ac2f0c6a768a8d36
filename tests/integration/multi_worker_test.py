"""`morphnet learn` on a 2-worker MultiWorkerMirroredStrategy cluster on loopback.

Two worker processes (TF_CONFIG on 127.0.0.1, free ports) and a single-process
reference train the same saved small CNN on the same data for 2 epochs of 4
global batches. Checked: the cost, alive counts and exported files of the
cluster equal the single-process run's; both workers report the same cost and
alive counts; only the chief (worker 0) writes its --export-dir; the other
worker's temporary files are gone. Slow (three TensorFlow processes, ~2 min on
2 shared cores): `python -m pytest -q -m slow tests/integration/multi_worker_test.py`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.integration import small_cnn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 480

pytestmark = pytest.mark.slow


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _files(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


def _read(path):
  with open(path) as f:
    return f.read()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  work = tmp_path_factory.mktemp('multi_worker')
  model = small_cnn.build_model()
  small_cnn.set_random_gammas(model)  # some channels dead from the start
  model.save(str(work / 'model.keras'))
  x, y = small_cnn.make_data(64)
  np.savez(str(work / 'data.npz'), x=x, y=y)
  args = [sys.executable, '-m', 'morph_net', 'learn', '--model', str(work / 'model.keras'),
          '--data', str(work / 'data.npz'), '--threshold', '0.3', '--epochs', '2',
          '--batch-size', '16', '--strength-multiplier', '30', '--quiet']
  ports = _free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  base_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO_ROOT)
  base_env.pop('TF_CONFIG', None)
  processes = {}
  for name, task in (('single', None), ('chief', 0), ('worker1', 1)):
    env = dict(base_env)
    os.makedirs(work / f'tmp_{name}')
    env['TMPDIR'] = str(work / f'tmp_{name}')
    if task is not None:
      env['TF_CONFIG'] = json.dumps(
          {'cluster': cluster, 'task': {'type': 'worker', 'index': task}})
    processes[name] = subprocess.Popen(
        args + ['--export-dir', str(work / name)], cwd=str(work), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  outputs = {}
  try:
    for name, process in processes.items():
      stdout, stderr = process.communicate(timeout=TIMEOUT_S)
      assert process.returncode == 0, f'{name} failed:\n{stderr[-3000:]}'
      outputs[name] = stdout
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  return work, outputs


def _report(stdout):
  """The structure table and the cost line (before the 'wrote ...' lines)."""
  lines = stdout.strip().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('layer'))
  return [line for line in lines[start:] if not line.startswith('wrote ')]


def test_cluster_exports_the_same_files_as_one_process(runs):
  work, _ = runs
  single, chief = work / 'single', work / 'chief'
  assert _files(chief) == _files(single)
  assert 'learned_structure/alive_8' in _files(chief)  # 2 epochs of 64 / 16 steps
  for name in _files(single):
    if name.startswith('learned_') and name != 'learned_structure':
      assert _read(chief / name) == _read(single / name), name


def test_cluster_cost_and_alive_counts_equal_one_process(runs):
  work, _ = runs
  single = json.loads(_read(work / 'single' / 'learn_summary.json'))
  chief = json.loads(_read(work / 'chief' / 'learn_summary.json'))
  # Training removed channels, so the comparison covers learned values.
  assert single['final_cost'] < single['initial_cost']
  for key in ('initial_cost', 'final_cost', 'learned_structure', 'exported_steps',
              'regularization_strength'):
    assert chief[key] == single[key], key
  # The term is scaled per replica and summed: the same loss (float noise only).
  assert chief['last_logs'] == pytest.approx(single['last_logs'], rel=1e-4)


def test_every_worker_sees_the_same_cost_and_alive_counts(runs):
  _, outputs = runs
  assert _report(outputs['worker1']) == _report(outputs['chief']) == _report(outputs['single'])


def test_only_the_chief_writes(runs):
  work, outputs = runs
  assert not os.path.exists(work / 'worker1')
  assert os.listdir(work / 'tmp_worker1') == []  # its temporary files are removed
  # Every worker names the chief's files.
  assert f'wrote summary: {work / "worker1" / "learn_summary.json"}' in outputs['worker1']
