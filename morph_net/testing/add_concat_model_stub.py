"""A raw-op model with a channel concat and a residual add, plus its stub regularizers.

  image ─┬─ conv1 (7 filters, 7x5) ─┐
         └─ conv2 (5 filters, 1x1) ─┴─ concat (12) ─┬─ conv3 (4, 1x1) ─ conv4 (12, 3x3) ─┐
                                                    └───────────────────────────────── add ─ conv5 (3, 3x3, stride 2)

Every conv is `<scope>/Conv2D` followed by `<scope>/Relu`; the concat op is
`concat` and the add is `add`. `build_model` works in a `tf.compat.v1` graph and,
with a `var` callable, inside `graph_modes.build` / a `tf.function`.

With a source handler that gives each conv the stub regularizer of its scope
(`ALIVE_STUB` / `REG_STUB`), concat(conv1, conv2), conv4, add and concat are
grouped: their regularization is the element-wise max and their alive vector
the element-wise OR of concat(conv1, conv2) and conv4; conv1 gets the first 7
channels and conv2 the last 5; conv3 and conv5 keep their own stubs.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from morph_net.testing import op_regularizer_stub

ALIVE_STUB = {
    'conv1': [False, True, True, False, True, False, True],
    'conv2': [True, False, True, False, False],
    'conv3': [False, False, True, True],
    'conv4': [False, True, False, True, True, False, True, False, False, True, False,
              False],
    'conv5': [False, True, False],
}

REG_STUB = {
    'conv1': [0.1, 0.3, 0.6, 0.2, 0.4, 0.0, 0.8],
    'conv2': [0.15, 0.25, 0.05, 0.55, 0.45],
    'conv3': [0.07, 0.27, 0.17, 0.37],
    'conv4': [0.07, 0.27, 0.17, 0.37, 0.28, 0.32, 0.12, 0.22, 0.19, 0.11, 0.02, 0.06],
    'conv5': [0.24, 0.34, 0.29],
}


def _conv(inputs, scope, filters, kernel_size, var, stride=1):
  with tf.name_scope(scope):
    kernel_shape = list(kernel_size) + [inputs.shape[-1], filters]
    initial = np.ones(kernel_shape, np.float32)
    kernel = var(scope + '_weights', initial) if var else tf.constant(initial)
    conv = tf.nn.conv2d(inputs, kernel, stride, 'SAME', name='Conv2D')
    return tf.nn.relu(conv, name='Relu')


def build_model(image: Optional[tf.Tensor] = None,
                var: Optional[Callable] = None) -> tf.Operation:
  """Builds the model in the current graph and returns conv5's `Relu` op.

  Args:
    image: The input, `[batch, height, width, 3]`. Defaults to
      `op_regularizer_stub.image_stub()`.
    var: Optional `var(name, initial_value)` returning a variable for each
      kernel (as given by `tests/graph_modes.build`); constants otherwise.

  Returns:
    The output op.
  """
  if image is None:
    image = op_regularizer_stub.image_stub()
  conv1 = _conv(image, 'conv1', 7, [7, 5], var)
  conv2 = _conv(image, 'conv2', 5, [1, 1], var)
  concat = tf.concat([conv1, conv2], 3, name='concat')
  conv3 = _conv(concat, 'conv3', 4, [1, 1], var)
  conv4 = _conv(conv3, 'conv4', 12, [3, 3], var)
  add = tf.add(concat, conv4, name='add')
  conv5 = _conv(add, 'conv5', 3, [3, 3], var, stride=2)
  return conv5.op


def _grouped(stub, combine):
  concat = np.concatenate([stub['conv1'], stub['conv2']])
  return combine(concat, np.asarray(stub['conv4']))


def _expected(stub, combine) -> Dict[str, np.ndarray]:
  grouped = _grouped(stub, combine)
  per_scope = {
      'conv1': grouped[:7],
      'conv2': grouped[7:],
      'conv3': np.asarray(stub['conv3']),
      'conv4': grouped,
      'conv5': np.asarray(stub['conv5']),
  }
  expected = {}
  for scope, value in per_scope.items():
    expected[scope + '/Conv2D'] = value
    expected[scope + '/Relu'] = value
  expected['concat'] = grouped
  expected['add'] = grouped
  return expected


def expected_regularization() -> Dict[str, np.ndarray]:
  """Op name → expected regularization vector (element-wise max grouping)."""
  return _expected(REG_STUB, np.maximum)


def expected_alive() -> Dict[str, np.ndarray]:
  """Op name → expected alive vector (element-wise OR grouping)."""
  return _expected(ALIVE_STUB, np.logical_or)
