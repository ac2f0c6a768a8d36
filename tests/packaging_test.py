"""Packaging: README's commands, the CI script, and the built wheel's requirements.

The wheel test (slow, ~1 min) builds a wheel from a copy of the sources and
installs it into a fresh virtual environment that already has TensorFlow (the
shared environment's packages, seen through a .pth file, with only the full
`tensorflow` distribution visible), with pip resolving against the configured
index: it must install morph_net alone, with no second TensorFlow distribution.
Run it with `python -m pytest -q -m slow tests/packaging_test.py`.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import morph_net

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TF_NAMES = re.compile(r'^(tensorflow|tensorflow[-_]cpu|tensorflow[-_]gpu|tf[-_]nightly.*)$',
                       re.IGNORECASE)


def _read(name):
  with open(os.path.join(_ROOT, name)) as f:
    return f.read()


def _readme_commands():
  """The shell commands of README's bash blocks before the first section."""
  top = _read('README.md').split('\n## ', 1)[0]
  return [block.split('```', 1)[0].strip() for block in top.split('```bash\n')[1:]]


def test_readme_top_commands_install_the_cpu_extra():
  install, test = _readme_commands()
  assert "pip install -q -e '.[cpu,demo]'" in install
  assert "pip install -q -e '.[cpu,test]'" in test


def test_ci_script_runs_readme_test_command_verbatim_in_a_venv_it_builds():
  _, test = _readme_commands()
  script = _read('.ci/run').splitlines()
  assert test in script
  assert script.index('rm -rf .venv') < script.index(test)


def test_setup_py_names_no_tensorflow_distribution_outside_extras():
  text = _read('setup.py')
  assert 'os.environ' not in text  # no build-time switch
  requires = text.split('install_requires=[', 1)[1].split(']', 1)[0]
  assert 'tensorflow' not in requires


def _build_wheel(tmp_path):
  source = tmp_path / 'src'
  source.mkdir()
  for name in ('setup.py', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(_ROOT, name), source / name)
  shutil.copytree(os.path.join(_ROOT, 'morph_net'), source / 'morph_net',
                  ignore=shutil.ignore_patterns('__pycache__'))
  dist = tmp_path / 'dist'
  result = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
       '-q', '-w', str(dist), str(source)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  (wheel,) = dist.glob('morph_net-*.whl')
  return wheel


def _wheel_metadata(wheel):
  with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith('.dist-info/METADATA'))
    return email.parser.Parser().parsestr(archive.read(name).decode())


def _seed_directory(tmp_path):
  """The shared site-packages as symlinks, with one TensorFlow distribution only."""
  site_packages = sysconfig.get_paths()['purelib']
  seed = tmp_path / 'seed'
  seed.mkdir()
  for name in os.listdir(site_packages):
    lowered = name.lower()
    if (lowered.startswith(('tensorflow_cpu-', 'morph_net', '__editable__'))
        or lowered.endswith('.pth')):
      continue
    os.symlink(os.path.join(site_packages, name), seed / name)
  assert (seed / 'tensorflow').exists()
  return seed


@pytest.mark.slow
def test_wheel_installs_next_to_tensorflow_without_a_second_distribution(tmp_path):
  wheel = _build_wheel(tmp_path)
  metadata = _wheel_metadata(wheel)
  assert metadata['Version'] == morph_net.__version__
  requires = metadata.get_all('Requires-Dist')
  unconditional = [r for r in requires if 'extra ==' not in r]
  assert not [r for r in unconditional if r.lower().startswith('tensorflow')], requires
  assert any(r.startswith('tensorflow-cpu') and 'extra == "cpu"' in r for r in requires)
  assert any(r.startswith('tensorflow[and-cuda]') and 'extra == "gpu"' in r for r in requires)

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                 timeout=120)
  python = str(venv / 'bin' / 'python')
  purelib = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(purelib, 'seed.pth'), 'w') as f:
    f.write(str(_seed_directory(tmp_path)) + '\n')
  # Without PYTHONPATH: a checkout on it (with its .egg-info) would look installed.
  clean_env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  report = tmp_path / 'report.json'
  # The shared pip, acting on the new environment; the configured index is used.
  result = subprocess.run(
      [sys.executable, '-m', 'pip', '--python', python, 'install', '-q',
       '--report', str(report), str(wheel)],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env=dict(clean_env, PIP_DISABLE_PIP_VERSION_CHECK='1'))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(report) as f:
    installed = [item['metadata']['name'] for item in json.load(f)['install']]
  assert installed == ['morph_net'] or installed == ['morph-net'], installed
  names = subprocess.run(
      [python, '-c', 'import importlib.metadata as m; '
       'print("\\n".join(sorted({d.metadata["Name"] for d in m.distributions()})))'],
      capture_output=True, text=True, check=True, env=clean_env, cwd=str(tmp_path)).stdout.split()
  assert [n for n in names if _TF_NAMES.match(n)] == ['tensorflow'], names
  # The installed copy (not this checkout) imports and runs.
  where = subprocess.run([python, '-c', 'import morph_net; print(morph_net.__file__)'],
                         capture_output=True, text=True, env=clean_env, cwd=str(tmp_path))
  assert where.stdout.startswith(purelib), (where.stdout, where.stderr[-2000:])
  version = subprocess.run(
      [str(venv / 'bin' / 'morphnet'), '--version'], capture_output=True, text=True,
      timeout=300, env=dict(clean_env, TF_CPP_MIN_LOG_LEVEL='3'), cwd=str(tmp_path))
  assert version.returncode == 0, version.stderr[-3000:]
  assert version.stdout.strip() == f'morphnet {morph_net.__version__}'
