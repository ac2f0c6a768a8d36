"""Keras models built through module-level references, for configurable_ops tests.

The same small models are built through `layers.X`, `keras.layers.X` and this
module's own aliases, so that tests can hijack each reference with
`configurable_ops.hijack_keras_module` and check which one a model uses.
Every builder reads these references at call time, so a hijack made after
import takes effect: `build_model_with_all_configurable_types` uses this
module's aliases, `build_two_branch_model` uses `layers` (it also needs the
`Add` and `Concatenate` wrappers, which this module has no alias for).
Configurable layers take their Keras arguments by keyword only, hence the
keyword style below.
"""

from __future__ import annotations

from typing import Any, Tuple

import keras
from keras import layers

Conv2D = keras.layers.Conv2D
# As in the original test module: an alias of the Keras Conv2D class.
SeparableConv2D = keras.layers.Conv2D
Dense = keras.layers.Dense
BatchNormalization = keras.layers.BatchNormalization
Activation = keras.layers.Activation


def build_simple_keras_model(inputs: Any) -> Any:
  """conv 'conv' (10 filters, 3x3) -> BN 'bn' -> ReLU 'activation', via `layers`."""
  net = layers.Conv2D(filters=10, kernel_size=3, name='conv')(inputs)
  net = layers.BatchNormalization(name='bn')(net)
  return layers.Activation('relu', name='activation')(net)


def build_simple_keras_model_from_keras_lib(inputs: Any) -> Any:
  """The simple model via `keras.layers`."""
  net = keras.layers.Conv2D(filters=10, kernel_size=3, name='conv')(inputs)
  net = keras.layers.BatchNormalization(name='bn')(net)
  return keras.layers.Activation('relu', name='activation')(net)


def build_simple_keras_model_from_local_aliases(inputs: Any) -> Any:
  """The simple model via this module's aliases."""
  net = Conv2D(filters=10, kernel_size=3, name='conv')(inputs)
  net = BatchNormalization(name='bn')(net)
  return Activation('relu', name='activation')(net)


def build_model_with_all_configurable_types(inputs: Any) -> Any:
  """conv 'conv' 10 -> BN -> ReLU -> 'sep_conv' 10 (3x3) -> sum over H, W -> 'dense' 10.

  Built through this module's aliases (looked up at call time), as the
  original: hijack this module (`hijack_keras_module(..., test_module)`) to
  configure it. Unhijacked, 'sep_conv' is a Conv2D (the `SeparableConv2D`
  alias is one, as in the original); hijacked, a ConfigurableSeparableConv2D.
  """
  net = Conv2D(filters=10, kernel_size=3, name='conv')(inputs)
  net = BatchNormalization(name='bn')(net)
  net = Activation('relu', name='activation')(net)
  net = SeparableConv2D(filters=10, kernel_size=3, name='sep_conv')(net)
  net = keras.ops.sum(net, axis=[1, 2])
  return Dense(units=10, name='dense')(net)


def _branch(inputs: Any, name: str) -> Any:
  net = layers.Conv2D(filters=10, kernel_size=3, name=name)(inputs)
  net = layers.BatchNormalization(name=f'{name}_bn')(net)
  return layers.Activation('relu', name=f'{name}_activation')(net)


def build_two_branch_model(inputs: Any) -> Tuple[Any, Any, Any]:
  """Branches 'conv1' and 'conv2' (conv 10, 3x3 -> BN -> ReLU), then Add and Concatenate.

  Returns:
    `(concat, branch1, branch2)` with `concat = Concatenate([add, branch1, branch2])`.
  """
  branch1 = _branch(inputs, 'conv1')
  branch2 = _branch(inputs, 'conv2')
  add = layers.Add(name='add')([branch1, branch2])
  concat = layers.Concatenate(name='concat')([add, branch1, branch2])
  return concat, branch1, branch2
