"""A raw-op model with a channel concat and a residual add, plus its stub regularizers.

  image ─┬─ conv1 (7 filters, 7x5) ─┐
         └─ conv2 (5 filters, 1x1) ─┴─ concat (12) ─┬─ conv3 (4, 1x1) ─ conv4 (12, 3x3) ─┐
                                                    └───────────────────────────────── add ─ conv5 (3, 3x3, stride 2)

Every conv is `<scope>/Conv2D` ... `<scope>/Relu` (see `stub_layers`: tf-slim's
`conv2d` where tf_slim is installed, so `arg_scope([tf_slim.conv2d], ...)`
reaches it); the concat op is `concat` and the add is `add`. `build_model`
works in a `tf.compat.v1` graph and, with a `var` callable, inside
`graph_modes.build` / a `tf.function`.

With a source handler that gives each conv the stub regularizer of its scope
(`ALIVE_STUB` / `REG_STUB`, or the stubs of `MOCK_REG_DICT`), concat(conv1,
conv2), conv4, add and concat are grouped: their regularization is the
element-wise max and their alive vector the element-wise OR of
concat(conv1, conv2) and conv4; conv1 gets the first 7 channels and conv2 the
last 5; conv3 and conv5 keep their own stubs. `expected_regularization()` and
`expected_alive()` are keyed by scope (`'conv1'`, ...) and by `'concat'` and
`'add'`, as the original's.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from morph_net.testing import op_regularizer_stub
from morph_net.testing import stub_layers

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


def _create_stub(key: str) -> op_regularizer_stub.OpRegularizerStub:
  return op_regularizer_stub.OpRegularizerStub(REG_STUB[key], ALIVE_STUB[key])


# Scope -> stub regularizer of that conv.
MOCK_REG_DICT = {key: _create_stub(key) for key in REG_STUB}


def image_stub() -> tf.Tensor:
  """The model's default input: `op_regularizer_stub.image_stub()`."""
  return op_regularizer_stub.image_stub()


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
    image = image_stub()
  conv1 = stub_layers.conv2d(image, 'conv1', 7, [7, 5], var)
  conv2 = stub_layers.conv2d(image, 'conv2', 5, [1, 1], var)
  concat = tf.concat([conv1, conv2], 3, name='concat')
  conv3 = stub_layers.conv2d(concat, 'conv3', 4, [1, 1], var)
  conv4 = stub_layers.conv2d(conv3, 'conv4', 12, [3, 3], var)
  add = tf.add(concat, conv4, name='add')
  conv5 = stub_layers.conv2d(add, 'conv5', 3, [3, 3], var, stride=2)
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
  per_scope['concat'] = grouped
  per_scope['add'] = grouped
  return per_scope


def expected_regularization() -> Dict[str, np.ndarray]:
  """Scope (or op name for `concat`, `add`) → expected regularization vector.

  The vectors of `<scope>/Conv2D` and `<scope>/Relu` (element-wise max
  grouping).
  """
  return _expected(REG_STUB, np.maximum)


def expected_alive() -> Dict[str, np.ndarray]:
  """Scope (or op name for `concat`, `add`) → expected alive vector (OR)."""
  return _expected(ALIVE_STUB, np.logical_or)
