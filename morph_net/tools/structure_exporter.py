"""Exports the learned structure (alive channels per op) as JSON files.

The structure is a flat JSON object `{"<op name>": <alive count>, ...}`, written
with `indent=2, sort_keys=True` and no trailing newline, e.g.

  {
    "conv1/Conv2D": 13,
    "conv2/Conv2D": 64
  }

It is what `configurable_ops` reads back as a parameterization.

Two ways to obtain the alive counts:

* Graph mode (`tf.compat.v1`), as in the original library: evaluate
  `exporter.tensors` in a session, pass the result to `populate_tensor_values`,
  then call `get_alive_counts`, `save_alive_counts` or
  `create_file_and_save_alive_counts`. Before population these raise
  `RuntimeError('Tensor values not populated.')`.
* Eager (TF2 / Keras): the regularizers are lazy and read their variables
  when evaluated, so no session is needed. While no values have been populated,
  `get_alive_counts()` (and the saving methods) evaluate the alive vectors
  directly when executing eagerly; `compute_alive_counts()` always evaluates
  them now. Values given to `populate_tensor_values` take precedence in
  `get_alive_counts` and the saving methods until populated again.

An exporter constructed inside a `tf.compat.v1` graph is bound to that graph:
its alive tensors are created there at construction (like the original),
`tensors` read outside any graph returns those tensors (to run in a session),
and it is never evaluated eagerly.

Files are written atomically: the JSON is produced first, written to a
temporary file in the destination directory and moved into place with
`os.replace`, so a failure leaves any previous file intact and never leaves a
partial file behind.
"""

from __future__ import annotations

import json
import operator
import os
import uuid
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from morph_net.framework import lazy_evaluation

SUPPORTED_OPS = ['Conv2D', 'Conv2DBackpropInput', 'Conv3D']
# Op types exported in addition with `include_matmul_and_depthwise=True`.
MATMUL_AND_DEPTHWISE_OPS = ['MatMul', 'DepthwiseConv2dNative']
ALIVE_FILENAME = 'alive'
_LEARNED_STRUCTURE_DIR = 'learned_structure'


class StructureExporter:
  """Reports statistics about the current state of regularization.

  Example (eager):

    exporter = StructureExporter(network_regularizer.op_regularizer_manager)
    ...  # train
    exporter.create_file_and_save_alive_counts(train_dir, step)

  Example (graph mode):

    exporter = StructureExporter(network_regularizer.op_regularizer_manager)
    ...
    exporter.populate_tensor_values(sess.run(exporter.tensors))
    exporter.create_file_and_save_alive_counts(train_dir, step)
  """

  def __init__(self, op_regularizer_manager: Any,
               remove_common_prefix: bool = False, *,
               include_matmul_and_depthwise: bool = False):
    """Creates an instance.

    Args:
      op_regularizer_manager: An `OpRegularizerManager` (anything with an
        `ops` collection of `tf.Operation`s and `get_regularizer(op)`).
      remove_common_prefix: If True, a first-level name prefix shared by all
        exported op names (e.g. the model name `'functional/'`) is removed;
        see `get_remove_common_prefix_fn`.
      include_matmul_and_depthwise: If True, `MatMul` and
        `DepthwiseConv2dNative` ops are exported too (the original exports
        only `SUPPORTED_OPS`). Keyword-only.
    """
    export_types = list(SUPPORTED_OPS)
    if include_matmul_and_depthwise:
      export_types += MATMUL_AND_DEPTHWISE_OPS
    regularizers = {}
    for op in sorted(op_regularizer_manager.ops, key=lambda o: o.name):
      if op.type not in export_types:
        continue
      regularizer = op_regularizer_manager.get_regularizer(op)
      if regularizer is None:
        logging.warning('No regularizer found for: %s', op.name)
        continue
      regularizers[op.name] = regularizer
    if remove_common_prefix:
      rename = get_remove_common_prefix_fn(regularizers)
      regularizers = {rename(k): v for k, v in regularizers.items()}
    self._regularizers = regularizers
    self._alive_vector_values: Optional[Dict[str, Any]] = None
    self._tensors_cache = lazy_evaluation.PerGraphCache()
    # Bound graph: set when constructed in a plain tf.compat.v1 graph.
    self._graph = None
    self._graph_tensors = None
    if _in_plain_graph():
      self._graph = tf.compat.v1.get_default_graph()
      self._graph_tensors = self.tensors

  def _alive_vectors(self) -> Dict[str, tf.Tensor]:
    return {name: regularizer.alive_vector
            for name, regularizer in self._regularizers.items()}

  @property
  def regularizers(self) -> Dict[str, Any]:
    """Exported name → the OpRegularizer whose alive vector is exported."""
    return dict(self._regularizers)

  @property
  def tensors(self) -> Dict[str, tf.Tensor]:
    """Op name → boolean alive-vector tensor.

    The tensors are created in the current context: once per
    `tf.compat.v1` graph (repeated reads return the same tensors), afresh
    eagerly (current values) and inside `tf.function`. Read eagerly, an
    exporter bound to a `tf.compat.v1` graph returns that graph's tensors,
    to be evaluated in a session.
    """
    if tf.executing_eagerly() and self._graph is not None:
      return dict(self._graph_tensors)
    return dict(self._tensors_cache.get(self._alive_vectors))

  def populate_tensor_values(self, values: Mapping[str, Any]) -> None:
    """Records evaluated alive vectors, e.g. `sess.run(exporter.tensors)`.

    Args:
      values: Op name → evaluated alive vector (array-like of bools), with
        exactly the keys of `tensors`.

    Raises:
      ValueError: the keys of `values` differ from those of `tensors`.
    """
    if set(values) != set(self._regularizers):
      raise ValueError(
          '`values` and `self.tensors` must have the same keys but are '
          f'{sorted(values, key=str)} and {sorted(self._regularizers)}. Pass the '
          'evaluated `exporter.tensors` dict.')
    self._alive_vector_values = {k: np.asarray(v) for k, v in values.items()}

  def compute_alive_counts(self) -> Dict[str, int]:
    """Evaluates the alive vectors now (eagerly) and counts them.

    Populated values, if any, are neither used nor changed.

    Returns:
      Op name → number of alive channels.

    Raises:
      RuntimeError: not executing eagerly, or the exporter is bound to a
        `tf.compat.v1` graph (evaluate `tensors` in a session instead).
      ValueError: a regularization value is NaN or infinite (see
        `check_finite_regularization`).
    """
    self._check_eagerly_readable()
    check_finite_regularization(self._regularizers)
    return _compute_alive_counts(
        {k: np.asarray(v) for k, v in self._alive_vectors().items()})

  def get_alive_counts(self) -> Dict[str, int]:
    """Computes alive counts.

    Uses the populated values if any; otherwise, when executing eagerly and
    not bound to a `tf.compat.v1` graph, evaluates the alive vectors now
    (without populating them).

    Returns:
      Op name → number of alive channels.

    Raises:
      RuntimeError: values were not populated and cannot be evaluated eagerly.
    """
    if self._alive_vector_values is not None:
      return _compute_alive_counts(self._alive_vector_values)
    if tf.executing_eagerly() and self._graph is None:
      return self.compute_alive_counts()
    raise RuntimeError(
        'Tensor values not populated. In graph mode, evaluate '
        '`exporter.tensors` (e.g. with `session.run`) and pass the result to '
        '`populate_tensor_values` first; eagerly, call `get_alive_counts` '
        'outside tf.function on an exporter not built inside a '
        'tf.compat.v1 graph.')

  def save_alive_counts(self, f: Any) -> None:
    """Writes the alive counts as JSON to the open text file `f`.

    The JSON is produced before anything is written to `f`.

    Args:
      f: A file-like object open for writing text.
    """
    f.write(format_structure(self.get_alive_counts()))

  def create_file_and_save_alive_counts(self, base_dir: str,
                                        global_step: int) -> str:
    """Writes the alive counts to `<base_dir>/learned_structure/alive_<step>`.

    The directory is created if needed. The file is replaced atomically.

    Args:
      base_dir: The base directory (e.g. the training directory).
      global_step: An integer step number, part of the file name.

    Returns:
      The path of the written file.

    Raises:
      TypeError: `global_step` is not an integer.
      OSError: the directory cannot be created or written; the message names
        the path.
      RuntimeError: see `get_alive_counts`.
    """
    try:
      step = operator.index(global_step)
    except TypeError:
      raise TypeError(
          'global_step must be an integer. '
          f'Received: global_step={global_step!r}.') from None
    directory = os.path.join(base_dir, _LEARNED_STRUCTURE_DIR)
    path = os.path.join(directory, f'{ALIVE_FILENAME}_{step}')
    # Produce the content first: a failure here leaves the disk untouched.
    content = format_structure(self.get_alive_counts())
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise OSError(
          f'Cannot create the learned-structure directory {directory!r}: {e}. '
          'Pass a base_dir that is a writable directory.') from e
    write_file_atomically(path, content)
    return path

  def _check_eagerly_readable(self):
    if not tf.executing_eagerly():
      raise RuntimeError(
          'compute_alive_counts() evaluates the alive vectors eagerly and '
          'cannot run in graph mode or inside tf.function. Evaluate '
          '`exporter.tensors` and call `populate_tensor_values` instead.')
    if self._graph is not None:
      raise RuntimeError(
          'compute_alive_counts() cannot evaluate an exporter built inside a '
          'tf.compat.v1 graph. Evaluate `exporter.tensors` in a session and '
          'call `populate_tensor_values` instead.')


def check_finite_regularization(regularizers: Mapping[str, Any]) -> None:
  """Raises ValueError if a regularization vector holds NaN or infinity.

  Beyond the original. Alive vectors compare the regularization values with a
  threshold, and `nan > t` is False: NaN gammas (a diverged training step)
  would export as dead channels, a silently wrong structure. The eager export
  paths call this first, so that nothing is written then.

  Args:
    regularizers: Exported name -> OpRegularizer, evaluated eagerly.

  Raises:
    ValueError: naming every entry with non-finite values and their number.
  """
  bad = []
  for name, regularizer in regularizers.items():
    values = np.asarray(regularizer.regularization_vector, dtype=np.float64)
    non_finite = int(np.size(values) - np.sum(np.isfinite(values)))
    if non_finite:
      bad.append(f'{name!r} ({non_finite} of {np.size(values)} values: '
                 f'{np.sum(np.isnan(values))} NaN, {np.sum(np.isinf(values))} inf)')
  if bad:
    raise ValueError(
        'Cannot compute alive counts: the regularization values (e.g. batch '
        'norm gammas or kernel norms) of ' + ', '.join(bad) + ' are not '
        'finite, so which channels are alive is undefined. Training has '
        'probably diverged: lower the learning rate or the regularization '
        'strength, or restore an earlier checkpoint.')


def _in_plain_graph() -> bool:
  """True when building a plain tf.compat.v1 graph (not eager, not tf.function)."""
  if tf.executing_eagerly():
    return False
  return not getattr(tf.compat.v1.get_default_graph(), 'building_function',
                     False)


def write_file_atomically(path: str, content: str) -> None:
  """Writes `content` to `path` through a temporary file and `os.replace`."""
  directory, base = os.path.split(path)
  tmp_path = os.path.join(
      directory, f'.{base}.tmp-{os.getpid()}-{uuid.uuid4().hex}')
  try:
    # O_EXCL: never clobber another file; 0o666 honours the umask like open().
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    raise OSError(
        f'Cannot write the learned structure to directory {directory!r}: '
        f'{e}. Pass a base_dir that is a writable directory.') from e
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    try:
      os.remove(tmp_path)
    except OSError:
      pass
    raise


def format_structure(structure: Mapping[str, Any]) -> str:
  """Formats a structure as JSON: `indent=2`, sorted keys, no trailing newline."""
  return json.dumps(structure, indent=2, sort_keys=True, default=str)


def get_remove_common_prefix_fn(iterable: Iterable[str]) -> Callable[[str], str]:
  """Returns a function that removes a first-level prefix common to all names.

  The prefix is the text of the first name up to and including its first
  `'/'`; it is removed only if every name starts with it (one level only).
  Otherwise, or if there are no names, or the first has no `'/'`, the
  identity is returned.

  Args:
    iterable: Names (e.g. op names).

  Returns:
    A function mapping a name to the name without the common prefix.
  """
  names = list(iterable)
  if not names:
    return lambda name: name
  first = names[0]
  if '/' not in first:
    return lambda name: name
  prefix = first[:first.index('/') + 1]
  if not all(name.startswith(prefix) for name in names):
    return lambda name: name
  return lambda name: name[len(prefix):]


def _compute_alive_counts(alive_vectors: Mapping[str, Any]) -> Dict[str, int]:
  """Computes alive counts.

  Args:
    alive_vectors: Op name → array-like of bools.

  Returns:
    Op name → number of True entries, as a Python int.
  """
  return {name: int(np.sum(alive)) for name, alive in alive_vectors.items()}
