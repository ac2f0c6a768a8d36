"""Maps graph tensors back to the variables that back them.

The original used this module so that code outside a TPU training loop could
read the *variables* behind tensors computed inside it. In this port it is also
the heart of lazy evaluation: a gamma or kernel tensor found in an analysed
graph is converted to its `tf.Variable`, which can then be read in any context.

Resolution of a `ReadVariableOp` (possibly behind `Identity` ops):
  * in a `tf.compat.v1` graph the resource handle comes from a `VarHandleOp`; the
    variable is found among the graph's global and local variables;
  * in a graph traced by `tf.function` (a `FuncGraph`) the handle is a captured
    placeholder; `FuncGraph.captures` maps it to the outer handle, which is
    matched against the variables the function read (`FuncGraph.variables`),
    recursively through nested functions.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Dict, Optional

import tensorflow as tf

_run_on_cpu = False
var_store: Dict[Any, Any] = {}
# The root variable scope, as the original's `tf.get_variable_scope()` read at
# import time in a TF1 program: entering this object (rather than the string
# '') escapes any enclosing scope's name *and* reuse flag, so
# `write_to_variable(t, fail_if_exists=True)` inside
# `variable_scope('', reuse=True)` still refuses an existing variable.
# (Built in a graph context: a VariableScope created eagerly forces AUTO_REUSE.)
with tf.Graph().as_default():
  top_level_scope = tf.compat.v1.VariableScope(reuse=False, name='')
# Variables created by write_to_variable while executing eagerly, by name.
_eager_variables: Dict[str, tf.Variable] = {}


@contextlib.contextmanager
def run_on_cpu():
  """Within this context, tensors are read from their stored variables (not thread-safe)."""
  global _run_on_cpu
  previous = _run_on_cpu
  _run_on_cpu = True
  try:
    yield
  finally:
    _run_on_cpu = previous


def is_on_cpu() -> bool:
  return _run_on_cpu


def _skip_identities(tensor):
  while tensor.op.type == 'Identity':
    tensor = tensor.op.inputs[0]
  return tensor


def get_variable_name(read_variable_op: tf.Operation) -> str:
  """Name of the variable read by `read_variable_op` (walks a single-input chain)."""
  op = read_variable_op
  while True:
    if op.type == 'VarHandleOp':
      return op.name
    if op.type == 'Placeholder':
      return op.name.split('/ReadVariableOp/')[-1]
    if len(op.inputs) != 1:
      raise ValueError(
          'Cannot find the variable read by op: its input chain forks before '
          'reaching a VarHandleOp or Placeholder. Received: op '
          f'{read_variable_op.name!r}; forking op {op.name!r} ({op.type}).')
    op = op.inputs[0].op


def _variable_for_handle(handle) -> Optional[Any]:
  """Returns the variable whose resource handle is `handle`, or None."""
  graph = handle.graph
  if handle.op.type == 'VarHandleOp':
    candidates = list(graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES))
    candidates += graph.get_collection(tf.compat.v1.GraphKeys.LOCAL_VARIABLES)
    candidates += graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
    for variable in candidates:
      var_handle = getattr(variable, 'handle', None)
      if var_handle is not None and getattr(var_handle, 'op', None) is handle.op:
        return variable
    return None
  captures = getattr(graph, 'captures', None)
  if handle.op.type != 'Placeholder' or captures is None:
    return None
  external = None
  for outer, inner in captures:
    if inner is handle:
      external = outer
      break
  if external is None:
    return None
  variable = _handle_to_variable(graph).get(id(external))
  if variable is not None:
    return variable
  if hasattr(external, 'op') and not tf.executing_eagerly() and hasattr(
      external, 'graph') and external.graph is not graph:
    return _variable_for_handle(external)
  if getattr(external, 'op', None) is not None and hasattr(external, 'graph'):
    # Symbolic outer handle (nested tf.function): resolve in the outer graph.
    try:
      return _variable_for_handle(external)
    except AttributeError:
      return None
  return None


# graph -> {id(outer handle): variable}; weak on graphs.
_variable_maps = weakref.WeakKeyDictionary()


def _handle_to_variable(graph) -> Dict[int, Any]:
  """Maps the outer resource handles of `graph.variables` to the variables."""
  mapping = _variable_maps.get(graph)
  if mapping is None:
    mapping = {}
    for variable in getattr(graph, 'variables', ()):
      var_handle = getattr(variable, 'handle', None)
      if var_handle is not None:
        mapping[id(var_handle)] = variable
    _variable_maps[graph] = mapping
  return mapping


def maybe_convert_to_variable(tensor):
  """Returns the variable backing `tensor`, or `tensor` itself if there is none.

  Args:
    tensor: a tensor, typically a gamma or a weight read in an analysed graph.
      Anything that is not a tensor (e.g. a variable) is returned unchanged.

  Raises:
    ValueError: `tensor` reads a resource variable that cannot be found.
  """
  if _run_on_cpu and _hashable(tensor) and tensor in var_store:
    return var_store[tensor]
  if not isinstance(tensor, tf.Tensor) or not hasattr(tensor, 'op'):
    return tensor
  read = _skip_identities(tensor)
  if read.op.type != 'ReadVariableOp':
    return tensor
  variable = _variable_for_handle(read.op.inputs[0])
  if variable is None:
    raise ValueError(
        'Cannot find the variable read by a ReadVariableOp. Received: tensor '
        f'{tensor.name!r} reading handle {read.op.inputs[0].name!r}. In a '
        'tf.compat.v1 graph, create the variable in that graph (it must be in '
        'the global or local variables collection); for a tf.function, trace '
        'it from tf.Variables captured by the function.')
  return variable


def _hashable(value) -> bool:
  try:
    hash(value)
  except TypeError:
    return False
  return True


def write_to_variable(tensor, fail_if_exists: bool = True):
  """Stores `tensor` in a non-trainable variable and returns a copy reading it.

  The variable is named `'tpu_util__' + <tensor name>` at the top-level scope.

  Raises:
    ValueError: `tensor` is not a tf.Tensor, or (with `fail_if_exists`) the
      variable already exists.
  """
  if not isinstance(tensor, tf.Tensor) or isinstance(tensor, tf.Variable):
    raise ValueError(f'Expected tf.Tensor but got {type(tensor).__name__}: {tensor!r}')
  base_name = tensor.name.split(':')[0] if hasattr(tensor, 'op') else 'eager_tensor'
  name = 'tpu_util__' + base_name.replace('/', '_') if tf.executing_eagerly() else (
      'tpu_util__' + base_name)
  if tf.executing_eagerly():
    if name in _eager_variables:
      if fail_if_exists:
        raise ValueError(f'Variable {name} already exists.')
      variable = _eager_variables[name]
      variable.assign(tensor)
    else:
      variable = tf.Variable(tensor, trainable=False, name=name)
      _eager_variables[name] = variable
    var_store[id(tensor)] = variable
    return tf.identity(variable)
  reuse = False if fail_if_exists else tf.compat.v1.AUTO_REUSE
  with tf.compat.v1.variable_scope(top_level_scope, reuse=reuse, auxiliary_name_scope=False):
    variable = tf.compat.v1.get_variable(
        name, shape=tensor.shape, dtype=tensor.dtype, trainable=False,
        use_resource=True, initializer=tf.compat.v1.zeros_initializer())
  assign = variable.assign(tensor)
  with tf.control_dependencies([assign]):
    result = tf.identity(tensor)
  var_store[tensor] = variable
  var_store[result] = variable
  return result


def read_from_variable(tensor):
  """On CPU, the variable stored for `tensor`; otherwise `tensor` itself."""
  if _run_on_cpu:
    return var_store[tensor]
  return tensor


def is_intermediate_var(v) -> bool:
  """True if `v` is a variable created by write_to_variable."""
  return 'tpu_util__' in getattr(v, 'name', '')
