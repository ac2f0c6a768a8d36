"""Re-estimates the moving statistics of a model's BatchNormalization layers.

After a shrink (channels removed, constants folded) or any change of the
weights, the moving mean and variance of a BatchNormalization no longer
describe its input. MorphNet's MobileNet protocol re-estimates them on
training data before evaluating or fine-tuning. `recalibrate_batch_norm` does
it exactly, in inference mode:

  * the BN layers are grouped by depth (the number of BNs on the longest path
    from the input up to and including them): a BN's input depends only on
    BNs of smaller depth;
  * depth by depth, the model runs in inference mode on the same `steps`
    batches (kept in memory) and the mean and the (biased, as Keras uses)
    variance of every BN input of that depth are pooled over every batch,
    position and example (float64, Chan's parallel update), then written to
    `moving_mean` / `moving_variance`.

So each BN ends with the statistics of its input in the recalibrated model
itself, as if the moving averages had converged on that data. Cost: one
partial forward pass over the batches per depth level.

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
    model: a functional or Sequential Keras model.
    data: inputs to estimate the statistics on: a NumPy array or tensor of
      inputs (split into batches of `batch_size`), a tuple `(x, y[, w])` of
      them (only `x` is used), a `tf.data.Dataset` or any iterable of batches
      (each batch `x` or a tuple `(x, y, ...)`).
    steps: number of batches to use. Defaults to all of `data` (which must
      then be finite).
    batch_size: batch size for array data. Defaults to 32.

  Returns:
    `{BN layer name: values pooled per channel}` (examples x positions).

  Raises:
    TypeError: `model` is not a functional/Sequential Keras model.
    ValueError: a bad `steps` / `batch_size`, no data, or a BN layer called
      more than once (its input is ambiguous).
  """
  _check_count('steps', steps, allow_none=True)
  _check_count('batch_size', batch_size, allow_none=False)
  graph = _functional_of(model)
  levels = _bn_levels(graph)
  nested = [layer.name for layer in graph.layers if isinstance(layer, keras.Model)
            and any(isinstance(inner, L.BatchNormalization)
                    for inner in layer._flatten_layers(include_self=False, recursive=True))]  # pylint: disable=protected-access
  if nested:
    logging.warning('recalibrate_batch_norm: BatchNormalization layers inside nested '
                    'model(s) %s are not recalibrated (only top-level layers are).', nested)
  if not levels:
    return {}
  batches = _batches(data, steps, batch_size)
  counts: Dict[str, int] = {}
  for level in sorted(levels):
    layers = [layer for layer, _ in levels[level]]
    probe = keras.Model(graph._inputs_struct, [t for _, t in levels[level]])  # pylint: disable=protected-access
    stats = [_Moments() for _ in layers]
    for x in batches:
      outputs = probe(x, training=False)
      if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
      for layer, output, moments in zip(layers, outputs, stats):
        moments.update(np.asarray(output, np.float64), _axis(layer, len(output.shape)))
    for layer, moments in zip(layers, stats):
      layer.moving_mean.assign(moments.mean.astype(layer.moving_mean.dtype))
      layer.moving_variance.assign(moments.variance.astype(layer.moving_variance.dtype))
      counts[layer.name] = moments.count
  return counts


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


def _bn_levels(graph) -> Dict[int, List[Tuple[Any, Any]]]:
  """(BN layer, its input tensor) grouped by BN depth (see the module doc)."""
  depth: Dict[int, int] = {id(t): 0 for t in graph.inputs}
  levels: Dict[int, List[Tuple[Any, Any]]] = {}
  seen: Dict[int, int] = {}
  for key in sorted(graph._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in graph._nodes_by_depth[key]:  # pylint: disable=protected-access
      layer = node.operation
      if layer is None or node.is_input:
        continue
      inputs = node.arguments.keras_tensors
      level = max((depth.get(id(t), 0) for t in inputs), default=0)
      if isinstance(layer, L.BatchNormalization):
        seen[id(layer)] = seen.get(id(layer), 0) + 1
        if seen[id(layer)] > 1:
          raise ValueError(
              f'BatchNormalization {layer.name!r} is called {seen[id(layer)]} times in '
              'the model; its statistics would mix several inputs. Give each call its '
              'own layer.')
        level += 1
        levels.setdefault(level, []).append((layer, inputs[0]))
      for tensor in node.outputs:
        depth[id(tensor)] = level
  return levels


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
