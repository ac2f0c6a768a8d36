"""Tests for keras_integration/distribution.py (in one process; the 2-worker run
is tests/integration/multi_worker_test.py)."""

from __future__ import annotations

import os
import types

import pytest
import tensorflow as tf

from morph_net.keras_integration import callback
from morph_net.keras_integration import distribution
from morph_net.network_regularizers import flop_regularizer
from tests.integration import small_cnn


def _fake_worker(task_id: int, chief: bool):
  """A stand-in for a MultiWorkerMirroredStrategy as seen by one worker."""
  return types.SimpleNamespace(
      extended=types.SimpleNamespace(should_checkpoint=chief),
      cluster_resolver=types.SimpleNamespace(task_type='worker', task_id=task_id))


def test_one_process_is_the_chief():
  assert distribution.is_chief()
  assert not distribution.in_multi_worker_mode()
  with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
    assert distribution.is_chief()


def test_chief_writes_into_the_export_dir(tmp_path):
  with distribution.writable_directory(str(tmp_path), _fake_worker(0, True)) as directory:
    assert directory == str(tmp_path)


def test_other_workers_write_into_a_removed_temporary_directory(tmp_path):
  with distribution.writable_directory(str(tmp_path), _fake_worker(1, False)) as directory:
    assert directory != str(tmp_path)
    assert 'worker1' in os.path.basename(directory)
    path = os.path.join(directory, 'learned_structure', 'alive_3')
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as f:
      f.write('{}')
    assert distribution.chief_path(path, directory, str(tmp_path)) == str(
        tmp_path / 'learned_structure' / 'alive_3')
  assert not os.path.exists(directory)
  assert os.listdir(tmp_path) == []


def test_callback_on_a_non_chief_worker_writes_nothing_into_export_dir(tmp_path):
  model = small_cnn.build_model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.3)
  cb = callback.MorphNetCallback(reg, export_dir=str(tmp_path))
  # Keras 3 records the strategy a model was built under as distribute_strategy.
  cb.set_model(types.SimpleNamespace(distribute_strategy=_fake_worker(1, False)))
  path = cb.export(5)
  assert path == os.path.join(str(tmp_path), 'learned_structure', 'alive_5')
  assert cb.exported_paths == [path]
  assert os.listdir(tmp_path) == []
  cb.set_model(types.SimpleNamespace(distribute_strategy=_fake_worker(0, True)))
  assert cb.export(6) == os.path.join(str(tmp_path), 'learned_structure', 'alive_6')
  assert os.listdir(tmp_path / 'learned_structure') == ['alive_6']


@pytest.mark.parametrize('cls', distribution._parameter_server_classes())
def test_parameter_server_strategy_is_rejected(cls):
  # An instance without a cluster: the check looks at the type only.
  strategy = object.__new__(cls)
  with pytest.raises(ValueError, match=r'does not support ParameterServerStrategy.*'
                     r'Received: strategy=ParameterServerStrategy.*MultiWorkerMirroredStrategy'):
    distribution.check_supported_strategy(strategy)


def test_from_keras_model_rejects_a_model_built_under_parameter_server_strategy():
  model = small_cnn.build_model()
  model._distribute_strategy = object.__new__(tf.distribute.experimental.ParameterServerStrategy)
  with pytest.raises(ValueError, match='does not support ParameterServerStrategy'):
    flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.3)


def test_mirrored_and_default_strategies_are_accepted():
  distribution.check_supported_strategy()
  distribution.check_supported_strategy(tf.distribute.MirroredStrategy(['/cpu:0']))


def test_strategy_from_environment(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  assert distribution.strategy_from_environment() is tf.distribute.get_strategy()
  # One task: nothing to distribute over.
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                     '"task": {"type": "worker", "index": 0}}')
  assert distribution.strategy_from_environment() is tf.distribute.get_strategy()
  monkeypatch.setenv('TF_CONFIG', '{"task": {}}')
  with pytest.raises(ValueError, match=r'TF_CONFIG must be JSON like .*Received: '
                     r'TF_CONFIG=.*Unset it'):
    distribution.strategy_from_environment()
  monkeypatch.setenv('TF_CONFIG', 'not json')
  with pytest.raises(ValueError, match='TF_CONFIG must be JSON'):
    distribution.strategy_from_environment()


def test_learn_reports_a_bad_tf_config_on_one_line(monkeypatch, tmp_path, capsys):
  from morph_net.cli import main  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('TF_CONFIG', '{"cluster": ')
  code = main.main(['learn', '--model', str(tmp_path / 'm.keras'), '--data',
                    str(tmp_path / 'd.npz'), '--export-dir', str(tmp_path / 'run')])
  assert code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('morphnet learn: error: TF_CONFIG must be JSON') and '\n' not in err
  assert not os.path.exists(tmp_path / 'run')


def test_fit_mixin_changes_nothing_outside_multi_worker_runs():
  assert not distribution.in_multi_worker_mode(tf.distribute.MirroredStrategy(['/cpu:0']))
  # Inside multi-worker runs, scalar logs become 1-element vectors (Keras then
  # averages them over the replicas along axis 0); other values are kept.
  logs = distribution._scalars_as_vectors({'loss': tf.constant(2.0),
                                           'v': tf.constant([1.0, 3.0]), 'n': 4})
  assert logs['loss'].shape == (1,) and float(logs['loss'][0]) == 2.0
  assert logs['v'].shape == (2,) and logs['n'] == 4
