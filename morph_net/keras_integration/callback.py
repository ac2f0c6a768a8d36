"""A Keras callback that logs MorphNet's cost and exports the learned structure.

Logged values (per batch and per epoch, so they show in the progress bar, in
`History` and in a TensorBoard callback listed after this one):
  * `<cost_name>` (e.g. `FLOPs`, `ModelSize`, `V100 Latency`): `get_cost()`;
  * `regularization_loss`: strength * `get_regularization_term()` (the raw term
    when no strength is known);
  * `alive_fraction`: alive / total channels over the exported layers.

Exports `<export_dir>/learned_structure/alive_<step>` (JSON, layer names by
default) every `export_every_n_steps` steps and/or at each epoch end. The step
is the optimizer's iteration count, so a run resumed from a checkpoint continues
its numbering; when the optimizer starts from 0 but earlier files exist in
`export_dir`, numbering continues after the last of them.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import keras
import tensorflow as tf

from morph_net.keras_integration import distribution
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import training

_ALIVE_FILE = re.compile(r'^alive_(\d+)$')


def last_exported_step(export_dir: str) -> Optional[int]:
  """Largest N of `<export_dir>/learned_structure/alive_N`, or None."""
  directory = os.path.join(export_dir, 'learned_structure')
  if not os.path.isdir(directory):
    return None
  steps = [int(m.group(1)) for m in map(_ALIVE_FILE.match, os.listdir(directory)) if m]
  return max(steps) if steps else None


class MorphNetCallback(keras.callbacks.Callback):
  """Logs cost / regularization loss / alive fraction; exports alive counts.

  Args:
    network_regularizer: the regularizer being trained with.
    regularization_strength: multiplies the logged term. Defaults to the
      strength of a `MorphNetModel` being fitted, else the raw term is logged.
    export_dir: where `learned_structure/alive_<step>` files go; None: no export.
    export_every_n_steps: export every N training steps (None: not by steps).
    export_each_epoch: export at the end of every epoch. Defaults to True.
    key_by: `'layer'` (default) or `'op'` names in the exported files.
    log_every_n_steps: compute the logged values every N batches (they are
      computed from the variables, outside the train step). Defaults to 1.
  """

  def __init__(self, network_regularizer, *,
               regularization_strength: Optional[float] = None,
               export_dir: Optional[str] = None,
               export_every_n_steps: Optional[int] = None,
               export_each_epoch: bool = True,
               key_by: str = 'layer',
               log_every_n_steps: int = 1):
    super().__init__()
    for name, value in (('export_every_n_steps', export_every_n_steps),
                        ('log_every_n_steps', log_every_n_steps)):
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f'{name} must be a positive integer or None. Received: '
                         f'{name}={value!r}.')
    self._regularizer = network_regularizer
    self._strength = (None if regularization_strength is None
                      else training._check_strength(regularization_strength))
    self._export_dir = export_dir
    self._export_every = export_every_n_steps
    self._export_each_epoch = export_each_epoch
    self._log_every = log_every_n_steps
    self._structure = layer_structure.LayerStructureExporter(
        network_regularizer, key_by=key_by)
    self._cost_name = network_regularizer.cost_name or 'cost'
    # autograph=False: the regularizer code is plain Python over a fixed op
    # list; converting it would only slow the trace down (seconds).
    self._stats_fn = tf.function(self._stats, autograph=False)
    self._step_offset = 0
    self._last_logs = {}
    self.exported_paths = []

  def _stats(self):
    cost = tf.cast(self._regularizer.get_cost(), tf.float32)
    term = tf.cast(self._regularizer.get_regularization_term(), tf.float32)
    alive, total = tf.constant(0.0), tf.constant(0.0)
    for reg in self._structure._regularizers.values():
      vector = reg.alive_vector
      alive += tf.reduce_sum(tf.cast(vector, tf.float32))
      total += tf.cast(tf.size(vector), tf.float32)
    return cost, term, alive / tf.maximum(total, 1.0)

  def _strength_now(self) -> Optional[float]:
    if self._strength is not None:
      return self._strength
    return getattr(self.model, 'regularization_strength', None)

  def compute_logs(self) -> dict:
    """The values this callback logs, computed now."""
    cost, term, alive_fraction = (float(v) for v in self._stats_fn())
    strength = self._strength_now()
    return {
        self._cost_name: cost,
        'regularization_loss': term if strength is None else strength * term,
        'alive_fraction': alive_fraction,
    }

  def _iterations(self) -> int:
    """The optimizer's iteration count (0 without an optimizer)."""
    optimizer = getattr(self.model, 'optimizer', None)
    iterations = getattr(optimizer, 'iterations', None)
    # A Keras variable has no truth value: compare with None explicitly.
    return 0 if iterations is None else int(keras.ops.convert_to_numpy(iterations))

  def _global_step(self) -> int:
    return self._step_offset + self._iterations()

  def on_train_begin(self, logs=None):
    self._step_offset = 0
    if self._export_dir is not None:
      iterations = self._iterations()
      last = last_exported_step(self._export_dir)
      if iterations == 0 and last is not None:
        self._step_offset = last

  def on_train_batch_end(self, batch, logs=None):
    step = self._global_step()
    if logs is not None and (batch % self._log_every == 0 or not self._last_logs):
      self._last_logs = self.compute_logs()
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

  def export(self, step: int) -> str:
    """Writes the current alive counts as `alive_<step>`; returns the path.

    Under MultiWorkerMirroredStrategy only the chief writes into `export_dir`
    (see `distribution.writable_directory`); every worker returns its path.
    """
    strategy = distribution.current_strategy(self.model)
    with distribution.writable_directory(self._export_dir, strategy) as directory:
      path = distribution.chief_path(self._structure.save(directory, step), directory,
                                     self._export_dir)
    if not self.exported_paths or self.exported_paths[-1] != path:
      self.exported_paths.append(path)
    return path
