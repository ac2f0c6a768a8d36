"""Probabilistic gating of activations (FiGS: Fine-Grained Stochastic Search).

A `LogisticSigmoidGating` layer multiplies an activation by a per-channel mask.
Each channel has a trainable log-odds `mask_logits[i]` = log(p_i / (1 - p_i)),
p_i being the probability that the channel is kept:

  * training: the mask is a fresh sample, one per channel (shared across the
    batch and spatial positions): with logistic noise eps,
    sigmoid((logits + eps) / temperature), or with `straight_through=True` the
    hard 1[(logits + eps) > 0] whose gradient is that of the sigmoid. As the
    temperature falls the mask approaches a Bernoulli(p) sample;
  * inference: the mask is deterministic, 1[logits > 0], multiplied by
    sigmoid(logits) when `soft_mask_for_inference`.

With `keep_first_channel_alive` the first channel is always kept, so a layer
never vanishes. MorphNet's LogisticSigmoid regularizers
(`network_regularizers/logistic_sigmoid_regularizer.py`) find the gates in the
graph and regularize the cost of the channels they keep.

Porting notes (original: TF1, `function.Defun`, tensorflow_probability):

  * No tensorflow_probability: the logistic noise is log(u) - log(1 - u) with
    u ~ U(1e-6, 1 - 1e-6) (clipped away from 0 and 1, so |eps| <= 13.8).
  * No custom op type. The mask computation always ends in
    `tf.identity(mask, name='LogisticSigmoidGating')` under the layer's scope
    (e.g. `conv1/gate/LogisticSigmoidGating`), in training *and* inference
    mode (the original emitted no gating op in inference mode), and in graph
    contexts the layer records that op in the registry of
    `framework/logistic_sigmoid_source_op_handler.py`, which is how the
    regularizers recognise it. The straight-through estimator is a
    `tf.custom_gradient`. As in the original, a training-mode mask with
    temperature 0.0 is a plain hard sample without a gating op (no source).
  * The sampled mask is not stored with `tpu_util.write_to_variable`: it
    existed so that TPU host code could read the mask; here the regularizer
    re-samples it from the `mask_logits` variable when evaluated outside the
    analysed graph (see the handler module for the exact semantics).
  * Keras 3 rejects non-tensor positional call arguments: call the layer as
    `layer(x, is_training=True)` or `layer(x, training=True)` (Keras passes
    `training` itself in `fit`/`predict`). Unset, the layer is in inference
    mode, as Keras layers are.
  * The temperature is annealed at call time, temperature * 0.1 **
    (global_step / annealing_rate), so that it follows a `global_step`
    variable (e.g. `optimizer.iterations`) eagerly and in `fit`.
  * The mask is computed in float32 (`mask_logits` is not autocast) and cast
    to the activation's dtype, so mixed precision does not affect sampling.
  * The mask of shape [C] multiplies the last axis, as in the original; for a
    non-last `axis` it is reshaped to broadcast along that axis (MorphNet
    itself analyses channels-last networks only).
  * `gated_batch_norm` wraps `BN_FN`, by default `batch_norm` below: a small
    Keras layer around `tf.compat.v1.nn.fused_batch_norm` (op
    `BatchNorm/FusedBatchNormV3`, 4-D NHWC inputs) with trainable gamma/beta
    and moving statistics, replacing the original's `tf.contrib` batch norm.
    Like `logistic_sigmoid_gating`, it creates a new layer on every call: use
    these functions in `tf.compat.v1` graphs or eagerly, and the layers
    (`LogisticSigmoidGating`, `keras.layers.BatchNormalization`) in Keras
    models and `tf.function`s (which may trace more than once).
"""

from __future__ import annotations

import contextlib
import numbers
import re
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from morph_net.framework import graph_names
from morph_net.framework import logistic_sigmoid_source_op_handler as gating_ops

# u is sampled in [_UNIFORM_EPSILON, 1 - _UNIFORM_EPSILON).
_UNIFORM_EPSILON = 1e-6


def _logistic_noise(shape) -> tf.Tensor:
  """Samples Logistic(0, 1) noise of `shape`: log(u) - log(1 - u)."""
  u = tf.random.uniform(shape, minval=_UNIFORM_EPSILON,
                        maxval=1.0 - _UNIFORM_EPSILON, dtype=tf.float32)
  return tf.math.log(u) - tf.math.log1p(-u)


def _check_tau(tau) -> None:
  if tf.is_tensor(tau) or isinstance(tau, tf.Variable):
    return
  if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
    raise ValueError(
        '`tau` should be a float or tf.Tensor. Got: '
        f'{tau!r} of type {type(tau).__name__}.')
  if tau < 0:
    raise ValueError(
        f'`tau` should be positive: it is the temperature of the sigmoid. '
        f'Received: tau={tau!r}.')


def _creates_gating_op(tau) -> bool:
  """Whether a training-mode sample with temperature `tau` is a gating op."""
  return tf.is_tensor(tau) or isinstance(tau, tf.Variable) or tau > 0.0


def _straight_through_sigmoid(noisy_logits: tf.Tensor, tau) -> tf.Tensor:
  """1[noisy_logits > 0], with the gradient of sigmoid(noisy_logits / tau)."""

  @tf.custom_gradient
  def hard_mask(x, t):
    def grad(dy):
      soft = tf.sigmoid(x / t)
      slope = soft * (1.0 - soft)
      return dy * slope / t, tf.reduce_sum(dy * slope * (-x / tf.square(t)))
    return tf.cast(x > 0.0, x.dtype), grad

  return hard_mask(noisy_logits, tf.cast(tau, noisy_logits.dtype))


def _logistic_sigmoid_sample(logits: tf.Tensor, tau, straight_through: bool,
                             gating_op: bool = True) -> tf.Tensor:
  """Samples a per-channel mask from log-odds `logits`.

  Args:
    logits: rank-1 float32 log-odds.
    tau: the temperature, a non-negative float or a tensor.
    straight_through: if True the mask is hard (0/1) in the forward pass and
      has the gradient of the sigmoid.
    gating_op: end the computation in the gating op
      (`tf.identity(..., name='LogisticSigmoidGating')`) when `tau` is a tensor
      or positive, as the original's custom op. False when the regularizer
      re-samples the mask.

  Returns:
    The mask, with the static shape of `logits`.

  Raises:
    ValueError: `tau` is neither a number nor a tensor, or is negative.
  """
  _check_tau(tau)
  shape = logits.shape if logits.shape.is_fully_defined() else tf.shape(logits)
  noisy_logits = logits + _logistic_noise(shape)
  if not _creates_gating_op(tau):
    mask = tf.cast(noisy_logits > 0.0, logits.dtype)
  else:
    if straight_through:
      mask = _straight_through_sigmoid(noisy_logits, tau)
    else:
      mask = tf.sigmoid(noisy_logits / tf.cast(tau, logits.dtype))
    if gating_op:
      mask = tf.identity(mask, name=gating_ops.GATING_OP_NAME)
  mask.set_shape(logits.shape)
  return mask


def _get_initializer(log_odds_init):
  """A Keras initializer for `log_odds_init` (a number or an initializer)."""
  if isinstance(log_odds_init, numbers.Real) and not isinstance(log_odds_init, bool):
    return keras.initializers.Constant(float(log_odds_init))
  if isinstance(log_odds_init, (keras.initializers.Initializer, str, dict)):
    try:
      return keras.initializers.get(log_odds_init)
    except (ValueError, TypeError):
      pass
  elif callable(log_odds_init):
    return log_odds_init
  raise ValueError(
      'log_odds_init has unsupported value. Expected a number (the initial '
      'log-odds log(p / (1 - p)) of every channel, e.g. 2.5 for p ~ 0.92) or a '
      f'Keras initializer. Received: log_odds_init={log_odds_init!r}.')


@contextlib.contextmanager
def _layer_scope(layer: keras.layers.Layer):
  """Re-enters `<parent scope>/<layer name>/` in graph contexts.

  Keras opens the layer's name scope once to build and once to call, so in a
  graph the call's ops would be named `<layer>_1/...`. Re-entering the
  absolute scope gives the original's names, e.g.
  `conv1/gate/LogisticSigmoidGating` next to `conv1/gate/mask_logits`.
  """
  if tf.executing_eagerly():
    yield
    return
  current = tf.compat.v1.get_default_graph().get_name_scope()
  parent, _, last = current.rpartition('/')
  if not re.fullmatch(re.escape(layer.name) + r'(_\d+)?', last):
    yield
    return
  scope = f'{parent}/{layer.name}/' if parent else f'{layer.name}/'
  with tf.name_scope(scope):
    yield


def _resolve_training(is_training, training) -> bool:
  flag = is_training if is_training is not None else training
  if flag is None:
    return False
  if tf.is_tensor(flag):
    value = tf.get_static_value(flag)
    if value is None:
      raise TypeError(
          'is_training must be a Python bool (or a tensor with a static value): '
          'the training and inference masks are different graphs. Received: '
          f'{flag!r}.')
    flag = value
  return bool(flag)


@keras.saving.register_keras_serializable(package='morph_net')
class LogisticSigmoidGating(keras.layers.Layer):
  """Gates the channels of an activation with learned keep probabilities.

  Example:
    x = keras.layers.Conv2D(32, 3)(inputs)
    x = keras.layers.ReLU()(x)
    x = LogisticSigmoidGating(axis=-1, name='gate1')(x)

  Args:
    axis: the channel axis. Defaults to 3 (NHWC images).
    temperature: the temperature of the training-mode sigmoid, a non-negative
      float or a tensor. Defaults to 0.001.
    straight_through: use hard 0/1 masks in training with the gradient of the
      sigmoid (straight-through estimator). Defaults to False.
    log_odds_init: initial log-odds of every channel (a number) or a Keras
      initializer. Defaults to 2.5 (p ~ 0.92).
    soft_mask_for_inference: multiply the inference mask 1[logits > 0] by
      sigmoid(logits). Defaults to True.
    keep_first_channel_alive: always keep channel 0. Defaults to True.
    annealing_rate: if set, the temperature is multiplied by
      0.1 ** (global_step / annealing_rate).
    global_step: the step for annealing: a number, a variable (e.g.
      `optimizer.iterations`) or a tensor. Required with `annealing_rate`.
    name: the layer name (the graph scope of its ops).
    **kwargs: other `keras.layers.Layer` arguments.

  Raises:
    ValueError: `annealing_rate` without `global_step`, an unsupported
      `log_odds_init`, a negative `temperature` or a non-integer `axis`.
  """

  def __init__(self, axis: int = 3, temperature: Any = 0.001,
               straight_through: bool = False, log_odds_init: Any = 2.5,
               soft_mask_for_inference: bool = True,
               keep_first_channel_alive: bool = True,
               annealing_rate: Optional[float] = None,
               global_step: Any = None, name: Optional[str] = None, **kwargs):
    if name is None:
      # Counted per tf.compat.v1 graph as in TF1 Keras (Keras 3's counter is
      # process-wide): `logistic_sigmoid_gating` again after
      # `tf.compat.v1.reset_default_graph()`. None elsewhere (Keras naming).
      name = graph_names.default_layer_name('logistic_sigmoid_gating')
    super().__init__(name=name, **kwargs)
    if isinstance(axis, bool) or not isinstance(axis, int):
      raise ValueError(
          f'axis must be an integer (the channel axis). Received: axis={axis!r}.')
    _check_tau(temperature)
    if annealing_rate and global_step is None:
      raise ValueError(
          'Must provide global_step if decaying temperature. Received: '
          f'annealing_rate={annealing_rate!r}, global_step=None; pass e.g. '
          'global_step=optimizer.iterations.')
    self._axis = axis
    self._temperature = temperature
    self._straight_through = bool(straight_through)
    self._log_odds_init = log_odds_init
    self._initializer = _get_initializer(log_odds_init)
    self._soft_mask_for_inference = bool(soft_mask_for_inference)
    self._keep_first_channel_alive = bool(keep_first_channel_alive)
    self._annealing_rate = annealing_rate
    self._global_step = global_step
    self.mask = None
    # The name scope of the build, in a tf.compat.v1 graph (see
    # `_open_name_scope`).
    self._graph_scope = None

  @property
  def axis(self) -> int:
    return self._axis

  @property
  def straight_through(self) -> bool:
    return self._straight_through

  @property
  def temperature(self):
    """The current temperature (annealed from `global_step` if configured)."""
    if not self._annealing_rate:
      return self._temperature
    step = tf.cast(tf.convert_to_tensor(self._global_step), tf.float32)
    return tf.cast(self._temperature, tf.float32) * tf.pow(
        0.1, step / float(self._annealing_rate))

  def _channel_axis(self, rank: int) -> int:
    if not -rank <= self._axis < rank:
      raise ValueError(
          f'axis {self._axis} is out of range for an input of rank {rank}. '
          'Pass the channel axis, e.g. axis=-1. Received: '
          f'axis={self._axis!r}.')
    return self._axis % rank

  def _open_name_scope(self):
    # Calls re-enter the build scope in a v1 graph, so that a second gate
    # is `logistic_sigmoid_gating_1/mask_logits`, not `..._1_1/...`.
    return graph_names.reenter_build_scope(super()._open_name_scope(),
                                           self._graph_scope)

  def build(self, input_shape):
    if graph_names.in_v1_graph():
      self._graph_scope = tf.get_current_name_scope()
    shape = tuple(input_shape)
    axis = self._channel_axis(len(shape))
    mask_len = shape[axis]
    if mask_len is None:
      raise ValueError(
          'The channel dimension of the gated activation must be known. '
          f'Received: input shape {shape} with axis={self._axis}.')
    self.mask_logits = self.add_weight(
        name='mask_logits', shape=(int(mask_len),), initializer=self._initializer,
        trainable=True, autocast=False, dtype='float32')

  @property
  def logits_variable(self):
    """The `tf.Variable` holding the log-odds (read without autocasting)."""
    value = self.mask_logits.value
    return value if isinstance(value, tf.Variable) else self.mask_logits

  def _logits(self) -> tf.Tensor:
    return tf.convert_to_tensor(self.logits_variable)

  def sample_mask(self) -> tf.Tensor:
    """A fresh training-mode mask (before `keep_first_channel_alive`).

    Used by the regularizer to re-sample the mask outside the analysed graph.
    """
    return _logistic_sigmoid_sample(self._logits(), self.temperature,
                                    self._straight_through, gating_op=False)

  def inference_mask(self) -> tf.Tensor:
    """The deterministic inference mask (before `keep_first_channel_alive`)."""
    return self._inference_mask(self._logits())

  def _inference_mask(self, logits: tf.Tensor) -> tf.Tensor:
    mask = tf.cast(logits > 0.0, logits.dtype)
    if self._soft_mask_for_inference:
      mask = tf.sigmoid(logits) * mask
    return mask

  def call(self, activation, is_training=None, training=None):
    """Returns `mask * activation`.

    Args:
      activation: the tensor to gate.
      is_training: the original's argument: True samples a mask, False uses
        the inference mask. Takes precedence over `training`.
      training: Keras' training flag (set by `fit`, `predict`, ...).
    """
    is_training = _resolve_training(is_training, training)
    rank = activation.shape.rank
    axis = self._channel_axis(rank)
    with _layer_scope(self):
      logits = self._logits()
      if is_training:
        tau = self.temperature
        mask = _logistic_sigmoid_sample(logits, tau, self._straight_through)
        is_gating_op = _creates_gating_op(tau)
      else:
        mask = tf.identity(self._inference_mask(logits),
                           name=gating_ops.GATING_OP_NAME)
        is_gating_op = True
      if is_gating_op and not tf.executing_eagerly():
        gating_ops.register_gating_op(mask.op, logits, gate=self,
                                      is_training=is_training)
      if self._keep_first_channel_alive:
        channels = int(mask.shape[0])
        first = tf.constant([1.0] + [0.0] * (channels - 1), mask.dtype)
        mask = tf.maximum(mask, first)
      if mask.dtype != activation.dtype:
        mask = tf.cast(mask, activation.dtype)
      self.mask = mask
      if axis != rank - 1:
        mask = tf.reshape(mask, [-1] + [1] * (rank - 1 - axis))
      return mask * activation

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    log_odds_init = self._log_odds_init
    if not isinstance(log_odds_init, (numbers.Real, str)):
      log_odds_init = keras.initializers.serialize(self._initializer)
    temperature = self._temperature
    if not isinstance(temperature, numbers.Real):
      temperature = float(keras.ops.convert_to_numpy(temperature))
    config.update({
        'axis': self._axis,
        'temperature': temperature,
        'straight_through': self._straight_through,
        'log_odds_init': log_odds_init,
        'soft_mask_for_inference': self._soft_mask_for_inference,
        'keep_first_channel_alive': self._keep_first_channel_alive,
        # global_step is not serializable: pass it again to from_config's
        # layer (annealing without it raises the constructor's error).
        'annealing_rate': self._annealing_rate,
    })
    return config


def logistic_sigmoid_gating(activation, axis: int, is_training: bool,
                            temperature: Any = 0.001,
                            straight_through: bool = False,
                            log_odds_init: Any = 2.5,
                            soft_mask_for_inference: bool = True,
                            keep_first_channel_alive: bool = True,
                            annealing_rate: Optional[float] = None,
                            global_step: Any = None,
                            scope: Optional[str] = None):
  """Gates `activation` with a new `LogisticSigmoidGating` layer.

  Graph names: `<scope>/mask_logits` (the variable, in a `tf.compat.v1`
  graph) and `<scope>/LogisticSigmoidGating` (the gating op); `scope`
  defaults to `logistic_sigmoid_gating` (uniquified `_1`, ... per
  `tf.compat.v1` graph, as in the original; eagerly by Keras' counter).
  A new layer (new variables) is created on every call: in a `tf.function`
  or a Keras model create the layer once instead.

  Args:
    activation: the tensor to gate.
    axis: the channel axis.
    is_training: sample the mask (True) or use the inference mask (False).
    temperature, straight_through, log_odds_init, soft_mask_for_inference,
    keep_first_channel_alive, annealing_rate, global_step: see
      `LogisticSigmoidGating`.
    scope: the layer name.

  Returns:
    The gated activation.
  """
  layer = LogisticSigmoidGating(
      axis=axis, temperature=temperature, straight_through=straight_through,
      log_odds_init=log_odds_init,
      soft_mask_for_inference=soft_mask_for_inference,
      keep_first_channel_alive=keep_first_channel_alive,
      annealing_rate=annealing_rate, global_step=global_step, name=scope)
  return layer(activation, is_training=is_training)


def add_gating_to_fn(fn: Callable[..., Any],
                     gating_fn: Callable[..., Any] = logistic_sigmoid_gating,
                     axis: int = 3, is_training: bool = True,
                     **kwargs_for_gating_fn) -> Callable[..., Any]:
  """Returns `fn` followed by `gating_fn`.

  `is_training` is bound here: an `is_training=` passed to the returned
  callable goes to `fn`, not to the gating.

  Args:
    fn: the function to gate (e.g. `tf.nn.relu`).
    gating_fn: called as `gating_fn(output, axis, is_training, **kwargs)`.
    axis: the channel axis.
    is_training: the gating's training flag.
    **kwargs_for_gating_fn: further arguments of `gating_fn`.

  Returns:
    A callable `(*args, **kwargs)` computing
    `gating_fn(fn(*args, **kwargs), axis, is_training, **kwargs_for_gating_fn)`.
  """
  def gated_fn(*args, **kwargs):
    return gating_fn(fn(*args, **kwargs), axis, is_training,
                     **kwargs_for_gating_fn)
  return gated_fn


def gated_relu_activation(gating_fn: Callable[..., Any] = logistic_sigmoid_gating,
                          axis: int = 3, is_training: bool = True,
                          **kwargs) -> Callable[..., Any]:
  """`tf.nn.relu` followed by gating (see `add_gating_to_fn`)."""
  return add_gating_to_fn(tf.nn.relu, gating_fn=gating_fn, axis=axis,
                          is_training=is_training, **kwargs)


class FusedBatchNorm(keras.layers.Layer):
  """Batch norm on 4-D NHWC inputs through `tf.compat.v1.nn.fused_batch_norm`.

  The default `BN_FN` of `gated_batch_norm` (replacing the original's contrib
  batch norm): its op is a `FusedBatchNormV3`, which the Gamma regularizers
  recognise as a source. In training the batch statistics are used and the
  moving statistics updated (in a `tf.compat.v1` graph the updates are added
  to `tf.compat.v1.GraphKeys.UPDATE_OPS`, as contrib did); in inference the
  moving statistics are used.

  Args:
    decay: momentum of the moving statistics. Defaults to 0.999.
    center: learn a beta offset. Defaults to True.
    scale: learn a gamma scale. Defaults to True (MorphNet needs gammas).
    epsilon: added to the variance. Defaults to 0.001.
    **kwargs: other `keras.layers.Layer` arguments (e.g. `name`).
  """

  def __init__(self, decay: float = 0.999, center: bool = True,
               scale: bool = True, epsilon: float = 0.001, **kwargs):
    super().__init__(**kwargs)
    self._decay = decay
    self._center = center
    self._scale = scale
    self._epsilon = epsilon

  def build(self, input_shape):
    if len(input_shape) != 4 or input_shape[-1] is None:
      raise ValueError(
          'FusedBatchNorm needs a 4-D NHWC input with a known channel '
          f'dimension. Received: input shape {tuple(input_shape)}.')
    channels = int(input_shape[-1])
    self.gamma = self.add_weight(name='gamma', shape=(channels,),
                                 initializer='ones', trainable=self._scale)
    self.beta = self.add_weight(name='beta', shape=(channels,),
                                initializer='zeros', trainable=self._center)
    self.moving_mean = self.add_weight(name='moving_mean', shape=(channels,),
                                       initializer='zeros', trainable=False)
    self.moving_variance = self.add_weight(
        name='moving_variance', shape=(channels,), initializer='ones',
        trainable=False)

  def call(self, inputs, is_training=None, training=None):
    is_training = _resolve_training(is_training, training)
    with _layer_scope(self):
      if is_training:
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self._epsilon,
            is_training=True)
        updates = [
            self.moving_mean.assign(
                self.moving_mean * self._decay + mean * (1.0 - self._decay)),
            self.moving_variance.assign(
                self.moving_variance * self._decay + variance * (1.0 - self._decay)),
        ]
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        if graph is not None and not getattr(graph, 'building_function', False):
          for update in updates:
            graph.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
      else:
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, mean=self.moving_mean,
            variance=self.moving_variance, epsilon=self._epsilon,
            is_training=False)
    return outputs

  def compute_output_shape(self, input_shape):
    return input_shape


def batch_norm(inputs, decay: float = 0.999, center: bool = True,
               scale: bool = True, epsilon: float = 0.001,
               is_training: bool = True, scope: Optional[str] = None):
  """Applies a new `FusedBatchNorm` layer named `scope` (default `BatchNorm`)."""
  layer = FusedBatchNorm(decay=decay, center=center, scale=scale,
                         epsilon=epsilon, name=scope or 'BatchNorm')
  return layer(inputs, is_training=is_training)


# The batch norm wrapped by gated_batch_norm (the original's module global).
BN_FN = batch_norm


def gated_batch_norm(gating_fn: Callable[..., Any] = logistic_sigmoid_gating,
                     axis: int = 3, is_training: bool = True,
                     **kwargs) -> Callable[..., Any]:
  """`BN_FN` followed by gating (see `add_gating_to_fn`).

  The batch norm's own `is_training` (default True) is passed to the returned
  callable; the `is_training` here is the gating's.
  """
  return add_gating_to_fn(BN_FN, gating_fn=gating_fn, axis=axis,
                          is_training=is_training, **kwargs)
