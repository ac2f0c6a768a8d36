"""A raw-op model whose concats are on non-channel axes, plus its stub regularizers.

  image ─┬─ conv1 (3 filters, 7x5) ─┐
         └─ conv2 (3 filters, 1x1) ─┴─ concat1 (axis 1) ─ conv3 (4, 1x1) ─ conv4 (4, 3x3)
  concat2 = concat([conv4, conv3], axis 2)   (the output)

Every conv is `<scope>/Conv2D` followed by `<scope>/Relu`; the concats are
`concat1` and `concat2`. A concat on a non-channel axis groups its same-size
inputs, so with stub regularizers per conv (`ALIVE_STUB` / `REG_STUB`) conv1,
conv2 and concat1 share the max / OR of conv1 and conv2, and conv3, conv4 and
concat2 share the max / OR of conv3 and conv4.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from morph_net.testing import op_regularizer_stub

ALIVE_STUB = {
    'conv1': [False, True, True],
    'conv2': [True, False, True],
    'conv3': [False, False, True, True],
    'conv4': [False, True, False, True],
}

REG_STUB = {
    'conv1': [0.1, 0.3, 0.6],
    'conv2': [0.15, 0.25, 0.05],
    'conv3': [0.07, 0.17, 0.57, 0.37],
    'conv4': [0.06, 100.87, 0.17, 1.57],
}


def _conv(inputs, scope, filters, kernel_size, var):
  with tf.name_scope(scope):
    kernel_shape = list(kernel_size) + [inputs.shape[-1], filters]
    initial = np.ones(kernel_shape, np.float32)
    kernel = var(scope + '_weights', initial) if var else tf.constant(initial)
    conv = tf.nn.conv2d(inputs, kernel, 1, 'SAME', name='Conv2D')
    return tf.nn.relu(conv, name='Relu')


def build_model(image: Optional[tf.Tensor] = None,
                var: Optional[Callable] = None) -> tf.Operation:
  """Builds the model in the current graph and returns the `concat2` op.

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
  conv1 = _conv(image, 'conv1', 3, [7, 5], var)
  conv2 = _conv(image, 'conv2', 3, [1, 1], var)
  concat1 = tf.concat([conv1, conv2], 1, name='concat1')
  conv3 = _conv(concat1, 'conv3', 4, [1, 1], var)
  conv4 = _conv(conv3, 'conv4', 4, [3, 3], var)
  return tf.concat([conv4, conv3], 2, name='concat2').op


def _expected(stub, combine) -> Dict[str, np.ndarray]:
  first = combine(np.asarray(stub['conv1']), np.asarray(stub['conv2']))
  second = combine(np.asarray(stub['conv3']), np.asarray(stub['conv4']))
  expected = {}
  for scope, value in (('conv1', first), ('conv2', first),
                       ('conv3', second), ('conv4', second)):
    expected[scope + '/Conv2D'] = value
    expected[scope + '/Relu'] = value
  expected['concat1'] = first
  expected['concat2'] = second
  return expected


def expected_regularization() -> Dict[str, np.ndarray]:
  """Op name → expected regularization vector (element-wise max grouping)."""
  return _expected(REG_STUB, np.maximum)


def expected_alive() -> Dict[str, np.ndarray]:
  """Op name → expected alive vector (element-wise OR grouping)."""
  return _expected(ALIVE_STUB, np.logical_or)
