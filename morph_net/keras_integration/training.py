"""Training with MorphNet in Keras 3: `loss + strength * regularization_term`.

`MorphNetModel` wraps a user model; `compile` and `fit` are then used exactly as
before. The term is added in `compute_loss` only when training (validation loss
stays the task loss), scaled for `tf.distribute` like Keras' own additional
losses, and computed from the variables in the train step itself, eagerly or
inside the compiled `tf.function`.

Example:

  reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  strength = recommend_strength(reg).strength
  trainer = MorphNetModel(model, reg, regularization_strength=strength)
  trainer.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
  trainer.fit(x, y, callbacks=[MorphNetCallback(reg, export_dir=train_dir)])
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import keras
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import distribution


def _check_strength(value) -> float:
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
    regularization_strength: the term's weight, >= 0.
    **kwargs: passed to `keras.Model` (e.g. `name`).

  Save `trainer.model` (the wrapped model), not the wrapper itself.

  `regularization_strength` may be changed at any time (e.g. from a callback):
  the compiled train step reads it from a non-trainable scalar weight of the
  wrapper, so the new value applies from the next step without recompiling.
  """

  def __init__(self, model: keras.Model,
               network_regularizer: generic_regularizers.NetworkRegularizer,
               regularization_strength: float, **kwargs):
    if not isinstance(network_regularizer, generic_regularizers.NetworkRegularizer):
      raise TypeError(
          'network_regularizer must be a morph_net NetworkRegularizer. Received: '
          f'{type(network_regularizer).__name__}.')
    kwargs.setdefault('name', f'{model.name}_morphnet')
    super().__init__(**kwargs)
    self.model = model
    self._network_regularizer = network_regularizer
    self._regularization_strength = _check_strength(regularization_strength)
    # The compiled train step reads the strength from a variable, so that a
    # new strength (e.g. set from a callback) applies without recompiling.
    self._strength_variable = self.add_weight(
        shape=(), dtype='float32', trainable=False, name='regularization_strength',
        initializer=keras.initializers.Constant(self._regularization_strength))

  @property
  def network_regularizer(self) -> generic_regularizers.NetworkRegularizer:
    return self._network_regularizer

  @property
  def regularization_strength(self) -> float:
    return self._regularization_strength

  @regularization_strength.setter
  def regularization_strength(self, value: float):
    self._regularization_strength = _check_strength(value)
    self._strength_variable.assign(self._regularization_strength)

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
