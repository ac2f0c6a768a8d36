"""Lazy evaluation of regularizer vectors: analyse once, evaluate anywhere.

An OpRegularizer holds no tensor of the graph it was analysed on. It holds a
*recipe*: a `tf.Variable` (or a graph tensor, for plain TF1 users) plus the
slicing and reduction to apply. The recipe is evaluated in the context the
property is read in: a `tf.compat.v1` graph, an eager step, a `tf.function`
train step or a distribution-strategy replica. In a plain `tf.Graph` the result
is cached per graph, so that repeated reads return the same tensor as in the
original library; eagerly and inside `tf.function` it is recomputed, so values
follow the variables and no tensor leaks from one trace into another.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Callable, Iterator

import tensorflow as tf


def _is_variable(value: Any) -> bool:
  if isinstance(value, tf.Variable):
    return True
  # Keras 3 variables (and distributed values) convert to tensors but are not
  # tf.Variable subclasses on every version.
  return hasattr(value, 'assign') and hasattr(value, 'dtype') and (
      hasattr(value, 'handle') or hasattr(value, 'value'))


def materialize(value: Any) -> tf.Tensor:
  """Returns `value` as a tensor of the current context.

  Args:
    value: a `tf.Variable` (read now), a zero-argument callable returning a
      tensor (called now), or a tensor (returned as is).

  Raises:
    ValueError: `value` is a tensor of a `tf.compat.v1` graph read outside it.
  """
  if callable(value) and not _is_variable(value) and not tf.is_tensor(value):
    return value()
  if _is_variable(value):
    return tf.convert_to_tensor(_replica_local(value))
  if tf.is_tensor(value) and hasattr(value, 'graph'):
    current = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    if current is not value.graph and not _is_outer_graph(value.graph, current):
      raise ValueError(
          'A regularizer built on a tensor of a graph cannot be evaluated '
          'outside that graph. Received: tensor '
          f'{value.name!r}, which is not backed by a tf.Variable, read '
          f'{"eagerly" if current is None else "in another graph"}. Build the '
          'regularizer on a graph whose weights are read from tf.Variables '
          '(resource variables, or a tf.function traced from them) so that '
          'it can be evaluated anywhere, or evaluate it in its own graph.')
  return value


def _replica_local(variable: Any) -> Any:
  """The distributed variable of a component variable, in a replica context.

  A model traced under a `tf.distribute` strategy reads its variables through
  their primary components (replica 0's copies). In a replica context reading
  the distributed variable gives this replica's copy instead, so that the
  term's gradient reaches the variables each replica's tape watches (without
  it, replicas other than the first got no gradient from the term).
  """
  # TensorFlow marks each component (on its handle for resource variables).
  container = getattr(variable, '_distributed_container', None) or getattr(
      getattr(variable, 'handle', None), '_distributed_container', None)
  if container is None or not callable(container):
    return variable
  if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
    return variable
  parent = container()
  return variable if parent is None else parent


def _is_outer_graph(graph, current) -> bool:
  """True if `graph` is `current` or encloses it (tf.function inside a graph)."""
  while current is not None:
    if current is graph:
      return True
    current = getattr(current, 'outer_graph', None)
  return False


class LazySlice:
  """A callable reading `source[begin:begin + size]` along `axis` when called."""

  def __init__(self, source: Any, begin: int, size: int, axis: int = 0):
    self.source = source
    self.begin = int(begin)
    self.size = int(size)
    self.axis = int(axis)

  def __call__(self) -> tf.Tensor:
    tensor = materialize(self.source)
    rank = tensor.shape.rank
    begin = [0] * rank
    size = [-1] * rank
    begin[self.axis] = self.begin
    size[self.axis] = self.size
    return tf.slice(tensor, begin, size)

  def __repr__(self):
    return (f'LazySlice({self.source!r}, begin={self.begin}, size={self.size}, '
            f'axis={self.axis})')


def static_shape(value: Any) -> tf.TensorShape:
  """Static shape of a tensor, variable or LazySlice, without reading values."""
  if isinstance(value, LazySlice):
    shape = static_shape(value.source).as_list()
    shape[value.axis] = value.size
    return tf.TensorShape(shape)
  return tf.TensorShape(value.shape)


_scopes = threading.local()


@contextlib.contextmanager
def evaluation_scope() -> Iterator[None]:
  """Within this scope each lazy value is computed at most once per context.

  A cost or regularization term reads the vectors of every op's regularizer,
  and group members share regularizers; without this scope, reads inside a
  `tf.function` would rebuild the same tensors once per reader (quadratic in
  the number of channel slices of, e.g., depthwise convolutions with a depth
  multiplier). The memo lives only as long as the scope, i.e. one evaluation in
  one context, so it never hands a tensor to another trace or to a gradient
  tape that did not see it being computed.
  """
  stack = getattr(_scopes, 'stack', None)
  if stack is None:
    stack = _scopes.stack = []
  stack.append({})
  try:
    yield
  finally:
    stack.pop()


def _scope_memo():
  stack = getattr(_scopes, 'stack', None)
  return stack[-1] if stack else None


class PerGraphCache:
  """Holds one value per plain `tf.Graph`; recomputes eagerly and in tf.function.

  Only the most recent graph is remembered (weakly), so long-running programs
  that evaluate a regularizer in many graphs do not accumulate tensors. Inside
  an `evaluation_scope`, values are also memoized for the scope's duration.
  """

  def __init__(self):
    self._graph_ref = None
    self._value = None

  def get(self, compute: Callable[[], Any]) -> Any:
    memo = _scope_memo()
    if memo is None:
      return self._get(compute)
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    key = (id(self), id(graph))
    entry = memo.get(key)
    if entry is None or entry[0] is not self or entry[1] is not graph:
      entry = (self, graph, self._get(compute))
      memo[key] = entry
    return entry[2]

  def _get(self, compute: Callable[[], Any]) -> Any:
    if tf.executing_eagerly():
      return compute()
    graph = tf.compat.v1.get_default_graph()
    if getattr(graph, 'building_function', False):
      return compute()
    if self._graph_ref is not None and self._graph_ref() is graph:
      return self._value
    value = compute()
    self._graph_ref = weakref.ref(graph)
    self._value = value
    return value
