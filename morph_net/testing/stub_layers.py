"""The convolutions the model stubs are built from.

The original stubs called contrib's `layers.conv2d`, so the tests that use
them set batch norm, initializers, ... with `arg_scope([layers.conv2d], ...)`.
Here, where tf_slim is installed (`pip install morph_net[slim]`) and no
`var` callable is given, a stub convolution is `tf_slim.conv2d` (ops
`<scope>/Conv2D`, `<scope>/BiasAdd` or the normalizer's, `<scope>/Relu`),
so such an `arg_scope([tf_slim.conv2d], ...)` reaches it. Otherwise it is a raw
`tf.nn.conv2d` on an all-ones kernel followed by `<scope>/Relu`, with the
kernel from `var(name, initial_value)` when given (for
`tests/graph_modes.build` and tf.function traces).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

try:
  import tf_slim as slim
except ImportError:
  slim = None


def conv2d(inputs: tf.Tensor, scope: str, filters: int, kernel_size: Sequence[int],
           var: Optional[Callable] = None, stride: int = 1) -> tf.Tensor:
  """A SAME-padded convolution + ReLU under `scope` (see the module docstring).

  Args:
    inputs: NHWC input.
    scope: the scope of the ops, e.g. `'conv1'`.
    filters: number of output channels.
    kernel_size: `[kh, kw]`.
    var: optional `var(name, initial_value)` returning a variable.
    stride: the stride (both spatial axes).

  Returns:
    The output of the ReLU, `<scope>/Relu`.
  """
  if slim is not None and var is None:
    return slim.conv2d(inputs, filters, list(kernel_size), stride=stride,
                       padding='SAME', scope=scope)
  with tf.name_scope(scope):
    kernel_shape = list(kernel_size) + [int(inputs.shape[-1]), filters]
    initial = np.ones(kernel_shape, np.float32)
    kernel = var(scope + '_weights', initial) if var else tf.constant(initial)
    conv = tf.nn.conv2d(inputs, kernel, stride, 'SAME', name='Conv2D')
    return tf.nn.relu(conv, name='Relu')


def conv2d_transpose(inputs: tf.Tensor, scope: str, filters: int,
                     kernel_size: Sequence[int], stride: int,
                     var: Optional[Callable] = None) -> tf.Tensor:
  """A SAME-padded transposed convolution + ReLU (`<scope>/conv2d_transpose`).

  The spatial size is multiplied by `stride`. Raw ops in every case (the op
  is a `Conv2DBackpropInput`).
  """
  with tf.name_scope(scope):
    channels = int(inputs.shape[-1])
    initial = np.ones(list(kernel_size) + [filters, channels], np.float32)
    kernel = var(scope + '_weights', initial) if var else tf.constant(initial)
    batch, height, width = (int(d) for d in inputs.shape[:3])
    output_shape = [batch, height * stride, width * stride, filters]
    conv = tf.nn.conv2d_transpose(inputs, kernel, output_shape, stride, 'SAME',
                                  name='conv2d_transpose')
    return tf.nn.relu(conv, name='Relu')
