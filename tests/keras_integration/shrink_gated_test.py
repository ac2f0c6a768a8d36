"""Shrinking a model with LogisticSigmoidGating layers (issue 8 + issue 5)."""

import keras
import numpy as np
import pytest

from morph_net.keras_integration import shrink
from morph_net.network_regularizers import flop_regularizer
from morph_net.probabilistic_gating import activation_gating


def _gated_model():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(6, 3, padding='same', name='c1')(inputs)
  x = activation_gating.LogisticSigmoidGating(axis=-1, name='g1')(x, training=False)
  x = keras.layers.Conv2D(4, 1, name='c2')(x)
  x = activation_gating.LogisticSigmoidGating(axis=-1, name='g2')(x, training=False)
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_gated_model_shrinks_with_gates_following_their_input():
  model = _gated_model()
  # Gate logits: channels 1, 3 of c1 off (-20), the rest on (+20).
  model.get_layer('g1').set_weights([np.array([20, -20, 20, -20, 20, 20], np.float32)])
  model.get_layer('g2').set_weights([np.full([4], 20.0, np.float32)])
  reg = flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(
      model, mask_as_alive_vector=False)
  reduced = shrink.shrink_model(model, reg, transfer_weights=True)
  assert reduced.get_layer('c1').filters == 4
  assert reduced.get_layer('g1').get_weights()[0].tolist() == [20, 20, 20, 20]
  assert reduced.get_layer('c2').get_weights()[0].shape == (1, 1, 4, 4)
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype('float32')
  # Gates of +-20 are exactly 1 / 0 in float32 inference (sigmoid(20) rounds to
  # 1), so removing the gated-off channels leaves the output unchanged.
  np.testing.assert_allclose(reduced(x, training=False), model(x, training=False),
                             atol=1e-5)


def test_logistic_sigmoid_on_a_model_without_gates_names_the_gating_layer():
  inputs = keras.Input((8, 8, 3))
  model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
  with pytest.raises(ValueError, match='need LogisticSigmoidGating layers'):
    flop_regularizer.LogisticSigmoidFlopsRegularizer.from_keras_model(model)
