"""A Keras callback that logs MorphNet's cost and exports the learned structure.

Logged values (per batch and per epoch, so they show in the progress bar, in
`History` and in a TensorBoard callback listed after this one):
  * `<cost_name>` (e.g. `FLOPs`, `ModelSize`, `V100 Latency`): `get_cost()`;
  * `regularization_loss`: strength * `get_regularization_term()` (the raw term
    when no strength is known);
  * `alive_fraction`: alive / total channels over the exported layers;
  * `strength`: the current regularization strength (when known).

Target mode (a `MorphNetModel` with `target_cost` / `target_fraction`, or the
callback's own target arguments): after every logged step the strength is
updated by the rule of `budget` (multiplicative dual ascent on
cost <= target), and at the end of `fit` the structure within the target is
exported (`budget.complete_to_target`) as `alive_<step>` with a record
`alive_<step>.budget.json` beside it, and logged.

When no channel has died after `warn_after_epochs` epochs (default 3) a
`NoPruningWarning` is issued once, with the smallest |gamma| or norm, the
threshold, the strength, the learning rate, the steps so far and what to
change.

Exports `<export_dir>/learned_structure/alive_<step>` (JSON, layer names by
default) every `export_every_n_steps` steps and/or at each epoch end. The step
is the optimizer's iteration count, so a run resumed from a checkpoint continues
its numbering; when the optimizer starts from 0 but earlier files exist in
`export_dir`, numbering continues after the last of them.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional
import warnings

from absl import logging

import keras
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import budget
from morph_net.keras_integration import distribution
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import training
from morph_net.tools import structure_exporter

_ALIVE_FILE = re.compile(r'^alive_(\d+)$')
BUDGET_SUFFIX = '.budget.json'
DEFAULT_WARN_AFTER_EPOCHS = 3


def last_exported_step(export_dir: str) -> Optional[int]:
  """Largest N of `<export_dir>/learned_structure/alive_N`, or None."""
  directory = os.path.join(export_dir, 'learned_structure')
  if not os.path.isdir(directory):
    return None
  steps = [int(m.group(1)) for m in map(_ALIVE_FILE.match, os.listdir(directory)) if m]
  return max(steps) if steps else None


class MorphNetCallback(keras.callbacks.Callback):
  """Logs cost / strength / alive fraction, adapts the strength, exports.

  Args:
    network_regularizer: the regularizer being trained with.
    regularization_strength: multiplies the logged term. Defaults to the
      strength of a `MorphNetModel` being fitted. Giving it also states that
      the loss holds the term (added by your own code), which allows fitting
      a model other than a `MorphNetModel`.
    export_dir: where `learned_structure/alive_<step>` files go; None: no export.
    export_every_n_steps: export every N training steps (None: not by steps).
    export_each_epoch: export at the end of every epoch. Defaults to True.
    key_by: `'layer'` (default) or `'op'` names in the exported files.
    log_every_n_steps: compute the logged values (and, in target mode, adapt
      the strength) every N batches; they are computed from the variables,
      outside the train step. Defaults to 1.
    target_cost / target_fraction: put the `MorphNetModel` being fitted in
      target mode (if it is not already), see `budget`.
    warn_after_epochs: warn once when no channel has died after this many
      epochs (None: never). Defaults to 3.
    monitor_only: log the cost of a model trained without the term (no
      MorphNet term in its loss), knowingly. Defaults to False.

  Raises (at the start of `fit`):
    ValueError: the model's loss has no MorphNet term (not a `MorphNetModel`,
      no `regularization_strength` given, not `monitor_only`), or the
      `MorphNetModel` trains with another regularizer.
  """

  def __init__(self, network_regularizer, *,
               regularization_strength: Optional[float] = None,
               export_dir: Optional[str] = None,
               export_every_n_steps: Optional[int] = None,
               export_each_epoch: bool = True,
               key_by: str = 'layer',
               log_every_n_steps: int = 1,
               target_cost: Optional[float] = None,
               target_fraction: Optional[float] = None,
               warn_after_epochs: Optional[int] = DEFAULT_WARN_AFTER_EPOCHS,
               monitor_only: bool = False):
    super().__init__()
    for name, value in (('export_every_n_steps', export_every_n_steps),
                        ('log_every_n_steps', log_every_n_steps),
                        ('warn_after_epochs', warn_after_epochs)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 1):
        raise ValueError(f'{name} must be a positive integer or None. Received: '
                         f'{name}={value!r}.')
    if not isinstance(network_regularizer, generic_regularizers.NetworkRegularizer):
      raise TypeError(
          'network_regularizer must be a morph_net NetworkRegularizer. Received: '
          f'{type(network_regularizer).__name__}.')
    self._regularizer = network_regularizer
    self._strength = (None if regularization_strength is None
                      else training._check_strength(regularization_strength))
    self._target = budget.check_target(target_cost, target_fraction)
    self._export_dir = export_dir
    self._export_every = export_every_n_steps
    self._export_each_epoch = export_each_epoch
    self._log_every = log_every_n_steps
    self._warn_after = warn_after_epochs
    self._monitor_only = bool(monitor_only)
    self._key_by = key_by
    self._structure = layer_structure.LayerStructureExporter(
        network_regularizer, key_by=key_by)
    self._cost_name = network_regularizer.cost_name or 'cost'
    # autograph=False: the regularizer code is plain Python over a fixed op
    # list; converting it would only slow the trace down (seconds).
    self._stats_fn = tf.function(self._stats, autograph=False)
    self._step_offset = None
    self._last_logs = {}
    self._last_update_step = None
    self._controlled = (None, None)  # (target, strength) in target mode
    self._warned_no_pruning = False
    self.exported_paths = []
    self.completion: Optional[budget.Completion] = None

  def _stats(self):
    cost = tf.cast(self._regularizer.get_cost(), tf.float32)
    term = tf.cast(self._regularizer.get_regularization_term(), tf.float32)
    alive, total = tf.constant(0.0), tf.constant(0.0)
    smallest = tf.constant(float('inf'))
    for reg in self._structure._regularizers.values():
      vector = reg.alive_vector
      alive += tf.reduce_sum(tf.cast(vector, tf.float32))
      total += tf.cast(tf.size(vector), tf.float32)
      values = tf.abs(tf.cast(reg.regularization_vector, tf.float32))
      smallest = tf.minimum(smallest, tf.reduce_min(values))
    return cost, term, alive / tf.maximum(total, 1.0), smallest

  def _trainer(self) -> Optional[training.MorphNetModel]:
    return self.model if isinstance(self.model, training.MorphNetModel) else None

  def _strength_now(self) -> Optional[float]:
    if self._strength is not None:
      return self._strength
    if self._controlled[0] is not None:
      return self._controlled[1]
    trainer = self._trainer()
    return None if trainer is None else trainer.regularization_strength

  def compute_logs(self) -> dict:
    """The values this callback logs, computed now."""
    cost, term, alive_fraction, smallest = (float(v) for v in self._stats_fn())
    self._smallest = smallest
    strength = self._strength_now()
    logs = {
        self._cost_name: cost,
        'regularization_loss': term if strength is None else strength * term,
        'alive_fraction': alive_fraction,
    }
    if strength is not None:
      logs['strength'] = strength
    return logs

  def _iterations(self) -> int:
    """The optimizer's iteration count (0 without an optimizer)."""
    optimizer = getattr(self.model, 'optimizer', None)
    iterations = getattr(optimizer, 'iterations', None)
    # A Keras variable has no truth value: compare with None explicitly.
    return 0 if iterations is None else int(keras.ops.convert_to_numpy(iterations))

  def _global_step(self) -> int:
    if self._step_offset is None:
      self._resolve_step_offset()
    return self._step_offset + self._iterations()

  def _resolve_step_offset(self) -> None:
    # Decided at the first step, after every callback's on_train_begin (e.g.
    # BackupAndRestore restoring the optimizer's iteration count).
    self._step_offset = 0
    if self._export_dir is not None and self._iterations() == 0:
      last = last_exported_step(self._export_dir)
      if last is not None:
        self._step_offset = last

  @property
  def target_cost(self) -> Optional[float]:
    trainer = self._trainer()
    return None if trainer is None else trainer.target_cost

  def on_train_begin(self, logs=None):
    self._check_model()
    self._step_offset = None
    self._last_update_step = None
    self._controlled = (None, None)
    self.completion = None
    trainer = self._trainer()
    target_cost, target_fraction = self._target
    if trainer is not None and (target_cost or target_fraction) and trainer.target_cost is None:
      if target_fraction is not None:
        target_cost = target_fraction * float(self._regularizer.get_cost())
      trainer._target_variable.assign(target_cost)  # pylint: disable=protected-access

  def _check_model(self) -> None:
    trainer = self._trainer()
    if trainer is None:
      if self._strength is None and not self._monitor_only:
        raise ValueError(
            'MorphNetCallback needs a model whose loss holds the MorphNet term. '
            f'Received: a {type(self.model).__name__} ({self.model.name!r}), not a '
            'MorphNetModel, so the logged cost would not be regularized. Fit '
            'MorphNetModel(model, reg) instead; or, if your loss adds '
            'strength * reg.get_regularization_term() itself, pass '
            'regularization_strength=<that strength>; or pass monitor_only=True to '
            'only log the cost.')
      return
    theirs = trainer.network_regularizer
    if theirs is not self._regularizer and (
        theirs.op_regularizer_manager is not self._regularizer.op_regularizer_manager):
      raise ValueError(
          'MorphNetCallback and the MorphNetModel being fitted use different network '
          f'regularizers. Received: {type(self._regularizer).__name__} '
          f'(cost {self._cost_name!r}) in the callback and '
          f'{type(theirs).__name__} in the model. Pass trainer.network_regularizer to '
          'the callback.')

  def _adapt_strength(self, cost: float, step: int) -> None:
    trainer = self._trainer()
    if trainer is None:
      return
    if self._last_update_step is None:
      # Read once per fit, after every on_train_begin (e.g. a restore).
      self._controlled = (trainer.target_cost, trainer.regularization_strength)
      self._last_update_step = step - 1
    target, strength = self._controlled
    if target is None:
      return
    steps = step - self._last_update_step
    self._last_update_step = step
    strength = budget.next_strength(strength, cost, target, steps, trainer.adapt_rate)
    self._controlled = (target, strength)
    trainer.regularization_strength = strength

  def on_train_batch_begin(self, batch, logs=None):
    if self._step_offset is None:
      self._resolve_step_offset()

  def on_train_batch_end(self, batch, logs=None):
    step = self._global_step()
    if logs is not None and (batch % self._log_every == 0 or not self._last_logs):
      self._last_logs = self.compute_logs()
      self._adapt_strength(self._last_logs[self._cost_name], step)
      self._last_logs['strength'] = self._strength_now()
      if self._last_logs['strength'] is None:
        del self._last_logs['strength']
    if logs is not None:
      logs.update(self._last_logs)
    if self._export_dir is not None and self._export_every and step % self._export_every == 0:
      self.export(step)

  def on_epoch_end(self, epoch, logs=None):
    self._last_logs = self.compute_logs()
    if logs is not None:
      logs.update(self._last_logs)
    if self._export_dir is not None and self._export_each_epoch:
      self.export(self._global_step())
    if (self._warn_after is not None and not self._warned_no_pruning
        and epoch + 1 >= self._warn_after and self._last_logs['alive_fraction'] >= 1.0):
      self._warned_no_pruning = True
      warnings.warn(self.no_pruning_message(epoch + 1), NoPruningWarning, stacklevel=2)

  def no_pruning_message(self, epochs: int) -> str:
    """What the no-pruning warning says (figures and what to change)."""
    threshold = _threshold_of(self._regularizer)
    smallest = getattr(self, '_smallest', float('nan'))
    learning_rate = _learning_rate(self.model)
    steps = self._global_step()
    strength = self._strength_now()
    parts = [
        f'MorphNet: no channel has died after {epochs} epoch(s) ({steps} steps). The '
        f'smallest regularization value (|gamma| or norm) is {smallest:.3g}; a channel '
        f'dies below the threshold {threshold if threshold is not None else "?"}. '
        f'Strength {strength if strength is not None else "unknown"}, learning rate '
        f'{learning_rate if learning_rate is not None else "unknown"}.']
    if learning_rate and threshold is not None and smallest > threshold:
      needed = (smallest - threshold) / learning_rate
      parts.append(
          f' Under Adam a value moves about learning_rate per step, so it needs about '
          f'{needed:,.0f} more steps to cross the threshold.')
    parts.append(
        ' To prune: train longer or with a larger learning rate (e.g. 1e-2), raise the '
        'strength (or set target_fraction= so that it adapts), or raise the threshold.')
    return ''.join(parts)

  def on_train_end(self, logs=None):
    trainer = self._trainer()
    target = None if trainer is None else trainer.target_cost
    if target is None:
      return
    self.completion = budget.complete_to_target(
        self._regularizer, target, key_by_layer=self._key_by == 'layer')
    message = 'MorphNet: ' + self.completion.describe(self._cost_name)
    if self.completion.completed or self.completion.refilled:
      logging.warning(message)
    else:
      logging.info(message)
    if self._export_dir is not None:
      self.export(self._global_step(), completion=self.completion)

  def export(self, step: int, completion: Optional[budget.Completion] = None) -> str:
    """Writes every export file of this callback; returns the structure's path.

    Writes `learned_structure/alive_<step>` (the current alive counts, or
    `completion.counts`); with a completion also `alive_<step>.budget.json`
    beside it (target, trained / exported cost, whether and where channels
    were removed to meet the target, the strength). The only method writing
    files. Under MultiWorkerMirroredStrategy only the chief writes into
    `export_dir` (see `distribution.writable_directory`); every worker returns
    the chief's path.
    """
    counts = None if completion is None else completion.counts
    strategy = distribution.current_strategy(self.model)
    with distribution.writable_directory(self._export_dir, strategy) as directory:
      written = self._structure.save(directory, step, alive_counts=counts)
      if completion is not None:
        record = completion.as_dict()
        record.update(cost_name=self._cost_name, step=int(step),
                      regularization_strength=self._strength_now(),
                      note=completion.describe(self._cost_name))
        structure_exporter.write_file_atomically(
            written + BUDGET_SUFFIX, json.dumps(record, indent=2, sort_keys=True))
      path = distribution.chief_path(written, directory, self._export_dir)
    if not self.exported_paths or self.exported_paths[-1] != path:
      self.exported_paths.append(path)
    return path


class NoPruningWarning(UserWarning):
  """No channel has died after `warn_after_epochs` epochs."""


def _threshold_of(network_regularizer) -> Optional[float]:
  manager = network_regularizer.op_regularizer_manager
  for op in getattr(manager, 'ops', ()):
    regularizer = manager.get_regularizer(op)
    for name in ('_gamma_threshold', '_threshold', 'threshold'):
      value = getattr(regularizer, name, None)
      if isinstance(value, (int, float)):
        return float(value)
  return None


def _learning_rate(model) -> Optional[float]:
  optimizer = getattr(model, 'optimizer', None)
  try:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
  except Exception:  # pylint: disable=broad-except  # schedules, no optimizer
    return None
