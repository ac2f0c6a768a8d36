"""The top-level package: pinned public API, version, install check."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

import morph_net
from morph_net import _installation

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The public API. Changing it is an API change: update this list on purpose.
PUBLIC_API = [
    '__version__',
    'GammaActivationRegularizer',
    'GammaFlopsRegularizer',
    'GammaLatencyRegularizer',
    'GammaModelSizeRegularizer',
    'GroupLassoActivationRegularizer',
    'GroupLassoFlopsRegularizer',
    'GroupLassoLatencyRegularizer',
    'GroupLassoModelSizeRegularizer',
    'LayerStructureExporter',
    'LogisticSigmoidFlopsRegularizer',
    'LogisticSigmoidGating',
    'LogisticSigmoidLatencyRegularizer',
    'LogisticSigmoidModelSizeRegularizer',
    'MorphNetCallback',
    'MorphNetModel',
    'StructureExporter',
    'UnsupportedOpError',
    'expand_structure',
    'load_structure',
    'recommend_strength',
    'run_morphnet',
    'save_structure',
    'shrink_model',
]


def test_public_api_is_pinned():
  assert morph_net.__all__ == PUBLIC_API


@pytest.mark.parametrize('name', PUBLIC_API[1:])
def test_public_names_are_the_module_objects(name):
  value = getattr(morph_net, name)
  module = importlib.import_module(value.__module__)
  assert getattr(module, name) is value
  assert name in dir(morph_net)


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
    _ = morph_net.Nope


def test_version_is_the_one_setup_py_builds():
  assert re.fullmatch(r'\d+\.\d+\.\d+', morph_net.__version__)
  with open(os.path.join(_ROOT, 'setup.py')) as f:
    assert '_version()' in f.read()  # setup.py reads __version__ from __init__.py


def test_import_loads_neither_tensorflow_nor_keras():
  code = ('import sys, morph_net, morph_net.framework; '
          'print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=_ROOT, env=dict(os.environ, PYTHONPATH=_ROOT), timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'


def test_installed_versions_pass_the_check():
  _installation.check_tensorflow_install()  # TF 2.21 / Keras 3.15 here.


@pytest.mark.parametrize('tensorflow, keras, message', [
    ('2.15.1', '2.15.0', r'needs TensorFlow >= 2\.16 .*Received: TensorFlow 2\.15\.1'),
    ('1.15.5', None, r'Received: TensorFlow 1\.15\.5'),
    ('2.21.0', None, r'needs Keras 3.*Received: TensorFlow 2\.21\.0, no keras'),
    ('2.21.0', '2.15.0', r'needs Keras 3\. Received: keras 2\.15\.0'),
])
def test_incompatible_versions_name_the_install_command(tensorflow, keras, message):
  with pytest.raises(ImportError, match=message) as info:
    _installation.check_versions(tensorflow, keras)
  assert "pip install 'morph_net[cpu]'" in str(info.value)
  assert "pip install 'morph_net[gpu]'" in str(info.value)


def test_compatible_versions_pass():
  _installation.check_versions('2.16.0rc0', '3.0.1')
  _installation.check_versions('3.1.0', '3.15.1')


def test_missing_tensorflow_names_the_install_command(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'tensorflow' else real_find_spec(name, *a))
  with pytest.raises(ImportError, match=r"TensorFlow >= 2\.16, which is not installed\. "
                     r"Install one TensorFlow distribution with morph_net's extras: "
                     r"pip install 'morph_net\[cpu\]'"):
    _installation.check_tensorflow_install()


def test_missing_keras_is_reported(monkeypatch):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'keras' else real_find_spec(name, *a))
  with pytest.raises(ImportError, match='no keras'):
    _installation.check_tensorflow_install()


def test_import_fails_with_the_message_when_tensorflow_is_absent(tmp_path):
  # `python -S`: no site-packages, hence no TensorFlow (the check needs only the stdlib).
  result = subprocess.run([sys.executable, '-S', '-c', 'import morph_net'],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=_ROOT), timeout=60)
  assert result.returncode != 0
  assert ('ImportError: morph_net needs TensorFlow >= 2.16, which is not installed'
          in result.stderr)
  assert "pip install 'morph_net[cpu]'" in result.stderr
