"""A raw-op model whose concats are on non-channel axes, plus its stub regularizers.

  image ─┬─ conv1 (3 filters, 7x5) ─┐
         └─ conv2 (3 filters, 1x1) ─┴─ concat1 (axis 1) ─ conv3 (4, 1x1) ─ conv4 (4, 3x3)
  concat2 = concat([conv4, conv3], axis 2)   (the output)

Every conv is `<scope>/Conv2D` ... `<scope>/Relu` (see `stub_layers`: tf-slim's
`conv2d` where tf_slim is installed); the concats are `concat1` and
`concat2`. A concat on a non-channel axis groups its same-size inputs, so with
stub regularizers per conv (`ALIVE_STUB` / `REG_STUB`, or `MOCK_REG_DICT`)
conv1, conv2 and concat1 share the max / OR of conv1 and conv2, and conv3,
conv4 and concat2 share the max / OR of conv3 and conv4. The `expected_*`
dicts are keyed by scope (`'conv1'`, ...) and by `'concat1'`, `'concat2'`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from morph_net.testing import op_regularizer_stub
from morph_net.testing import stub_layers

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


def _create_stub(key: str) -> op_regularizer_stub.OpRegularizerStub:
  return op_regularizer_stub.OpRegularizerStub(REG_STUB[key], ALIVE_STUB[key])


# Scope -> stub regularizer of that conv.
MOCK_REG_DICT = {key: _create_stub(key) for key in REG_STUB}


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
  conv1 = stub_layers.conv2d(image, 'conv1', 3, [7, 5], var)
  conv2 = stub_layers.conv2d(image, 'conv2', 3, [1, 1], var)
  concat1 = tf.concat([conv1, conv2], 1, name='concat1')
  conv3 = stub_layers.conv2d(concat1, 'conv3', 4, [1, 1], var)
  conv4 = stub_layers.conv2d(conv3, 'conv4', 4, [3, 3], var)
  return tf.concat([conv4, conv3], 2, name='concat2').op


def _expected(stub, combine) -> Dict[str, np.ndarray]:
  first = combine(np.asarray(stub['conv1']), np.asarray(stub['conv2']))
  second = combine(np.asarray(stub['conv3']), np.asarray(stub['conv4']))
  return {'conv1': first, 'conv2': first, 'conv3': second, 'conv4': second,
          'concat1': first, 'concat2': second}


def expected_regularization() -> Dict[str, np.ndarray]:
  """Scope (or concat op name) → expected regularization vector (max grouping)."""
  return _expected(REG_STUB, np.maximum)


def expected_alive() -> Dict[str, np.ndarray]:
  """Scope (or concat op name) → expected alive vector (OR grouping)."""
  return _expected(ALIVE_STUB, np.logical_or)
