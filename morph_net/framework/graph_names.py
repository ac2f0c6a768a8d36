"""Default layer names counted per `tf.compat.v1` graph, as TF1 Keras did.

Keras 3 numbers default layer names with one process-wide counter, so after
`tf.compat.v1.reset_default_graph()` a layer is `logistic_sigmoid_gating_1`
where the original (TF1 Keras, whose counters were kept per graph) named it
`logistic_sigmoid_gating`, and op names in graph-mode scripts and tests
depend on it. Layers of this package ask `default_layer_name` for their name
when none is given: in a `tf.compat.v1` graph it counts per graph; eagerly and
inside a `tf.function` it returns None (Keras 3's own naming applies).
"""

from __future__ import annotations

import collections
import re
import weakref
from typing import Optional

import tensorflow as tf

# graph -> Counter(base name -> number of default names handed out).
_counts = weakref.WeakKeyDictionary()


def to_snake_case(name: str) -> str:
  """`'ConfigurableConv2D'` -> `'configurable_conv2d'` (Keras' rule)."""
  name = re.sub(r'\W+', '', name)
  name = re.sub('(.)([A-Z][a-z]+)', r'\1_\2', name)
  name = re.sub('([a-z])([A-Z])', r'\1_\2', name)
  return name.lower()


def in_v1_graph() -> bool:
  """True when building a `tf.compat.v1` graph (not eager, not a tf.function)."""
  if tf.executing_eagerly():
    return False
  return not getattr(tf.compat.v1.get_default_graph(), 'building_function', False)


def default_layer_name(base: str) -> Optional[str]:
  """A default layer name unique in the current `tf.compat.v1` graph.

  The first request for `base` in a graph gets `base`, the next ones
  `base_1`, `base_2`, ... (TF1 Keras' `backend.get_uid`, which was per graph).

  Args:
    base: the snake-case class name, e.g. `'configurable_conv2d'`.

  Returns:
    The name, or None outside a `tf.compat.v1` graph.
  """
  if not in_v1_graph():
    return None
  graph = tf.compat.v1.get_default_graph()
  counts = _counts.setdefault(graph, collections.Counter())
  count = counts[base]
  counts[base] += 1
  return base if count == 0 else f'{base}_{count}'
