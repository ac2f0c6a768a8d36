"""Rebuilds a network with the channel counts learned by MorphNet.

The learned structure is a **parameterization**: a dict `op name -> number of
outputs`, exactly the JSON object written by `StructureExporter`, e.g.
`{"conv1/Conv2D": 13, "fc/MatMul": 40}`. Two front ends read it:

* Graph-mode (`tf.compat.v1`) code calls its layer functions through a
  `ConfigurableOps` object (or replaces the functions of a module with
  `hijack_module_functions`). Each call computes the name of the op it is about
  to create (current name scope + `scope`/`name` + a suffix such as `Conv2D`)
  and takes its number of outputs from the parameterization. The module ships
  small layer functions on raw TF ops that name their ops as tf-slim did
  (`conv2d`, `fully_connected`, `separable_conv2d`, `batch_norm`, the pools),
  and `tf.compat.v1.layers`-style ones (`layers_conv2d`, `layers_dense`,
  `layers_separable_conv2d`): `tf.compat.v1.layers` itself is unavailable
  with Keras 3. Any user function with the same calling convention works too.
* Keras 3 code builds `ConfigurableConv2D`, `ConfigurableSeparableConv2D` and
  `ConfigurableDense` layers (or replaces the layer classes of a module with
  `hijack_keras_module`). Besides op-name keys, a layer accepts its plain
  layer name as key, the format of
  `morph_net.keras_integration.layer_structure`.

An op configured with 0 outputs is not built: it returns `VANISHED`, and so
does every configurable op (and pass-through wrapper) that receives a vanished
input; `concat`/`add_n` drop vanished members. Only downstream ops vanish.

See docs/configurable_ops.md for the naming rules and examples.
"""

from __future__ import annotations

import collections
import copy
import enum
import functools
import json
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf
from absl import logging

from morph_net.framework import graph_names
from morph_net.tools import structure_exporter

try:  # Optional (`pip install morph_net[slim]`): arg_scope and slim layers.
  import tf_slim as slim
except ImportError:
  slim = None

VANISHED = 0.0
_DEFAULT_NUM_OUTPUTS_KWARG = 'num_outputs'

_ZEROS = tf.compat.v1.zeros_initializer()
_ONES = tf.compat.v1.ones_initializer()


# ----------------------------------------------------------------------------
# Layer functions on raw TF ops (tf-slim and tf.compat.v1.layers naming).
# ----------------------------------------------------------------------------


def _add_arg_scope(function: Callable) -> Callable:
  """`tf_slim.add_arg_scope(function)` where tf_slim is installed, else `function`.

  As the original's contrib-decorated layer methods: `arg_scope([fn], ...)`
  then supplies default keyword arguments to `fn`.
  """
  return slim.add_arg_scope(function) if slim is not None else function


def _pair(value: Union[int, Sequence[int]], name: str) -> List[int]:
  """`3` -> `[3, 3]`; `(3, 5)` -> `[3, 5]`."""
  if isinstance(value, numbers.Integral):
    return [int(value), int(value)]
  values = list(value)
  if len(values) != 2 or not all(isinstance(v, numbers.Integral) for v in values):
    raise ValueError(
        f'`{name}` must be an int or a pair of ints. Received: {name}={value!r}.')
  return [int(v) for v in values]


def _channels(inputs: tf.Tensor, function_name: str) -> int:
  # dimension_value: an int or None also for v1 shapes (`Dimension` objects).
  channels = tf.compat.dimension_value(inputs.shape[-1])
  if channels is None:
    raise ValueError(
        f'{function_name} needs the last (channel) dimension of its input to be '
        f'known. Received: inputs with shape {inputs.shape}.')
  return int(channels)


def _variable(name: str, shape: Sequence[int], initializer: Any,
              trainable: bool = True) -> tf.Variable:
  return tf.compat.v1.get_variable(
      name, shape=list(shape), dtype=tf.float32, initializer=initializer,
      trainable=trainable, use_resource=True)


def _finish(outputs: tf.Tensor, num_channels: int, *, activation_fn, normalizer_fn,
            normalizer_params, biases_initializer, biases_name: str,
            trainable: bool) -> tf.Tensor:
  """Bias (or normalizer), then activation, as slim layers do."""
  if normalizer_fn is not None:
    outputs = normalizer_fn(outputs, **(normalizer_params or {}))
  elif biases_initializer is not None:
    biases = _variable(biases_name, [num_channels], biases_initializer, trainable)
    outputs = tf.nn.bias_add(outputs, biases)
  if activation_fn is not None:
    outputs = activation_fn(outputs)
  return outputs


def _convolution(inputs, num_outputs, kernel_size, stride, padding, rate,
                 weights_name, weights_initializer, trainable, function_name):
  kernel_h, kernel_w = _pair(kernel_size, 'kernel_size')
  stride_h, stride_w = _pair(stride, 'stride')
  rate_h, rate_w = _pair(rate, 'rate')
  weights = _variable(
      weights_name,
      [kernel_h, kernel_w, _channels(inputs, function_name), num_outputs],
      weights_initializer, trainable)
  return tf.nn.conv2d(inputs, weights, [1, stride_h, stride_w, 1],
                      padding.upper(), dilations=[1, rate_h, rate_w, 1])


def _separable(inputs, num_outputs, kernel_size, depth_multiplier, stride,
               padding, rate, depthwise_name, pointwise_name,
               depthwise_initializer, pointwise_initializer, trainable,
               function_name):
  """Depthwise (+ pointwise unless `num_outputs` is None) convolution."""
  kernel_h, kernel_w = _pair(kernel_size, 'kernel_size')
  stride_h, stride_w = _pair(stride, 'stride')
  rate_h, rate_w = _pair(rate, 'rate')
  channels = _channels(inputs, function_name)
  depthwise = _variable(depthwise_name, [kernel_h, kernel_w, channels, depth_multiplier],
                        depthwise_initializer, trainable)
  strides = [1, stride_h, stride_w, 1]
  if num_outputs is None:
    return tf.nn.depthwise_conv2d(inputs, depthwise, strides, padding.upper(),
                                  dilations=[rate_h, rate_w]), channels * depth_multiplier
  pointwise = _variable(pointwise_name, [1, 1, channels * depth_multiplier, num_outputs],
                        pointwise_initializer, trainable)
  outputs = tf.nn.separable_conv2d(inputs, depthwise, pointwise, strides,
                                   padding.upper(), dilations=[rate_h, rate_w])
  return outputs, num_outputs


def conv2d(inputs: tf.Tensor, num_outputs: int, kernel_size: Union[int, Sequence[int]],
           stride: Union[int, Sequence[int]] = 1, padding: str = 'SAME',
           rate: Union[int, Sequence[int]] = 1,
           activation_fn: Optional[Callable] = tf.nn.relu,
           normalizer_fn: Optional[Callable] = None,
           normalizer_params: Optional[Dict[str, Any]] = None,
           weights_initializer: Any = None, biases_initializer: Any = _ZEROS,
           reuse: Optional[bool] = None, trainable: bool = True,
           scope: Optional[str] = None) -> tf.Tensor:
  """A 2-D convolution named as tf-slim's: op `<scope>/Conv2D`.

  Creates `<scope>/weights` (`[kh, kw, C_in, num_outputs]`, Glorot-uniform by
  default) and, without a normalizer, `<scope>/biases`. The default scope is
  `'Conv'` (uniquified by `tf.compat.v1.variable_scope`). Meant for
  `tf.compat.v1` graphs; eagerly it creates new variables on every call.

  Args:
    inputs: NHWC input tensor with a known channel dimension.
    num_outputs: number of output channels.
    kernel_size: int or `[kh, kw]`.
    stride: int or `[sh, sw]`.
    padding: `'SAME'` or `'VALID'`.
    rate: dilation rate, int or pair.
    activation_fn: applied last; defaults to `tf.nn.relu` as in slim. None for
      a linear output.
    normalizer_fn: e.g. `batch_norm`; replaces the biases.
    normalizer_params: keyword arguments for `normalizer_fn`.
    weights_initializer: initializer of the weights (Glorot-uniform if None).
    biases_initializer: initializer of the biases; None for no biases.
    reuse: passed to `tf.compat.v1.variable_scope`.
    trainable: whether the variables are trainable.
    scope: variable and name scope.

  Returns:
    The output tensor.
  """
  with tf.compat.v1.variable_scope(scope, 'Conv', [inputs], reuse=reuse):
    outputs = _convolution(inputs, num_outputs, kernel_size, stride, padding, rate,
                           'weights', weights_initializer, trainable, 'conv2d')
    return _finish(outputs, num_outputs, activation_fn=activation_fn,
                   normalizer_fn=normalizer_fn, normalizer_params=normalizer_params,
                   biases_initializer=biases_initializer, biases_name='biases',
                   trainable=trainable)


def fully_connected(inputs: tf.Tensor, num_outputs: int,
                    activation_fn: Optional[Callable] = tf.nn.relu,
                    normalizer_fn: Optional[Callable] = None,
                    normalizer_params: Optional[Dict[str, Any]] = None,
                    weights_initializer: Any = None, biases_initializer: Any = _ZEROS,
                    reuse: Optional[bool] = None, trainable: bool = True,
                    scope: Optional[str] = None) -> tf.Tensor:
  """A dense layer on a rank-2 input named as tf-slim's: op `<scope>/MatMul`.

  Creates `<scope>/weights` (`[C_in, num_outputs]`) and, without a normalizer,
  `<scope>/biases`. Default scope `'fully_connected'`. Arguments as `conv2d`.

  Raises:
    ValueError: the input is not of rank 2.
  """
  if inputs.shape.rank != 2:
    raise ValueError(
        'fully_connected expects a rank-2 input [batch, features]; flatten or '
        f'pool it first. Received: inputs with shape {inputs.shape}.')
  with tf.compat.v1.variable_scope(scope, 'fully_connected', [inputs], reuse=reuse):
    weights = _variable('weights', [_channels(inputs, 'fully_connected'), num_outputs],
                        weights_initializer, trainable)
    outputs = tf.matmul(inputs, weights)
    return _finish(outputs, num_outputs, activation_fn=activation_fn,
                   normalizer_fn=normalizer_fn, normalizer_params=normalizer_params,
                   biases_initializer=biases_initializer, biases_name='biases',
                   trainable=trainable)


def separable_conv2d(inputs: tf.Tensor, num_outputs: Optional[int],
                     kernel_size: Union[int, Sequence[int]], depth_multiplier: int = 1,
                     stride: Union[int, Sequence[int]] = 1, padding: str = 'SAME',
                     rate: Union[int, Sequence[int]] = 1,
                     activation_fn: Optional[Callable] = tf.nn.relu,
                     normalizer_fn: Optional[Callable] = None,
                     normalizer_params: Optional[Dict[str, Any]] = None,
                     weights_initializer: Any = None, pointwise_initializer: Any = None,
                     biases_initializer: Any = _ZEROS, reuse: Optional[bool] = None,
                     trainable: bool = True, scope: Optional[str] = None) -> tf.Tensor:
  """A separable convolution named as tf-slim's.

  With `num_outputs` the ops are `<scope>/separable_conv2d/depthwise`
  (`DepthwiseConv2dNative`) and `<scope>/separable_conv2d` (the pointwise
  `Conv2D`); with `num_outputs=None` only the depthwise op `<scope>/depthwise`
  is built. Variables `depthwise_weights`, `pointwise_weights`, `biases`.
  Default scope `'SeparableConv2d'`. Other arguments as `conv2d`.
  """
  with tf.compat.v1.variable_scope(scope, 'SeparableConv2d', [inputs], reuse=reuse):
    outputs, channels = _separable(
        inputs, num_outputs, kernel_size, depth_multiplier, stride, padding, rate,
        'depthwise_weights', 'pointwise_weights', weights_initializer,
        pointwise_initializer, trainable, 'separable_conv2d')
    return _finish(outputs, channels, activation_fn=activation_fn,
                   normalizer_fn=normalizer_fn, normalizer_params=normalizer_params,
                   biases_initializer=biases_initializer, biases_name='biases',
                   trainable=trainable)


def batch_norm(inputs: tf.Tensor, decay: float = 0.999, center: bool = True,
               scale: bool = False, epsilon: float = 0.001,
               activation_fn: Optional[Callable] = None, is_training: bool = True,
               updates_collections: Optional[str] = tf.compat.v1.GraphKeys.UPDATE_OPS,
               reuse: Optional[bool] = None, trainable: bool = True,
               scope: Optional[str] = None) -> tf.Tensor:
  """Fused batch normalization named as tf-slim's: op `<scope>/FusedBatchNormV3`.

  Default scope `'BatchNorm'`, so `conv2d(..., normalizer_fn=batch_norm,
  scope='conv')` gives `conv/BatchNorm/FusedBatchNormV3`. Variables `beta`
  (if `center`), `gamma` (if `scale`), `moving_mean`, `moving_variance`.
  As in slim, `scale` defaults to False: pass `scale=True` (e.g. through
  `normalizer_params`) for a gamma that MorphNet's Gamma regularizers can use.

  Args:
    inputs: a rank-4 NHWC or rank-2 input with a known channel dimension.
    decay: moving-average decay.
    center: add a learned offset `beta`.
    scale: multiply by a learned `gamma`.
    epsilon: added to the variance.
    activation_fn: applied to the output, if not None.
    is_training: normalize with the batch statistics and update the moving
      averages (in graph mode the update ops go to `updates_collections`, or
      run with the output if it is None; eagerly they run at once); else
      normalize with the moving averages.
    updates_collections: collection for the update ops in graph mode.
    reuse: passed to `tf.compat.v1.variable_scope`.
    trainable: whether `beta` and `gamma` are trainable.
    scope: variable and name scope.

  Returns:
    The normalized tensor.

  Raises:
    ValueError: the input rank is neither 2 nor 4.
  """
  rank = inputs.shape.rank
  if rank not in (2, 4):
    raise ValueError(
        'batch_norm supports rank-4 (NHWC) and rank-2 inputs. Received: inputs '
        f'with shape {inputs.shape}.')
  with tf.compat.v1.variable_scope(scope, 'BatchNorm', [inputs], reuse=reuse):
    channels = _channels(inputs, 'batch_norm')
    beta = (_variable('beta', [channels], _ZEROS, trainable) if center
            else tf.zeros([channels]))
    gamma = (_variable('gamma', [channels], _ONES, trainable) if scale
             else tf.ones([channels]))
    moving_mean = _variable('moving_mean', [channels], _ZEROS, trainable=False)
    moving_variance = _variable('moving_variance', [channels], _ONES, trainable=False)
    x = inputs if rank == 4 else tf.reshape(inputs, [-1, 1, 1, channels])
    if is_training:
      outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
          x, gamma, beta, epsilon=epsilon, is_training=True)
      updates = [
          moving_mean.assign_sub((moving_mean - mean) * (1.0 - decay)),
          moving_variance.assign_sub((moving_variance - variance) * (1.0 - decay)),
      ]
      if not tf.executing_eagerly():
        if updates_collections is None:
          with tf.control_dependencies(updates):
            outputs = tf.identity(outputs)
        else:
          for update in updates:
            tf.compat.v1.add_to_collection(updates_collections, update)
    else:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, gamma, beta, mean=moving_mean, variance=moving_variance,
          epsilon=epsilon, is_training=False)
    if rank == 2:
      outputs = tf.reshape(outputs, [-1, channels])
    if activation_fn is not None:
      outputs = activation_fn(outputs)
    return outputs


def avg_pool2d(inputs: tf.Tensor, kernel_size: Union[int, Sequence[int]],
               stride: Union[int, Sequence[int]] = 2, padding: str = 'VALID',
               scope: Optional[str] = None) -> tf.Tensor:
  """Average pooling (NHWC) under name scope `scope` (default `'AvgPool2D'`)."""
  with tf.compat.v1.name_scope(scope, 'AvgPool2D', [inputs]):
    return tf.nn.avg_pool2d(inputs, _pair(kernel_size, 'kernel_size'),
                            _pair(stride, 'stride'), padding.upper())


def max_pool2d(inputs: tf.Tensor, kernel_size: Union[int, Sequence[int]],
               stride: Union[int, Sequence[int]] = 2, padding: str = 'VALID',
               scope: Optional[str] = None) -> tf.Tensor:
  """Max pooling (NHWC) under name scope `scope` (default `'MaxPool2D'`)."""
  with tf.compat.v1.name_scope(scope, 'MaxPool2D', [inputs]):
    return tf.nn.max_pool2d(inputs, _pair(kernel_size, 'kernel_size'),
                            _pair(stride, 'stride'), padding.upper())


def layers_conv2d(inputs: tf.Tensor, filters: int, kernel_size: Union[int, Sequence[int]],
                  strides: Union[int, Sequence[int]] = (1, 1), padding: str = 'valid',
                  dilation_rate: Union[int, Sequence[int]] = (1, 1),
                  activation: Optional[Callable] = None, use_bias: bool = True,
                  kernel_initializer: Any = None, bias_initializer: Any = _ZEROS,
                  trainable: bool = True, name: Optional[str] = None,
                  reuse: Optional[bool] = None) -> tf.Tensor:
  """`tf.compat.v1.layers.conv2d` look-alike: op `<name>/Conv2D`.

  Variables `<name>/kernel` and `<name>/bias`; default name `'conv2d'`;
  number of outputs in `filters`; no activation by default.
  """
  with tf.compat.v1.variable_scope(name, 'conv2d', [inputs], reuse=reuse):
    outputs = _convolution(inputs, filters, kernel_size, strides, padding,
                           dilation_rate, 'kernel', kernel_initializer, trainable,
                           'layers_conv2d')
    return _finish(outputs, filters, activation_fn=activation, normalizer_fn=None,
                   normalizer_params=None,
                   biases_initializer=bias_initializer if use_bias else None,
                   biases_name='bias', trainable=trainable)


def layers_separable_conv2d(inputs: tf.Tensor, filters: int,
                            kernel_size: Union[int, Sequence[int]],
                            strides: Union[int, Sequence[int]] = (1, 1),
                            padding: str = 'valid',
                            dilation_rate: Union[int, Sequence[int]] = (1, 1),
                            depth_multiplier: int = 1,
                            activation: Optional[Callable] = None, use_bias: bool = True,
                            depthwise_initializer: Any = None,
                            pointwise_initializer: Any = None,
                            bias_initializer: Any = _ZEROS, trainable: bool = True,
                            name: Optional[str] = None,
                            reuse: Optional[bool] = None) -> tf.Tensor:
  """`tf.compat.v1.layers.separable_conv2d` look-alike.

  Ops `<name>/separable_conv2d/depthwise` and `<name>/separable_conv2d`;
  variables `depthwise_kernel`, `pointwise_kernel`, `bias`; default name
  `'separable_conv2d'`; number of outputs in `filters`.
  """
  with tf.compat.v1.variable_scope(name, 'separable_conv2d', [inputs], reuse=reuse):
    outputs, channels = _separable(
        inputs, filters, kernel_size, depth_multiplier, strides, padding,
        dilation_rate, 'depthwise_kernel', 'pointwise_kernel', depthwise_initializer,
        pointwise_initializer, trainable, 'layers_separable_conv2d')
    return _finish(outputs, channels, activation_fn=activation, normalizer_fn=None,
                   normalizer_params=None,
                   biases_initializer=bias_initializer if use_bias else None,
                   biases_name='bias', trainable=trainable)


def layers_dense(inputs: tf.Tensor, units: int, activation: Optional[Callable] = None,
                 use_bias: bool = True, kernel_initializer: Any = None,
                 bias_initializer: Any = _ZEROS, trainable: bool = True,
                 name: Optional[str] = None, reuse: Optional[bool] = None) -> tf.Tensor:
  """`tf.compat.v1.layers.dense` look-alike on rank-2 inputs: op `<name>/MatMul`.

  Variables `<name>/kernel` and `<name>/bias`; default name `'dense'`; number
  of outputs in `units`.

  Raises:
    ValueError: the input is not of rank 2.
  """
  if inputs.shape.rank != 2:
    raise ValueError(
        'layers_dense expects a rank-2 input [batch, features]. Received: inputs '
        f'with shape {inputs.shape}.')
  with tf.compat.v1.variable_scope(name, 'dense', [inputs], reuse=reuse):
    kernel = _variable('kernel', [_channels(inputs, 'layers_dense'), units],
                       kernel_initializer, trainable)
    outputs = tf.matmul(inputs, kernel)
    return _finish(outputs, units, activation_fn=activation, normalizer_fn=None,
                   normalizer_params=None,
                   biases_initializer=bias_initializer if use_bias else None,
                   biases_name='bias', trainable=trainable)


# arg_scope-able where tf_slim is installed, like the slim layers they mirror.
conv2d = _add_arg_scope(conv2d)
fully_connected = _add_arg_scope(fully_connected)
separable_conv2d = _add_arg_scope(separable_conv2d)
batch_norm = _add_arg_scope(batch_norm)
avg_pool2d = _add_arg_scope(avg_pool2d)
max_pool2d = _add_arg_scope(max_pool2d)
layers_conv2d = _add_arg_scope(layers_conv2d)
layers_separable_conv2d = _add_arg_scope(layers_separable_conv2d)
layers_dense = _add_arg_scope(layers_dense)

DEFAULT_FUNCTION_DICT = {
    'fully_connected': fully_connected,
    'conv2d': conv2d,
    'separable_conv2d': separable_conv2d,
    'concat': tf.concat,
    'add_n': tf.add_n,
    'avg_pool2d': avg_pool2d,
    'max_pool2d': max_pool2d,
    'batch_norm': batch_norm,
}

_SUFFIX_DICT = {
    'fully_connected': 'MatMul',
    'conv2d': 'Conv2D',
    'separable_conv2d': 'separable_conv2d',
}

# Scope used when a call gives neither `scope` nor `name`.
_OP_SCOPE_DEFAULTS = {
    layers_conv2d: 'conv2d',
    conv2d: 'Conv',
    layers_separable_conv2d: 'separable_conv2d',
    separable_conv2d: 'SeparableConv2d',
    layers_dense: 'dense',
    fully_connected: 'fully_connected',
}
if slim is not None:
  # tf-slim's own layers (e.g. `function_dict={'conv2d': slim.conv2d}`) get
  # tf-slim's default scopes, as contrib's did in the original.
  _OP_SCOPE_DEFAULTS.update({
      slim.conv2d: 'Conv',
      slim.separable_conv2d: 'SeparableConv2d',
      slim.fully_connected: 'fully_connected',
  })

# Keyword holding the number of outputs, where it is not `num_outputs`.
_NUM_OUTPUTS_KWARG_DICT = {
    layers_conv2d: 'filters',
    layers_separable_conv2d: 'filters',
    layers_dense: 'units',
}


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def get_function_dict(overrides: Optional[Mapping[str, Callable]] = None
                      ) -> Dict[str, Callable]:
  """A copy of `DEFAULT_FUNCTION_DICT` updated with `overrides`.

  Args:
    overrides: function name (a key of `DEFAULT_FUNCTION_DICT`) -> function.

  Returns:
    A new dict.
  """
  function_dict = copy.deepcopy(DEFAULT_FUNCTION_DICT)
  function_dict.update(overrides or {})
  return function_dict


def is_vanished(maybe_tensor: Any) -> bool:
  """True iff `maybe_tensor` is None or the float `VANISHED` (0.0)."""
  return maybe_tensor is None or (
      isinstance(maybe_tensor, float) and bool(maybe_tensor == VANISHED))


class FallbackRule(enum.Enum):
  """What an op not listed in the parameterization gets.

  * `pass_through`: the number of outputs given in the call.
  * `strict`: nothing; a `KeyError` is raised.
  * `zero`: 0 outputs, i.e. the op vanishes.
  """
  pass_through = 'pass_through'
  strict = 'strict'
  zero = 'zero'


def _get_fallback_rule_as_enum(fallback_rule: Union[str, FallbackRule]) -> FallbackRule:
  if isinstance(fallback_rule, FallbackRule):
    return fallback_rule
  if isinstance(fallback_rule, str):
    try:
      return FallbackRule[fallback_rule]
    except KeyError:
      raise KeyError(
          f'Unknown fallback_rule. Expected one of {[r.name for r in FallbackRule]}. '
          f'Received: fallback_rule={fallback_rule!r}.') from None
  raise ValueError(
      'fallback_rule must be a string or FallbackRule Enum. Received: '
      f'fallback_rule={fallback_rule!r} of type {type(fallback_rule).__name__}.')


def _function_name(function: Any) -> str:
  module = getattr(function, '__module__', None)
  name = getattr(function, '__qualname__', None) or getattr(function, '__name__', None)
  if name is None:
    return repr(function)
  return f'{module}.{name}' if module else name


def _check_parameterization(parameterization: Any) -> Dict[str, Any]:
  if parameterization is None:
    return {}
  if not isinstance(parameterization, Mapping):
    raise TypeError(
        'parameterization must be a dict mapping op names to numbers of outputs '
        '(the JSON written by StructureExporter). Received: parameterization of '
        f'type {type(parameterization).__name__}.')
  for name, value in parameterization.items():
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
        or value < 0):
      raise ValueError(
          'parameterization values must be non-negative integers (numbers of '
          f'outputs). Received: {name!r}: {value!r}.')
  return parameterization


def _read_json(filename: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(filename, 'r') as f:
    return json.loads(f.read())


# ----------------------------------------------------------------------------
# ConfigurableOps (graph mode).
# ----------------------------------------------------------------------------


class ConfigurableOps:
  """Layer functions whose numbers of outputs come from a parameterization.

  Example (a `tf.compat.v1` graph):

    ops = ConfigurableOps(parameterization={'conv1/Conv2D': 13})
    net = ops.conv2d(images, 64, [3, 3], scope='conv1')  # 13 channels
    net = ops.conv2d(net, 32, 3, scope='conv2')         # 32, not listed

  The op name of a call is the current name scope (`tf.get_current_name_scope()`,
  i.e. `tf.compat.v1.get_default_graph().get_name_scope()` in graph mode) +
  `scope` (or `name`) + `/` + the op suffix (`Conv2D`, `MatMul`,
  `separable_conv2d`). Eagerly the same names are computed from `tf.name_scope`.

  Args:
    parameterization: op name -> number of outputs. Defaults to `{}`.
    function_dict: overrides of `DEFAULT_FUNCTION_DICT` (same keys), e.g.
      `{'conv2d': my_conv2d}`. A function must take `(inputs, num_outputs,
      ...)` and a `scope` or `name` keyword (or have a default scope).
    fallback_rule: a `FallbackRule` or its name, for ops missing from the
      parameterization.

  Raises:
    TypeError: `parameterization` is not a dict.
    ValueError: a parameterization value is not a non-negative integer, or
      `fallback_rule` is not a string or FallbackRule.
    KeyError: `fallback_rule` is an unknown string.
  """

  def __init__(self, parameterization: Optional[Mapping[str, int]] = None,
               function_dict: Optional[Mapping[str, Callable]] = None,
               fallback_rule: Union[str, FallbackRule] = FallbackRule.pass_through):
    self._parameterization = _check_parameterization(parameterization)
    self._function_dict = get_function_dict(function_dict)
    self._fallback_rule = _get_fallback_rule_as_enum(fallback_rule)
    self._constructed_ops = collections.OrderedDict()
    # Full default scope -> number of times it was used (for `_1`, `_2`, ...).
    self.default_scope_to_counts_map = {}

  @property
  def parameterization(self) -> Mapping[str, int]:
    return self._parameterization

  @property
  def constructed_ops(self) -> 'collections.OrderedDict[str, Any]':
    """Op name -> number of outputs actually used, in call order."""
    return self._constructed_ops

  def _get_function(self, key: str) -> Callable:
    function = self._function_dict.get(key)
    if function is None:
      raise KeyError(
          f'Function "{key}" not supported by function_dict. Received: '
          f'function_dict keys {sorted(k for k, v in self._function_dict.items() if v)}; '
          f'add one with function_dict={{{key!r}: fn}}.')
    return function

  @_add_arg_scope
  def conv2d(self, *args, **kwargs):
    """`conv2d(inputs, num_outputs, ...)` with num_outputs from the parameterization."""
    return self._mask(self._get_function('conv2d'), _SUFFIX_DICT['conv2d'],
                      *args, **kwargs)

  @_add_arg_scope
  def fully_connected(self, *args, **kwargs):
    """`fully_connected(inputs, num_outputs, ...)` on a rank-2 input.

    Raises:
      ValueError: the input is not of rank 2.
    """
    function = self._get_function('fully_connected')
    inputs = args[0] if args else kwargs.get('inputs')
    # The original read the rank before the vanish check and crashed on a
    # vanished input; a vanished input vanishes here as for every other op.
    if not is_vanished(inputs):
      rank = getattr(getattr(inputs, 'shape', None), 'rank', None)
      if rank != 2:
        raise ValueError(
            'ConfigurableOps does not suport fully_connected with rank != 2. '
            f'Received: inputs with shape {getattr(inputs, "shape", None)}; '
            'flatten or pool the input first.')
    return self._mask(function, _SUFFIX_DICT['fully_connected'], *args, **kwargs)

  @_add_arg_scope
  def separable_conv2d(self, *args, **kwargs):
    """`separable_conv2d(inputs, num_outputs, ...)`; num_outputs may be None."""
    function = self._get_function('separable_conv2d')
    kwarg = _NUM_OUTPUTS_KWARG_DICT.get(function, _DEFAULT_NUM_OUTPUTS_KWARG)
    if kwarg in kwargs:
      num_outputs = kwargs[kwarg]
    elif len(args) > 1:
      num_outputs = args[1]
    else:
      num_outputs = None
      kwargs[kwarg] = None
    if num_outputs is None:
      logging.warning(
          'Trying to decorate separable_conv2d with %s = None: the number of '
          'outputs is passed through as None (depthwise only) unless the '
          'parameterization lists the op.', kwarg)
    return self._mask(function, _SUFFIX_DICT['separable_conv2d'], *args, **kwargs)

  @_add_arg_scope
  def concat(self, *args, **kwargs):
    """`concat(values, ...)` without the vanished members; VANISHED if none is left."""
    return self._pass_through_mask_list('concat', 'values', *args, **kwargs)

  @_add_arg_scope
  def add_n(self, *args, **kwargs):
    """`add_n(inputs, ...)` without the vanished members; VANISHED if none is left."""
    return self._pass_through_mask_list('add_n', 'inputs', *args, **kwargs)

  @_add_arg_scope
  def avg_pool2d(self, *args, **kwargs):
    """The function unchanged, or VANISHED for a vanished input."""
    return self._pass_through_mask(self._get_function('avg_pool2d'), *args, **kwargs)

  @_add_arg_scope
  def max_pool2d(self, *args, **kwargs):
    """The function unchanged, or VANISHED for a vanished input."""
    return self._pass_through_mask(self._get_function('max_pool2d'), *args, **kwargs)

  @_add_arg_scope
  def batch_norm(self, *args, **kwargs):
    """The function unchanged, or VANISHED for a vanished input."""
    return self._pass_through_mask(self._get_function('batch_norm'), *args, **kwargs)

  def _mask(self, function: Callable, suffix: str, *args, **kwargs):
    """Calls `function` with its number of outputs from the parameterization."""
    if args:
      inputs, rest = args[0], list(args[1:])
    elif 'inputs' in kwargs:
      inputs, rest = kwargs.pop('inputs'), []
    else:
      raise ValueError(
          f'Missing `inputs` argument for {_function_name(function)}. Received: '
          f'no positional argument and keyword arguments {sorted(kwargs)}.')
    if is_vanished(inputs):
      return VANISHED

    op_name = self._get_op_name(function, suffix, kwargs)
    if (self._fallback_rule is FallbackRule.strict
        and op_name not in self._parameterization):
      raise KeyError(
          f'op_name "{op_name}" not found in parameterization. Received: '
          f'fallback_rule=strict and parameterization keys '
          f'{sorted(self._parameterization)}.')

    num_outputs_kwarg = _NUM_OUTPUTS_KWARG_DICT.get(function, _DEFAULT_NUM_OUTPUTS_KWARG)
    if num_outputs_kwarg in kwargs:
      base_num_outputs = kwargs.pop(num_outputs_kwarg)
    elif rest:
      base_num_outputs = rest.pop(0)
    else:
      raise ValueError(
          f'Argument `{num_outputs_kwarg}` is required. Received: no '
          f'`{num_outputs_kwarg}` for op "{op_name}"; pass it as the second '
          'positional argument or by keyword.')
    default = 0 if self._fallback_rule is FallbackRule.zero else base_num_outputs
    num_outputs = self._parameterization.get(op_name, default)
    self._insert_to_constructed_ops(op_name, num_outputs)
    if num_outputs == 0:
      return VANISHED
    return function(inputs, num_outputs, *rest, **kwargs)

  def _get_op_name(self, function: Callable, suffix: str, kwargs) -> str:
    current_scope = tf.get_current_name_scope()
    if current_scope and not current_scope.endswith('/'):
      current_scope += '/'
    op_scope = kwargs.get('scope') or kwargs.get('name')
    if op_scope:
      if op_scope.endswith('/'):
        raise ValueError(
            f'Scope `{op_scope}` ends with a slash. Not supported. Received: '
            f'scope/name={op_scope!r}; remove the trailing slash.')
      full_scope = current_scope + op_scope
    else:
      default_scope = _OP_SCOPE_DEFAULTS.get(function)
      if default_scope is None:
        raise ValueError(
            'No `scope` or `name` found in kwargs, and no default scope defined '
            f'for {_function_name(function)}. Pass scope=... (or name=...) to '
            'name the op.')
      base = current_scope + default_scope
      count = self.default_scope_to_counts_map.get(base, 0)
      self.default_scope_to_counts_map[base] = count + 1
      full_scope = base if count == 0 else f'{base}_{count}'
    return f'{full_scope}/{suffix}'

  def _insert_to_constructed_ops(self, op_name: str, num_outputs: Any) -> None:
    if op_name in self._constructed_ops:
      logging.warning(
          'Op name "%s" was constructed more than once; the number of outputs '
          'recorded for it (%s) is overwritten by %s. Reusing a scope is fine; '
          'otherwise give the ops distinct scopes.', op_name,
          self._constructed_ops[op_name], num_outputs)
    self._constructed_ops[op_name] = num_outputs

  def _pass_through_mask_list(self, function_name: str, list_arg_name: str,
                              *args, **kwargs):
    function = self._function_dict.get(function_name)
    if function is None:
      raise ValueError(
          f'Unrecognized function name {function_name}. Received: function_dict '
          f'keys {sorted(k for k, v in self._function_dict.items() if v)}.')
    if args:
      values, rest = args[0], args[1:]
    elif list_arg_name in kwargs:
      values, rest = kwargs.pop(list_arg_name), ()
    else:
      raise ValueError(
          f'Missing `{list_arg_name}` argument. Received: keyword arguments '
          f'{sorted(kwargs)} for {function_name}.')
    filtered = [value for value in values if not is_vanished(value)]
    if not filtered:
      return VANISHED
    # Positionally, as the original, however the caller passed the list.
    return function(filtered, *rest, **kwargs)

  @staticmethod
  def _pass_through_mask(function: Callable, *args, **kwargs):
    if args:
      inputs = args[0]
    elif 'inputs' in kwargs:
      inputs = kwargs['inputs']
    else:
      raise ValueError(
          f'Missing `inputs` argument for {_function_name(function)}. Received: '
          f'keyword arguments {sorted(kwargs)}.')
    if is_vanished(inputs):
      return VANISHED
    return function(*args, **kwargs)


def hijack_module_functions(configurable_ops: ConfigurableOps, module: Any
                            ) -> Dict[str, Any]:
  """Replaces the layer functions of `module` by those of `configurable_ops`.

  Every name of `DEFAULT_FUNCTION_DICT` that `module` has as an attribute is
  replaced by the bound method of `configurable_ops`, so code calling
  `module.conv2d(...)` builds the configured network.

  Args:
    configurable_ops: a `ConfigurableOps`.
    module: a module (or any object) whose attributes are replaced.

  Returns:
    Name -> original attribute, for `recover_module_functions`.
  """
  originals = {}
  for name in DEFAULT_FUNCTION_DICT:
    if hasattr(module, name):
      originals[name] = getattr(module, name)
      setattr(module, name, getattr(configurable_ops, name))
  return originals


def recover_module_functions(originals: Mapping[str, Any], module: Any) -> None:
  """Restores the attributes returned by `hijack_module_functions` or
  `hijack_keras_module`."""
  for name, original in originals.items():
    setattr(module, name, original)


def decorator_from_parameterization_file(
    filename: str, fallback_rule: Union[str, FallbackRule] = FallbackRule.pass_through,
    **kwargs) -> ConfigurableOps:
  """A `ConfigurableOps` whose parameterization is read from a JSON file.

  Args:
    filename: path of a file written by `StructureExporter` (any
      `tf.io.gfile` path).
    fallback_rule: see `ConfigurableOps`.
    **kwargs: other `ConfigurableOps` arguments (e.g. `function_dict`).

  Returns:
    The ConfigurableOps.
  """
  return ConfigurableOps(parameterization=_read_json(filename),
                         fallback_rule=fallback_rule, **kwargs)


# ----------------------------------------------------------------------------
# Keras 3 layers.
# ----------------------------------------------------------------------------


class _ConfigurableKerasLayer:
  """Mixin resolving the number of outputs of a Keras layer at build time.

  The op-name candidates are `<scope>/<suffix>` for each of `op_suffixes`,
  where `<scope>` is the name scope Keras 3 builds the layer in (its name,
  under any enclosing `tf.name_scope`), then the plain layer name (the keys of
  `layer_structure.LayerStructureExporter`).
  """

  op_suffixes: List[str] = []
  default_op_suffix: str = ''
  num_outputs_attr: str = ''

  def __init__(self, sentinel=None, parameterization: Optional[Mapping[str, int]] = None,
               constructed_ops: Optional[Dict[str, int]] = None, is_strict: bool = False,
               **kwargs):
    if sentinel is not None:
      raise ValueError(
          'Found positional argument. __init__ only accepts kwargs. Received: '
          f'{sentinel!r} as the first positional argument of '
          f'{type(self).__name__}; pass e.g. filters=... / units=... by keyword.')
    if kwargs.get('name') is None:
      # In a tf.compat.v1 graph, default names count per graph as in TF1
      # Keras: `configurable_conv2d` on first use in a fresh graph.
      name = graph_names.default_layer_name(
          graph_names.to_snake_case(type(self).__name__))
      if name is not None:
        kwargs['name'] = name
    super().__init__(**kwargs)
    # The name scope the layer was built in (tf.compat.v1 graphs only).
    object.__setattr__(self, '_graph_scope', None)
    # Bypass Keras attribute tracking, which would copy the dicts: the given
    # `constructed_ops` dict must be the one mutated.
    object.__setattr__(self, '_parameterization',
                       _check_parameterization(parameterization))
    object.__setattr__(self, '_constructed_ops',
                       collections.OrderedDict() if constructed_ops is None
                       else constructed_ops)
    self.is_strict = is_strict
    self.is_null_op = False

  @property
  def parameterization(self) -> Mapping[str, int]:
    return self._parameterization

  @property
  def constructed_ops(self) -> Dict[str, int]:
    return self._constructed_ops

  def _op_name_candidates(self) -> Tuple[str, List[str]]:
    scope = tf.get_current_name_scope() or self.name
    sep = '' if scope.endswith('/') else '/'
    candidates = [scope + sep + suffix for suffix in self.op_suffixes]
    if self.name not in candidates:
      candidates.append(self.name)
    return scope + sep + self.default_op_suffix, candidates

  def build(self, input_shape):
    if graph_names.in_v1_graph():
      object.__setattr__(self, '_graph_scope', tf.get_current_name_scope())
    default_name, candidates = self._op_name_candidates()
    matches = [name for name in candidates if name in self._parameterization]
    if self.is_strict and not matches:
      raise KeyError(
          'None of the following op names were found in the parameterization: '
          f'{candidates}. Received: a strict layer {self.name!r} and '
          f'parameterization keys {sorted(self._parameterization)}.')
    if len(matches) > 1:
      raise KeyError(
          'Found multiple matching op names in the parameterization: '
          f'{matches}. Keep only one key for layer {self.name!r}.')
    op_name = matches[0] if matches else default_name
    num_outputs = self._parameterization.get(
        op_name, getattr(self, self.num_outputs_attr))
    if op_name in self._constructed_ops:
      logging.warning('Op name "%s" was constructed more than once; its recorded '
                      'number of outputs is overwritten.', op_name)
    self._constructed_ops[op_name] = num_outputs
    self.is_null_op = num_outputs == 0
    setattr(self, self.num_outputs_attr, num_outputs)
    super().build(input_shape)

  def __call__(self, inputs, *args, **kwargs):
    if is_vanished(inputs):
      return VANISHED
    if not self.built:
      # Build first (Keras 3 opens the same name scope): a zero-channel layer
      # is built but never run (a zero-filter convolution cannot run).
      # `as_list()`: plain ints also under `disable_v2_behavior()`, whose
      # TensorShape iterates over `Dimension` objects Keras 3 cannot use.
      self.build(tuple(_shape_as_list(inputs)))
    if self.is_null_op:
      return VANISHED
    return super().__call__(inputs, *args, **kwargs)

  def _open_name_scope(self):
    # Once built, calls re-enter the build scope in a v1 graph (see
    # graph_names.reenter_build_scope): ops are named as in the original,
    # e.g. `configurable_dense/Tensordot/MatMul`.
    return graph_names.reenter_build_scope(super()._open_name_scope(),
                                           self._graph_scope)


def _shape_as_list(tensor: Any) -> List[Optional[int]]:
  shape = tensor.shape
  if isinstance(shape, tf.TensorShape):
    return shape.as_list()
  return [None if d is None else int(d) for d in shape]


class ConfigurableConv2D(_ConfigurableKerasLayer, keras.layers.Conv2D):
  """A Keras `Conv2D` whose `filters` come from a parameterization.

  Keys: `<layer>/Conv2D`, `<layer>/ConfigurableConv2D` or `<layer>`.
  Constructor: `(sentinel=None, parameterization=None, constructed_ops=None,
  is_strict=False, **kwargs)`, Keras arguments by keyword only.
  """
  op_suffixes = ['Conv2D', 'ConfigurableConv2D']
  default_op_suffix = 'ConfigurableConv2D'
  num_outputs_attr = 'filters'


class ConfigurableSeparableConv2D(_ConfigurableKerasLayer, keras.layers.SeparableConv2D):
  """A Keras `SeparableConv2D` whose `filters` come from a parameterization.

  Keys: `<layer>/separable_conv2d` or `<layer>`.
  """
  op_suffixes = ['separable_conv2d']
  default_op_suffix = 'separable_conv2d'
  num_outputs_attr = 'filters'


class ConfigurableDense(_ConfigurableKerasLayer, keras.layers.Dense):
  """A Keras `Dense` whose `units` come from a parameterization.

  Keys: `<layer>/Tensordot/MatMul` or `<layer>`.
  """
  op_suffixes = ['Tensordot/MatMul']
  default_op_suffix = 'Tensordot/MatMul'
  num_outputs_attr = 'units'


class PassThroughKerasLayerWrapper:
  """Builds a Keras layer on call, unless its inputs vanished.

  A list/tuple input loses its vanished members: none left -> `VANISHED`,
  one left -> that one is returned (no layer is built); a single vanished
  input -> `VANISHED`. Otherwise a new `keras_layer_class(*args, **kwargs)` is
  created (`self.keras_layer_instance`) and called.

  Args:
    keras_layer_class: the Keras layer class.
    *args: positional arguments of its constructor.
    **kwargs: keyword arguments of its constructor.
  """

  def __init__(self, keras_layer_class: type, *args, **kwargs):
    self.keras_layer_class = keras_layer_class
    self.args = args
    self.kwargs = kwargs
    self.keras_layer_instance = None

  def __call__(self, inputs, *args, **kwargs):
    if isinstance(inputs, (list, tuple)):
      inputs = [x for x in inputs if not is_vanished(x)]
      if not inputs:
        return VANISHED
      if len(inputs) == 1:
        return inputs[0]
    elif is_vanished(inputs):
      return VANISHED
    self.keras_layer_instance = self.keras_layer_class(*self.args, **self.kwargs)
    return self.keras_layer_instance(inputs, *args, **kwargs)


_CONFIGURABLE_KERAS_CLASSES = (
    ('Conv2D', ConfigurableConv2D),
    ('SeparableConv2D', ConfigurableSeparableConv2D),
    ('Dense', ConfigurableDense),
)
_PASS_THROUGH_KERAS_LAYERS = ('BatchNormalization', 'Activation', 'UpSampling2D',
                              'Add', 'Concatenate', 'Multiply')


def hijack_keras_module(parameterization_or_file: Union[None, str, Mapping[str, int]],
                        module: Any,
                        fallback_rule: Union[str, FallbackRule] = FallbackRule.pass_through,
                        remove_common_prefix: bool = False,
                        keep_first_channel_alive: bool = True
                        ) -> Tuple[Dict[str, int], Dict[str, Any]]:
  """Replaces the Keras layer classes of `module` by configurable ones.

  `Conv2D`, `SeparableConv2D`, `Dense` become partials of the configurable
  classes sharing one parameterization and one `constructed_ops` dict;
  `BatchNormalization`, `Activation`, `UpSampling2D`, `Add`, `Concatenate`,
  `Multiply` become `PassThroughKerasLayerWrapper`s around the `keras.layers`
  classes. Only attributes present on `module` are replaced; configurable
  classes take their Keras arguments by keyword.

  Example:

    constructed_ops, originals = hijack_keras_module(
        'train_dir/learned_structure/alive_1000', keras.layers)
    try:
      model = build_model()  # uses keras.layers.Conv2D(filters=..., ...)
    finally:
      recover_module_functions(originals, keras.layers)

  Args:
    parameterization_or_file: dict op (or layer) name -> number of outputs,
      a JSON file path, or None for `{}`.
    module: a module (e.g. `keras.layers`) or any object with these attributes.
    fallback_rule: `strict` makes unlisted layers raise `KeyError` at build;
      `pass_through` and `zero` keep their configured widths (`zero` has no
      effect here, as in the original).
    remove_common_prefix: strip a first-level prefix common to all keys (see
      `structure_exporter.get_remove_common_prefix_fn`).
    keep_first_channel_alive: raise every 0 to 1, so no layer vanishes.

  Returns:
    `(constructed_ops, original_layer_classes)`; restore the module with
    `recover_module_functions(original_layer_classes, module)`.

  Raises:
    ValueError: `parameterization_or_file` is neither a dict, a string nor None.
  """
  if parameterization_or_file is None:
    parameterization = {}
  elif isinstance(parameterization_or_file, str):
    parameterization = _read_json(parameterization_or_file)
  elif isinstance(parameterization_or_file, Mapping):
    parameterization = dict(parameterization_or_file)
  else:
    raise ValueError(
        'Expected dict or string (filename) for `parameterization_or_file`. '
        f'Instead got: {type(parameterization_or_file).__name__} '
        f'({parameterization_or_file!r}).')
  _check_parameterization(parameterization)
  if remove_common_prefix:
    rename = structure_exporter.get_remove_common_prefix_fn(list(parameterization))
    parameterization = {rename(k): v for k, v in parameterization.items()}
  if keep_first_channel_alive:
    parameterization = {k: max(v, 1) for k, v in parameterization.items()}
  is_strict = _get_fallback_rule_as_enum(fallback_rule) is FallbackRule.strict

  constructed_ops = collections.OrderedDict()
  originals = {}
  for name, configurable_class in _CONFIGURABLE_KERAS_CLASSES:
    if hasattr(module, name):
      originals[name] = getattr(module, name)
      setattr(module, name, functools.partial(
          configurable_class, parameterization=parameterization,
          constructed_ops=constructed_ops, is_strict=is_strict))
  for name in _PASS_THROUGH_KERAS_LAYERS:
    if hasattr(module, name):
      originals[name] = getattr(module, name)
      setattr(module, name, functools.partial(
          PassThroughKerasLayerWrapper, getattr(keras.layers, name)))
  return constructed_ops, originals
