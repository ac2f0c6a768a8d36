"""Builds one raw-op network two ways, so every test runs in both graph modes.

* `graph`: a `tf.compat.v1` graph with resource variables, evaluated in a session;
* `traced`: a `tf.function` traced from `tf.Variable`s, whose `FuncGraph` is
  analysed and whose regularizers are then evaluated eagerly (no session).

A network function has the signature `net_fn(image, var)` where
`var(name, initial_value)` returns a variable usable by raw ops. Name scopes
opened inside `net_fn` give the same op names in both modes.

Example:
  built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
  reg = GammaFlopsRegularizer([built.output.op], 0.45)
  cost = built.evaluate(reg.get_cost)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import tensorflow as tf

GRAPH = 'graph'
TRACED = 'traced'
MODES = (GRAPH, TRACED)


@dataclasses.dataclass
class Built:
  mode: str
  graph: tf.Graph
  outputs: Any  # whatever net_fn returned, as graph tensors
  variables: Dict[str, Any]
  image: tf.Tensor

  @property
  def output(self) -> tf.Tensor:
    """The single output tensor (or the first, if net_fn returned several)."""
    if isinstance(self.outputs, (list, tuple)):
      return self.outputs[0]
    return self.outputs

  def op(self, name: str) -> tf.Operation:
    """The op of this graph named `name`."""
    return self.graph.get_operation_by_name(name)

  def ops(self, names: Sequence[str]) -> List[tf.Operation]:
    return [self.op(n) for n in names]

  def evaluate(self, fn: Callable[[], Any]) -> Any:
    """Calls `fn` in this mode's evaluation context and returns numpy values.

    In graph mode `fn` runs inside the graph and the result is run in a
    session (variables initialised to their initial values); in traced mode
    `fn` runs eagerly.
    """
    if self.mode == GRAPH:
      with self.graph.as_default():
        tensors = fn()
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=self.graph) as sess:
          sess.run(init)
          return _to_numpy(sess.run(tensors))
    return _to_numpy(tf.nest.map_structure(
        lambda t: t.numpy() if hasattr(t, 'numpy') else t, fn()))


def _to_numpy(value):
  return tf.nest.map_structure(
      lambda v: np.asarray(v) if isinstance(v, (np.ndarray, np.generic, list)) else v,
      value)


def build(mode: str, net_fn: Callable, image_shape: Sequence[int],
          image_value: float = 0.0) -> Built:
  """Builds `net_fn` on a constant image of `image_shape` in `mode`."""
  if mode == GRAPH:
    graph = tf.Graph()
    variables = {}
    with graph.as_default():
      def var(name, initial_value):
        v = tf.compat.v1.get_variable(
            name, initializer=tf.constant(np.asarray(initial_value, np.float32)),
            use_resource=True)
        variables[name] = v
        return v
      image = tf.constant(np.full(image_shape, image_value, np.float32), name='image')
      outputs = net_fn(image, var)
    return Built(GRAPH, graph, outputs, variables, image)

  if mode != TRACED:
    raise ValueError(f'Unknown mode {mode!r}; expected one of {MODES}.')
  variables = {}

  def var(name, initial_value):
    if name not in variables:
      with tf.init_scope():
        variables[name] = tf.Variable(np.asarray(initial_value, np.float32), name=name)
    return variables[name]

  def traced(image):
    return net_fn(image, var)

  concrete = tf.function(traced).get_concrete_function(
      tf.TensorSpec(image_shape, tf.float32, name='image'))
  graph = concrete.graph
  image = graph.inputs[0]
  outputs = tf.nest.map_structure(lambda t: t, concrete.structured_outputs)
  return Built(TRACED, graph, outputs, variables, image)


def fused_bn(x, var, name: str, gamma):
  """A fused batch norm (training mode) on a 4-D `x` with variables `<name>_gamma/_beta`.

  For network functions of `build`: `gamma` sets the alive channels (beta 0).
  """
  with tf.name_scope(name):
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var(f'{name}_gamma', gamma), var(f'{name}_beta', np.zeros(len(gamma))),
        is_training=True)
    return y
