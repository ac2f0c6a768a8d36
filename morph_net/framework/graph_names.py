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


def reenter_build_scope(keras_name_scope, build_scope: Optional[str]):
  """Makes a Keras 3 layer name scope re-enter `build_scope` in a v1 graph.

  Keras 3 enters a layer's name scope anew to build and to call it, and a
  `tf.compat.v1` graph uniquifies each entry (`gate`, then `gate_1`, ...),
  which also takes the names of the next default-named layers. TF1 Keras
  built and called a layer in one scope. A layer's `_open_name_scope`
  passes its Keras scope through this function: once built, the scope
  enters `build_scope` absolutely (a trailing '/'), so the ops of the call
  are named `<build scope>/...` next to the variables.

  Args:
    keras_name_scope: what `keras.layers.Layer._open_name_scope` returned
      (the TensorFlow backend's `name_scope`, which holds the TensorFlow
      scope it enters as `_tf_name_scope`).
    build_scope: the full name scope the layer was built in, or None.

  Returns:
    `keras_name_scope`, changed in a v1 graph once `build_scope` is known.
  """
  if (build_scope and in_v1_graph()
      and hasattr(keras_name_scope, '_tf_name_scope')):
    keras_name_scope._tf_name_scope = tf.name_scope(build_scope + '/')
  return keras_name_scope
