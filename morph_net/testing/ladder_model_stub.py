"""A ladder of residual adds with a x2 upscale, plus its stub regularizers.

  image ─ conv1 ─┬─ conv2 ─ add1 ─┬─ conv3 ─ add2 ─ upscale ─┬─ conv4 ─ add3 (output)
                 └────────┘       └─────────┘                └─────────┘

conv1..conv4 have 3 filters, 3x3, SAME (`stub_layers.conv2d`: `<scope>/Conv2D`
... `<scope>/Relu`); `upscale` is a 3-filter 3x3 transposed convolution with
stride 2 (`upscale/conv2d_transpose`, then `upscale/Relu`); the adds are ops
`add1`, `add2`, `add3`. The residual adds group conv1, conv2, add1, conv3 and
add2, and upscale, conv4 and add3. Every stub is `[False, True, True]` /
`[0.1, 0.3, 0.6]` (as in the original, which no test used), so every grouped
vector (max / OR of equal stubs) is that stub again.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from morph_net.testing import op_regularizer_stub
from morph_net.testing import stub_layers

_SCOPES = ('conv1', 'conv2', 'conv3', 'upscale', 'conv4')

ALIVE_STUB = {scope: [False, True, True] for scope in _SCOPES}
REG_STUB = {scope: [0.1, 0.3, 0.6] for scope in _SCOPES}

# Scope -> stub regularizer.
MOCK_REG_DICT = {
    scope: op_regularizer_stub.OpRegularizerStub(REG_STUB[scope], ALIVE_STUB[scope])
    for scope in _SCOPES}


def image_stub() -> tf.Tensor:
  """The model's default input: `op_regularizer_stub.image_stub()`."""
  return op_regularizer_stub.image_stub()


def build_model(image: Optional[tf.Tensor] = None,
                var: Optional[Callable] = None) -> tf.Operation:
  """Builds the ladder in the current graph and returns the `add3` op.

  Args:
    image: The input, `[batch, height, width, 3]` with a static shape.
      Defaults to `image_stub()`.
    var: Optional `var(name, initial_value)` returning a variable for each
      kernel; constants (or tf-slim's variables) otherwise.

  Returns:
    The output op.
  """
  if image is None:
    image = image_stub()
  conv1 = stub_layers.conv2d(image, 'conv1', 3, [3, 3], var)
  conv2 = stub_layers.conv2d(conv1, 'conv2', 3, [3, 3], var)
  add1 = tf.add(conv1, conv2, name='add1')
  conv3 = stub_layers.conv2d(add1, 'conv3', 3, [3, 3], var)
  add2 = tf.add(add1, conv3, name='add2')
  upscale = stub_layers.conv2d_transpose(add2, 'upscale', 3, [3, 3], 2, var)
  conv4 = stub_layers.conv2d(upscale, 'conv4', 3, [3, 3], var)
  return tf.add(upscale, conv4, name='add3').op


def _expected(stub) -> Dict[str, np.ndarray]:
  value = np.asarray(stub['conv1'])
  return {name: value for name in _SCOPES + ('add1', 'add2', 'add3')}


def expected_regularization() -> Dict[str, np.ndarray]:
  """Scope (or add op name) → expected regularization vector."""
  return _expected(REG_STUB)


def expected_alive() -> Dict[str, np.ndarray]:
  """Scope (or add op name) → expected alive vector."""
  return _expected(ALIVE_STUB)
