"""MorphNet under `tf.distribute`: who writes exports, which strategies are supported.

Under `tf.distribute.MultiWorkerMirroredStrategy` every worker runs the same
program: the variables (and hence cost, regularization term and alive counts)
are identical on all workers, but only the chief must write files, or every
worker would write `learned_structure/alive_<step>` (and the CLI's outputs) into
the same directory. As Keras' `ModelCheckpoint` did in `tf.keras`, the other
workers write the same files into a temporary directory of their own, deleted
right after: every worker runs the same code path (nothing a worker skips can
hang a collective op) and nothing a non-chief writes reaches `export_dir`.

`tf.distribute.experimental.ParameterServerStrategy` is rejected: Keras 3 trains
with it neither in `fit` nor with a `ClusterCoordinator`, so a MorphNet model
would fail later with an unrelated error.

Example (each worker runs this with its own `TF_CONFIG`):

  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  with strategy.scope():
    model = build_model()
    reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
    trainer = MorphNetModel(model, reg, regularization_strength=strength)
    trainer.compile(...)
  trainer.fit(x, y, callbacks=[MorphNetCallback(reg, export_dir=train_dir)])
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

import tensorflow as tf


def _parameter_server_classes():
  classes = [tf.distribute.experimental.ParameterServerStrategy]
  v1 = getattr(tf.compat.v1.distribute.experimental, 'ParameterServerStrategy', None)
  if v1 is not None:
    classes.append(v1)
  return tuple(classes)


def current_strategy(model=None) -> tf.distribute.Strategy:
  """The strategy `model` was built under (Keras 3 records it), else the current one."""
  strategy = getattr(model, 'distribute_strategy', None)
  return strategy if strategy is not None else tf.distribute.get_strategy()


def check_supported_strategy(strategy: Optional[tf.distribute.Strategy] = None) -> None:
  """Raises ValueError for a strategy MorphNet (with Keras 3) cannot train under.

  Args:
    strategy: defaults to the current strategy (`tf.distribute.get_strategy()`).

  Raises:
    ValueError: `strategy` is a ParameterServerStrategy (V1 or V2).
  """
  strategy = strategy if strategy is not None else tf.distribute.get_strategy()
  name = type(strategy).__name__
  if isinstance(strategy, _parameter_server_classes()):
    raise ValueError(
        f'MorphNet does not support {name}: Keras 3 cannot train a model under a '
        'parameter-server strategy (it has no ClusterCoordinator support), so the '
        f'regularizer could not be trained with it. Received: strategy={name}. Use '
        'tf.distribute.MultiWorkerMirroredStrategy (several machines), '
        'MirroredStrategy (one machine) or TPUStrategy instead; see README, '
        '"Distributed training".')


def in_multi_worker_mode(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """True under a MultiWorkerMirroredStrategy spanning 2+ workers."""
  strategy = strategy if strategy is not None else tf.distribute.get_strategy()
  extended = strategy.extended
  mode = getattr(extended, '_in_multi_worker_mode', None)
  return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
          and callable(mode) and bool(mode()))


def _scalars_as_vectors(logs):
  return tf.nest.map_structure(
      lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs)


class MultiWorkerFitMixin:
  """Lets `fit` / `evaluate` of a Keras 3 (3.15) model run across workers.

  Keras 3's TensorFlow trainer fails under a multi-worker
  MultiWorkerMirroredStrategy in two places: before the first step it reduces
  the (x, y) batch tuple with `strategy.reduce`, which takes one distributed
  value, not a tuple; and after each step it reduces every scalar log with
  `strategy.reduce('MEAN', value, axis=0)`, which needs a batch axis. This
  mixin builds from the local replica's batch and returns logs as 1-element
  vectors (the reduction then averages them into scalars). Outside multi-worker
  runs it changes nothing. `MorphNetModel` inherits it.
  """

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = getattr(self, '_distribute_strategy', None)
    if iterator is not None and strategy is not None and in_multi_worker_mode(strategy):
      for _, _, batches in iterator:  # as Keras does: one batch, to build from.
        batch = next(batches)
        data_batch = tf.nest.map_structure(
            lambda v: (strategy.experimental_local_results(v)[0]
                       if isinstance(v, tf.distribute.DistributedValues) else v), batch)
        break
      iterator = None
    return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  def train_step(self, data):
    logs = super().train_step(data)
    return _scalars_as_vectors(logs) if in_multi_worker_mode() else logs

  def test_step(self, data):
    logs = super().test_step(data)
    return _scalars_as_vectors(logs) if in_multi_worker_mode() else logs


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """True when this process should write files (always, outside multi-worker runs).

  Args:
    strategy: defaults to the current strategy. The chief is the `chief` task,
      or worker 0 when the cluster has no `chief` (TensorFlow's rule).
  """
  strategy = strategy if strategy is not None else tf.distribute.get_strategy()
  return bool(getattr(strategy.extended, 'should_checkpoint', True))


def _task_label(strategy: tf.distribute.Strategy) -> str:
  resolver = getattr(strategy, 'cluster_resolver', None)
  task_type = getattr(resolver, 'task_type', None) or 'worker'
  task_id = getattr(resolver, 'task_id', None)
  return f'{task_type}{task_id if task_id is not None else ""}'


@contextlib.contextmanager
def writable_directory(export_dir: str,
                       strategy: Optional[tf.distribute.Strategy] = None) -> Iterator[str]:
  """Yields the directory this process writes `export_dir`'s files into.

  On the chief (and outside multi-worker runs) that is `export_dir` itself. On
  other workers it is a fresh temporary directory, removed when the block
  ends: they run the same writing code, but their files never reach
  `export_dir`.

  Args:
    export_dir: the directory the chief writes into.
    strategy: defaults to the current strategy.
  """
  strategy = strategy if strategy is not None else tf.distribute.get_strategy()
  if is_chief(strategy):
    yield export_dir
    return
  directory = tempfile.mkdtemp(prefix=f'morph_net_{_task_label(strategy)}_')
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def chief_path(path: str, written_in: str, export_dir: str) -> str:
  """`path` (written under `written_in`) as it is named under `export_dir`.

  Every worker then reports the chief's file names, whichever directory it
  wrote into.
  """
  if written_in == export_dir:
    return path
  return os.path.join(export_dir, os.path.relpath(path, written_in))


def strategy_from_environment() -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy when `TF_CONFIG` names a cluster of 2+ tasks.

  Otherwise the default strategy (one process). Used by `morphnet learn`.

  Raises:
    ValueError: `TF_CONFIG` is not valid JSON or has no `cluster`.
  """
  text = os.environ.get('TF_CONFIG', '').strip()
  if not text:
    return tf.distribute.get_strategy()
  try:
    config = json.loads(text)
    cluster = config['cluster']
    tasks = sum(len(addresses) for addresses in cluster.values())
  except (ValueError, KeyError, TypeError, AttributeError):
    raise ValueError(
        'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": 0}}. Received: '
        f'TF_CONFIG={text[:200]!r}. Unset it to train in one process.') from None
  if tasks < 2:
    return tf.distribute.get_strategy()
  return tf.distribute.MultiWorkerMirroredStrategy()
