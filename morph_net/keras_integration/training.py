"""Training with MorphNet in Keras 3: `loss + strength * regularization_term`.

`MorphNetModel` wraps a user model; `compile` and `fit` are then used exactly as
before. The term is added in `compute_loss` only when training (validation loss
stays the task loss), scaled for `tf.distribute` like Keras' own additional
losses, and computed from the variables in the train step itself, eagerly or
inside the compiled `tf.function`.

Example:

  reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  trainer = MorphNetModel(model, reg, target_fraction=0.5)  # or a fixed strength
  trainer.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  trainer.fit(x, y, callbacks=[MorphNetCallback(reg, export_dir=train_dir)])
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple
import warnings

from absl import logging

import keras
import numpy as np
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import budget
from morph_net.keras_integration import distribution


def _check_strength(value) -> float:
  if isinstance(value, (str, bytes, bool)):
    raise TypeError(
        'regularization_strength must be a number, not a string or bool. Received: '
        f'regularization_strength={value!r}. Pass e.g. 1e-7 or '
        'recommend_strength(reg).strength.')
  try:
    strength = float(value)
  except (TypeError, ValueError):
    raise TypeError(
        'regularization_strength must be a number. Received: '
        f'regularization_strength={value!r}.') from None
  if not strength >= 0.0 or strength == float('inf'):
    raise ValueError(
        'regularization_strength must be finite and >= 0. Received: '
        f'regularization_strength={value!r}. A good start is 1 / initial cost: '
        'see recommend_strength().')
  return strength


def scale_for_distribution(value: tf.Tensor) -> tf.Tensor:
  """Divides `value` by the number of replicas in sync (as Keras scales losses)."""
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  if replicas > 1:
    value = value * (1.0 / replicas)
  return value


class MorphNetModel(distribution.MultiWorkerFitMixin, keras.Model):
  """A Keras model whose training loss includes a MorphNet regularization term.

  Args:
    model: the Keras model to train; its layers and weights are shared.
    network_regularizer: a MorphNet `NetworkRegularizer` built on `model`
      (e.g. `GammaFlopsRegularizer.from_keras_model(model, ...)`).
    regularization_strength: the term's weight, >= 0 (the initial weight in
      target mode). Defaults to `recommend_strength` (1 / initial cost).
    target_cost: train to this cost (in the regularizer's unit, e.g. FLOPs):
      the strength then adapts during training (`budget` module doc).
    target_fraction: train to this fraction of the cost at construction (e.g.
      0.5). At most one of `target_cost` / `target_fraction`.
    adapt_rate: the controller's log-strength change per step (target mode).
      Defaults to `budget.DEFAULT_RATE`.
    **kwargs: passed to `keras.Model` (e.g. `name`).

  In target mode the strength is adapted by `MorphNetCallback` (`fit` adds one,
  without export, when none is given) and logged as `strength`.

  Saving: `save()` (and so `ModelCheckpoint` of the full model) saves the
  wrapped model, which `keras.models.load_model` reads back as a plain model;
  it says so once in the log. `save_weights` / weights-only checkpoints /
  `BackupAndRestore` save the wrapper's state too (the adapted strength and
  the target, non-trainable weights) with the model's weights: load them with
  `trainer.load_weights`, or into the bare model with
  `load_model_weights(model, path)`.

  `regularization_strength` may be changed at any time (e.g. from a callback):
  the compiled train step reads it from a non-trainable scalar weight of the
  wrapper, so the new value applies from the next step without recompiling.

  Raises:
    TypeError: the regularizer is not a NetworkRegularizer, or the strength or
      a target is not a number.
    ValueError: the regularizer was traced from another model, or a value is
      out of range.
  """

  def __init__(self, model: keras.Model,
               network_regularizer: generic_regularizers.NetworkRegularizer,
               regularization_strength: Optional[float] = None, *,
               target_cost: Optional[float] = None,
               target_fraction: Optional[float] = None,
               adapt_rate: float = budget.DEFAULT_RATE, **kwargs):
    if not isinstance(model, keras.Model):
      raise TypeError(f'model must be a keras.Model. Received: {type(model).__name__}.')
    if not isinstance(network_regularizer, generic_regularizers.NetworkRegularizer):
      raise TypeError(
          'network_regularizer must be a morph_net NetworkRegularizer. Received: '
          f'{type(network_regularizer).__name__}.')
    check_regularizer_of(network_regularizer, model)
    target_cost, target_fraction = budget.check_target(target_cost, target_fraction)
    self._adapt_rate = budget.check_rate(adapt_rate)
    initial_cost = None
    if target_fraction is not None or regularization_strength is None:
      initial_cost = recommend_strength(network_regularizer).initial_cost
    if regularization_strength is None:
      regularization_strength = 1.0 / initial_cost
    strength = _check_strength(regularization_strength)
    if target_fraction is not None:
      target_cost = target_fraction * initial_cost
    kwargs.setdefault('name', f'{model.name}_morphnet')
    super().__init__(**kwargs)
    self.model = model
    self._network_regularizer = network_regularizer
    self._regularization_strength = strength
    # The compiled train step reads the strength from a variable, so that a
    # new strength (e.g. set from a callback) applies without recompiling.
    # Both are non-trainable weights: checkpoints keep the adapted strength.
    self._strength_variable = self.add_weight(
        shape=(), dtype='float32', trainable=False, name='regularization_strength',
        initializer=keras.initializers.Constant(self._regularization_strength))
    self._target_variable = self.add_weight(
        shape=(), dtype='float32', trainable=False, name='target_cost',
        initializer=keras.initializers.Constant(target_cost or 0.0))
    self._warned_save = False
    if model.built:
      self.built = True

  @property
  def network_regularizer(self) -> generic_regularizers.NetworkRegularizer:
    return self._network_regularizer

  @property
  def regularization_strength(self) -> float:
    # The variable is the truth (a checkpoint restore writes it); the Python
    # value keeps the float64 a user set while it agrees with the variable.
    stored = np.float32(keras.ops.convert_to_numpy(self._strength_variable))
    if stored == np.float32(self._regularization_strength):
      return self._regularization_strength
    return float(stored)

  @regularization_strength.setter
  def regularization_strength(self, value: float):
    self._regularization_strength = _check_strength(value)
    self._strength_variable.assign(self._regularization_strength)

  @property
  def target_cost(self) -> Optional[float]:
    """The target cost in target mode (restored from checkpoints), else None."""
    value = float(keras.ops.convert_to_numpy(self._target_variable))
    return value if value > 0.0 else None

  @property
  def adapt_rate(self) -> float:
    return self._adapt_rate

  def call(self, inputs, training=None):
    return self.model(inputs, training=training)

  # Not converted by autograph when the train step is compiled: the term is
  # plain Python over a fixed op list, and converting it costs seconds.
  @tf.autograph.experimental.do_not_convert
  def regularization_loss(self) -> tf.Tensor:
    """`strength * get_regularization_term()`, float32, in the current context."""
    term = tf.cast(self._network_regularizer.get_regularization_term(), tf.float32)
    return tf.cast(self._strength_variable.value, tf.float32) * term

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    loss = super().compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
    if not training:
      return loss
    extra = scale_for_distribution(self.regularization_loss())
    return loss + tf.cast(extra, loss.dtype)

  def fit(self, *args, **kwargs):
    """`keras.Model.fit`; in target mode adds a `MorphNetCallback` if none is given."""
    if self.target_cost is not None:
      from morph_net.keras_integration import callback as callback_lib  # pylint: disable=g-import-not-at-top
      callbacks = kwargs.get('callbacks')
      listed = list(callbacks.callbacks if isinstance(
          callbacks, keras.callbacks.CallbackList) else (callbacks or []))
      if not any(isinstance(c, callback_lib.MorphNetCallback) for c in listed):
        listed.append(callback_lib.MorphNetCallback(self._network_regularizer))
        kwargs['callbacks'] = listed
    return super().fit(*args, **kwargs)

  def save(self, filepath, *args, **kwargs):
    """Saves the wrapped model (not the wrapper); see the class doc."""
    if not self._warned_save:
      self._warned_save = True
      logging.info(
          'MorphNetModel.save(%r) saves the wrapped model %r (load it with '
          'keras.models.load_model); the wrapper\'s strength and target are saved by '
          'save_weights / BackupAndRestore.', str(filepath), self.model.name)
    return self.model.save(filepath, *args, **kwargs)

  def get_config(self):
    raise NotImplementedError(
        'A MorphNetModel cannot be serialized (it holds a traced regularizer). '
        'Received: a call to get_config on MorphNetModel '
        f'{self.name!r}. Save the wrapped model: trainer.save(path) saves '
        'trainer.model.')


class _WeightsLayout(keras.Model):
  """Has the variable layout of a MorphNetModel around `model` (for loading)."""

  def __init__(self, model):
    super().__init__(name=f'{model.name}_morphnet')
    self.model = model
    for name in ('regularization_strength', 'target_cost'):
      self.add_weight(shape=(), dtype='float32', trainable=False, name=name,
                      initializer='zeros')
    self.built = True

  def call(self, inputs, training=None):
    return self.model(inputs, training=training)


def load_model_weights(model: keras.Model, filepath: str) -> keras.Model:
  """Loads a MorphNetModel weights file (`.weights.h5`) into the bare `model`.

  Args:
    model: a model with the architecture of the trainer's wrapped model.
    filepath: a file written by `trainer.save_weights` or a weights-only
      `ModelCheckpoint` of the trainer.

  Returns:
    `model`, with the loaded weights.
  """
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='.*optimizer.*')
    warnings.filterwarnings('ignore', message='.*Skipping variable loading.*')
    _WeightsLayout(model).load_weights(filepath)
  return model


def check_regularizer_of(network_regularizer, model) -> None:
  """Raises ValueError if `network_regularizer` was traced from another model."""
  traced = getattr(network_regularizer, 'traced_model', None)
  traced_model = getattr(traced, 'model', None)
  if traced_model is not None and traced_model is not model:
    raise ValueError(
        'The network regularizer was traced from another model, so its term would '
        'not reach this model\'s weights. Received: a regularizer traced from model '
        f'{traced_model.name!r} for model {model.name!r}. Build it from this model: '
        f'{type(network_regularizer).__name__}.from_keras_model(model, ...).')


@dataclasses.dataclass(frozen=True)
class StrengthRecommendation:
  """Initial cost of a network and the regularization strengths to try.

  Attributes:
    initial_cost: `get_cost()` with the current (initial) weights.
    strength: 1 / initial_cost, the centre of the search.
    search_range: strengths spanning the usual log-scale search, from
      0.1 / initial_cost to 1000 / initial_cost.
  """
  initial_cost: float
  strength: float
  search_range: Tuple[float, ...]


def recommend_strength(network_regularizer) -> StrengthRecommendation:
  """Reports the initial cost and the strength ~ 1 / cost to start from.

  The original README: "search the strength on a log scale over a few orders of
  magnitude around 1/(initial cost)"; its Keras example used 1000 / cost.

  Raises:
    ValueError: the initial cost is 0 (nothing to regularize).
  """
  cost = float(network_regularizer.get_cost())
  if not cost > 0.0:
    raise ValueError(
        'The network has zero cost under this regularizer, so no strength can be '
        f'derived. Received: initial cost {cost!r} from '
        f'{type(network_regularizer).__name__}. Check that the regularizer found '
        'source ops (e.g. BatchNormalization with scale=True for Gamma '
        'regularizers).')
  multipliers = (0.1, 1.0, 10.0, 100.0, 1000.0)
  return StrengthRecommendation(
      initial_cost=cost, strength=1.0 / cost,
      search_range=tuple(m / cost for m in multipliers))
