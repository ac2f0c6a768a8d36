"""Re-estimates the moving statistics of a model's BatchNormalization layers.

After a shrink (channels removed, constants folded) or any change of the
weights, the moving mean and variance of a BatchNormalization no longer
describe its input. MorphNet's MobileNet protocol re-estimates them on
training data before evaluating or fine-tuning. `recalibrate_batch_norm` does
it exactly, in inference mode:

  * the BN layers are grouped by depth (the number of BNs on the longest path
    from the input up to and including them): a BN's input depends only on
    BNs of smaller depth;
  * nested functional or Sequential models (a backbone used as a layer in
    `Model(backbone(x))`) are walked as if flattened into the outer graph: their
    BNs get depths on the same scale as the outer ones and are recalibrated the
    same way (their inputs are computed by running the nested model's own graph
    on the outer tensors that feed it);
  * depth by depth, the model runs in inference mode on the same `steps`
    batches (kept in memory) and the mean and the (biased, as Keras uses)
    variance of every BN input of that depth are pooled over every batch,
    position and example (float64, Chan's parallel update), then written to
    `moving_mean` / `moving_variance`.

So each BN ends with the statistics of its input in the recalibrated model
itself, as if the moving averages had converged on that data. Cost: one
partial forward pass over the batches per depth level.

BNs inside layers whose call cannot be walked (subclassed layers or models
holding BNs) are left as they are, with a warning naming those layers.

Example:

  recalibrate_batch_norm(shrunk, x_train, steps=20, batch_size=64)
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

L = keras.layers


def recalibrate_batch_norm(model: keras.Model, data: Any, steps: Optional[int] = None, *,
                           batch_size: int = 32) -> Dict[str, int]:
  """Sets every BatchNormalization's moving statistics to those of its input on `data`.

  Args:
    model: a functional or Sequential Keras model. BNs of nested functional or
      Sequential models are recalibrated too; those inside subclassed layers
      or models are not (a warning names those layers).
    data: inputs to estimate the statistics on: a NumPy array or tensor of
      inputs (split into batches of `batch_size`), a tuple `(x, y[, w])` of
      them (only `x` is used), a `tf.data.Dataset` or any iterable of batches
      (each batch `x` or a tuple `(x, y, ...)`).
    steps: number of batches to use. Defaults to all of `data` (which must
      then be finite).
    batch_size: batch size for array data. Defaults to 32.

  Returns:
    `{BN name: values pooled per channel}` (examples x positions). A BN of a
    nested model is named by its path, e.g. `'backbone/bn_Conv1'`.

  Raises:
    TypeError: `model` is not a functional/Sequential Keras model.
    ValueError: a bad `steps` / `batch_size`, no data, or a BN layer called
      more than once (its input is ambiguous), also through a nested model
      called more than once.
  """
  _check_count('steps', steps, allow_none=True)
  _check_count('batch_size', batch_size, allow_none=False)
  opaque: Dict[str, List[str]] = {}
  scope, _ = _walk(_functional_of(model), None, '', {}, opaque)
  if opaque:
    logging.warning(
        'recalibrate_batch_norm: the BatchNormalization layers inside %s are not '
        'recalibrated (left as they are): the call of these layers cannot be walked '
        '(subclassed layers or models). Build them as functional models to have '
        'them recalibrated.',
        ', '.join(f'{name!r} ({", ".join(bns)})' for name, bns in opaque.items()))
  levels = sorted(scope.levels())
  if not levels:
    return {}
  batches = _batches(data, steps, batch_size)
  counts: Dict[str, int] = {}
  for level in levels:
    probe = _Probe(scope, level)
    stats: Dict[int, Tuple[Any, str, _Moments]] = {}
    for x in batches:
      for layer, name, output in probe(x):
        if id(layer) not in stats:
          stats[id(layer)] = (layer, name, _Moments())
        stats[id(layer)][2].update(np.asarray(output, np.float64),
                                   _axis(layer, len(output.shape)))
    for layer, name, moments in stats.values():
      layer.moving_mean.assign(moments.mean.astype(layer.moving_mean.dtype))
      layer.moving_variance.assign(moments.variance.astype(layer.moving_variance.dtype))
      counts[name] = moments.count
  return counts


class _Scope:
  """One functional graph to probe (the model or a nested model) and its BNs by depth.

  `bns[level]`: (layer, path name, input tensor) of this graph's BNs;
  `calls[level]`: (argument tensors, child scope) of the nested models called in
  this graph that hold a BN of that depth.
  """

  def __init__(self, graph):
    self.graph = graph
    self.bns: Dict[int, List[Tuple[Any, str, Any]]] = {}
    self.calls: Dict[int, List[Tuple[List[Any], '_Scope']]] = {}

  def levels(self) -> set:
    return set(self.bns) | set(self.calls)


class _Probe:
  """Computes the inputs of the BNs of one depth level, nested models included."""

  def __init__(self, scope: _Scope, level: int):
    self._bns = [(layer, name) for layer, name, _ in scope.bns.get(level, [])]
    calls = scope.calls.get(level, [])
    self._children = [(len(args), child.graph._inputs_struct, _Probe(child, level))  # pylint: disable=protected-access
                      for args, child in calls]
    outputs = [t for _, _, t in scope.bns.get(level, [])] + [t for args, _ in calls for t in args]
    self._model = keras.Model(scope.graph._inputs_struct, outputs)  # pylint: disable=protected-access

  def __call__(self, x) -> List[Tuple[Any, str, Any]]:
    outputs = self._model(x, training=False)
    if not isinstance(outputs, (list, tuple)):
      outputs = [outputs]
    outputs = list(outputs)
    found = [(layer, name, out) for (layer, name), out in zip(self._bns, outputs)]
    position = len(self._bns)
    for count, structure, child in self._children:
      args = outputs[position:position + count]
      position += count
      found.extend(child(keras.tree.pack_sequence_as(structure, args)))
    return found


class _Moments:
  """Pooled mean and biased variance per channel (Chan et al.'s parallel update)."""

  def __init__(self):
    self.count = 0
    self.mean = None
    self._m2 = None

  def update(self, values: np.ndarray, axis: int) -> None:
    values = np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])
    n = values.shape[0]
    mean = values.mean(axis=0)
    m2 = ((values - mean) ** 2).sum(axis=0)
    if self.mean is None:
      self.count, self.mean, self._m2 = n, mean, m2
      return
    total = self.count + n
    delta = mean - self.mean
    self.mean = self.mean + delta * n / total
    self._m2 = self._m2 + m2 + delta ** 2 * self.count * n / total
    self.count = total

  @property
  def variance(self) -> np.ndarray:
    return self._m2 / self.count


def _check_count(name: str, value: Any, allow_none: bool) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive integer{" or None" if allow_none else ""}. '
                     f'Received: {name}={value!r}.')


def _functional_of(model):
  if not isinstance(model, keras.Model):
    raise TypeError('recalibrate_batch_norm needs a Keras functional or Sequential model. '
                    f'Received: {type(model).__name__}.')
  if isinstance(model, keras.Sequential):
    graph = getattr(model, '_functional', None)
    if graph is None:
      raise ValueError(f'Sequential model {model.name!r} is not built: start it with '
                       'keras.Input(shape) or call model.build(input_shape) first.')
    return graph
  if not hasattr(model, '_nodes_by_depth'):
    raise TypeError(f'recalibrate_batch_norm needs a functional or Sequential model; '
                    f'{model.name!r} is a subclassed model ({type(model).__name__}).')
  return model


def _axis(layer, rank: int) -> int:
  axis = layer.axis
  if isinstance(axis, (list, tuple)):
    if len(axis) != 1:
      raise ValueError(f'BatchNormalization {layer.name!r} normalizes over several axes '
                       f'{axis}; only one channel axis is supported.')
    axis = axis[0]
  return axis % rank


def _nested_graph(layer) -> Optional[Any]:
  """The functional graph of a nested functional or built Sequential model, else None."""
  if not isinstance(layer, keras.Model):
    return None
  if isinstance(layer, keras.Sequential):
    return getattr(layer, '_functional', None)
  return layer if hasattr(layer, '_nodes_by_depth') else None


def _inner_bns(layer) -> List[str]:
  return [inner.name for inner in layer._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access
          if isinstance(inner, L.BatchNormalization)]


def _walk(graph, input_depths: Optional[List[int]], prefix: str, seen: Dict[int, int],
          opaque: Dict[str, List[str]]) -> Tuple[_Scope, List[int]]:
  """The BNs of `graph` (and its nested models) by depth, and the depths of its outputs.

  Args:
    graph: a functional graph.
    input_depths: the depth of each of its (flattened) inputs; None for zeros.
    prefix: the path of `graph` in the model ('' at the top, 'backbone/' inside).
    seen: calls per BN so far (id -> count), shared by the whole walk.
    opaque: filled with {layer path: names of its BNs} for subclassed layers
      holding BNs, which cannot be walked.
  """
  inputs = graph.inputs
  depths = input_depths if input_depths is not None else [0] * len(inputs)
  depth: Dict[int, int] = {id(t): d for t, d in zip(inputs, depths)}
  scope = _Scope(graph)
  for key in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in graph._nodes_by_depth[key]:  # pylint: disable=protected-access
      layer = node.operation
      if layer is None or node.is_input:
        continue
      arguments = node.arguments.keras_tensors
      level = max((depth.get(id(t), 0) for t in arguments), default=0)
      output_levels = [level] * len(node.outputs)
      if isinstance(layer, L.BatchNormalization):
        name = prefix + layer.name
        seen[id(layer)] = seen.get(id(layer), 0) + 1
        if seen[id(layer)] > 1:
          raise ValueError(
              f'BatchNormalization {name!r} is called {seen[id(layer)]} times in '
              'the model (directly or through a nested model called more than once); '
              'its statistics would mix several inputs. Give each call its own layer.')
        level += 1
        scope.bns.setdefault(level, []).append((layer, name, arguments[0]))
        output_levels = [level] * len(node.outputs)
      elif isinstance(layer, keras.layers.Layer) and _inner_bns(layer):
        inner = _nested_graph(layer)
        if (inner is None or len(inner.inputs) != len(arguments)
            or len(inner.outputs) != len(node.outputs)):
          opaque[prefix + layer.name] = _inner_bns(layer)
        else:
          child, output_levels = _walk(inner, [depth.get(id(t), 0) for t in arguments],
                                       prefix + layer.name + '/', seen, opaque)
          for child_level in child.levels():
            scope.calls.setdefault(child_level, []).append((list(arguments), child))
      for tensor, tensor_level in zip(node.outputs, output_levels):
        depth[id(tensor)] = tensor_level
  return scope, [depth.get(id(t), 0) for t in graph.outputs]


def _first(batch):
  if isinstance(batch, (tuple, list)):
    return batch[0]
  if isinstance(batch, dict):
    raise ValueError('recalibrate_batch_norm takes batches of model inputs (x) or (x, y) '
                     f'tuples. Received: a dict batch with keys {sorted(batch)}.')
  return batch


def _batches(data, steps, batch_size) -> List[Any]:
  """The first `steps` input batches of `data`, in memory (used once per level)."""
  if isinstance(data, tuple) and data and not isinstance(data[0], tuple):
    data = data[0]
  if isinstance(data, (np.ndarray, tf.Tensor)):
    n = int(data.shape[0])
    total = math.ceil(n / batch_size)
    count = total if steps is None else min(steps, total)
    batches = [data[i * batch_size:(i + 1) * batch_size] for i in range(count)]
  else:
    if isinstance(data, tf.data.Dataset) and steps is None and (
        data.cardinality() == tf.data.INFINITE_CARDINALITY):
      raise ValueError('recalibrate_batch_norm: the dataset is infinite; pass steps.')
    try:
      iterator = iter(data)
    except TypeError as e:
      raise ValueError(
          'recalibrate_batch_norm needs an array of inputs, an (x, y) tuple, a '
          f'tf.data.Dataset or an iterable of batches. Received: {type(data).__name__}.'
      ) from e
    batches = []
    for batch in iterator:
      if steps is not None and len(batches) >= steps:
        break
      batches.append(_first(batch))
  if not batches:
    raise ValueError('recalibrate_batch_norm got no data: pass at least one batch. '
                     f'Received: {type(data).__name__} with no elements.')
  return batches
