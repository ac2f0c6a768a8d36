"""Small Keras models embedded in the package, used by the CLI and the demo."""

from __future__ import annotations

from typing import Sequence

import keras

L = keras.layers


def _conv_bn_relu(x, filters: int, kernel_size: int, name: str, strides: int = 1):
  x = L.Conv2D(filters, kernel_size, strides=strides, padding='same', use_bias=False,
               name=f'{name}_conv')(x)
  x = L.BatchNormalization(name=f'{name}_bn')(x)
  return L.ReLU(name=f'{name}_relu')(x)


def small_cnn(input_shape: Sequence[int] = (32, 32, 3), num_classes: int = 10,
              width: int = 32, name: str = 'small_cnn') -> keras.Model:
  """A small CNN with the structures MorphNet must handle.

  stem conv -> residual block (two convs + skip add) -> strided conv ->
  inception-style block (1x1 and 3x3 branches concatenated) -> global average
  pooling -> dense classifier. Every convolution is followed by a
  BatchNormalization with a gamma, so Gamma regularizers apply everywhere.

  Args:
    input_shape: image shape (H, W, C).
    num_classes: classifier outputs.
    width: base number of filters; layers use width, 2*width and width.
    name: model name.
  """
  inputs = keras.Input(tuple(input_shape), name='image')
  x = _conv_bn_relu(inputs, width, 3, 'stem')
  y = _conv_bn_relu(x, width, 3, 'res_a')
  y = L.Conv2D(width, 3, padding='same', use_bias=False, name='res_b_conv')(y)
  y = L.BatchNormalization(name='res_b_bn')(y)
  x = L.ReLU(name='res_relu')(L.Add(name='res_add')([x, y]))
  x = _conv_bn_relu(x, 2 * width, 3, 'down', strides=2)
  b1 = _conv_bn_relu(x, width, 1, 'mix_1x1')
  b2 = _conv_bn_relu(x, width, 3, 'mix_3x3')
  x = L.Concatenate(name='mix_concat')([b1, b2])
  x = _conv_bn_relu(x, 2 * width, 3, 'head', strides=2)
  x = L.GlobalAveragePooling2D(name='pool')(x)
  outputs = L.Dense(num_classes, name='logits')(x)
  return keras.Model(inputs, outputs, name=name)
