"""Training to a 50% FLOPs target lands on it (within +-5% of the target).

A small CNN (residual add, concat, BatchNorm after every conv; widths 16, 16,
12, 12, 24) learns which quadrant of a 16x16 image is brightest, in target
mode (`MorphNetModel(target_fraction=0.5)`, default adapt rate, threshold
1e-2). The landing error is |exported cost / target - 1|.

* Default optimizer settings (Adam, learning rate 1e-3): a gamma travels about
  1e-3 per step, so channels start dying after ~800 steps; 60 epochs of 16
  steps (slow: ~40 s on 2 shared cores).
* Fast variant: Adam 1e-2, 12 epochs of 16 steps.
"""

from __future__ import annotations

import keras
import pytest

from morph_net.keras_integration import callback
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from tests.integration import small_cnn

layers = keras.layers
WIDTHS = {'c1': 16, 'c2': 16, 'c3': 12, 'c4': 12, 'c5': 24}


def build_model():
  keras.utils.set_random_seed(1)
  inputs = keras.Input((16, 16, 1))

  def conv_bn_relu(x, name, kernel, stride=1):
    x = layers.Conv2D(WIDTHS[name], kernel, strides=stride, padding='same',
                      use_bias=False, name=name)(x)
    return layers.ReLU()(layers.BatchNormalization(name=name + '_bn')(x))

  x = conv_bn_relu(inputs, 'c1', 3, stride=2)
  x = layers.Add()([x, conv_bn_relu(x, 'c2', 3)])
  x = layers.Concatenate()([conv_bn_relu(x, 'c3', 1), conv_bn_relu(x, 'c4', 3)])
  x = conv_bn_relu(x, 'c5', 3, stride=2)
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(4, name='fc')(x), name='landing_cnn')


def initial_flops():
  # 2 * output pixels * k * k * C_in * C_out per conv, 2 * 24 * 4 for fc.
  return (2 * 64 * 9 * 1 * 16 + 2 * 64 * 9 * 16 * 16 + 2 * 64 * 1 * 16 * 12
          + 2 * 64 * 9 * 16 * 12 + 2 * 16 * 9 * 24 * 24 + 2 * 24 * 4)


def land(optimizer, epochs):
  model = build_model()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 1e-2)
  trainer = training.MorphNetModel(model, reg, target_fraction=0.5)
  trainer.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
  x, y = small_cnn.make_data(512)
  cb = callback.MorphNetCallback(reg, warn_after_epochs=None)
  history = trainer.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
                        callbacks=[cb]).history
  return trainer, cb.completion, history


def _check_landing(trainer, completion, history):
  assert trainer.target_cost == pytest.approx(0.5 * initial_flops())
  assert abs(completion.cost / trainer.target_cost - 1.0) <= 0.05
  assert completion.cost <= trainer.target_cost
  assert history['accuracy'][-1] > 0.5  # 4 classes: chance is 0.25


@pytest.mark.slow  # ~30 s; readme_test lands the README example in the default suite
def test_lands_on_the_target_fast_variant():
  trainer, completion, history = land(keras.optimizers.Adam(1e-2), epochs=12)
  _check_landing(trainer, completion, history)
  # Training itself removed channels (the completion did not do it all).
  assert history['FLOPs'][-1] < 0.8 * initial_flops()


@pytest.mark.slow
def test_lands_on_the_target_from_default_optimizer_settings():
  trainer, completion, history = land('adam', epochs=60)
  _check_landing(trainer, completion, history)
  assert history['strength'][-1] > history['strength'][0]
