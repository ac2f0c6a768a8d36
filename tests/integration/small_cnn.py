"""A small CNN and learnable synthetic data for the fit() integration tests.

Also runnable as a script (`python -m tests.integration.small_cnn`): it splits
the CPU into two logical devices, which TensorFlow allows only before it
initialises its devices, hence a separate process. It then compares
`get_cost()` / `get_regularization_term()` under a two-replica
`MirroredStrategy` with the single-device values, runs a short `fit` and
prints the results as one JSON line.
"""

from __future__ import annotations

import json
import os

import numpy as np

IMAGE_SIZE = 16
NUM_CLASSES = 4
FILTERS = {'c1': 8, 'c2': 8, 'c3': 6, 'c4': 6, 'c5': 8}


def build_model():
  """16x16x1 -> c1 (8, stride 2) -> c2 (8) + residual add -> c3 (6, 1x1) and
  c4 (6, 3x3) -> concat (12) -> c5 (8, stride 2) -> global pool -> fc (4).

  Every conv is followed by BatchNormalization and ReLU. Seeded: the same
  weights on every call.
  """
  import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers
  keras.utils.set_random_seed(1)
  inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))

  def conv_bn_relu(x, name, kernel, stride=1):
    x = layers.Conv2D(FILTERS[name], kernel, strides=stride, padding='same',
                      use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=name + '_bn')(x)
    return layers.ReLU(name=name + '_relu')(x)

  x = conv_bn_relu(inputs, 'c1', 3, stride=2)
  x = layers.Add(name='add')([x, conv_bn_relu(x, 'c2', 3)])
  x = layers.Concatenate(name='concat')([conv_bn_relu(x, 'c3', 1),
                                         conv_bn_relu(x, 'c4', 3)])
  x = conv_bn_relu(x, 'c5', 3, stride=2)
  x = layers.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(inputs, layers.Dense(NUM_CLASSES, name='fc')(x), name='small_cnn')


def set_random_gammas(model, seed=0):
  """Gammas uniform in [-1, 1]: with threshold 0.3 some channels are dead."""
  rng = np.random.default_rng(seed)
  for name in FILTERS:
    gamma = model.get_layer(name + '_bn').gamma
    gamma.assign(rng.uniform(-1.0, 1.0, gamma.shape).astype(np.float32))


def make_data(num_examples, seed=0):
  """Uniform noise plus 1.0 on one quadrant; the label is that quadrant."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (num_examples, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, num_examples)
  half = IMAGE_SIZE // 2
  for i, label in enumerate(y):
    row, col = divmod(int(label), 2)
    x[i, row * half:(row + 1) * half, col * half:(col + 1) * half] += 1.0
  return x, y


def _distributed_main():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import keras  # pylint: disable=g-import-not-at-top

  from morph_net.keras_integration import callback  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import training  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

  model = build_model()
  set_random_gammas(model)
  weights = model.get_weights()
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, 0.3)
  single = [float(reg.get_cost()), float(reg.get_regularization_term())]

  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  with strategy.scope():
    mirrored_model = build_model()
    mirrored_model.set_weights(weights)
    mirrored_reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        mirrored_model, 0.3)
    trainer = training.MorphNetModel(mirrored_model, mirrored_reg, 1e-5)
    trainer.compile(optimizer=keras.optimizers.Adam(0.01),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  mirrored = [float(mirrored_reg.get_cost()),
              float(mirrored_reg.get_regularization_term())]

  @tf.function(autograph=False)  # the regularizer code needs no conversion
  def in_replicas():
    return strategy.run(
        lambda: (mirrored_reg.get_cost(), mirrored_reg.get_regularization_term()))

  per_replica = [[float(v) for v in values] for values in zip(
      *(strategy.experimental_local_results(t) for t in in_replicas()))]

  def gamma_gradients(network, regularizer):
    # d term / d gamma of each BN, in FILTERS order, as lists.
    gammas = [network.get_layer(name + '_bn').gamma for name in FILTERS]
    with tf.GradientTape() as tape:
      term = regularizer.get_regularization_term()
    return [tf.convert_to_tensor(g) if g is not None else tf.zeros([0])
            for g in tape.gradient(term, gammas)]

  single_gradients = [g.numpy().tolist() for g in gamma_gradients(model, reg)]

  @tf.function(autograph=False)
  def replica_gradients():
    return strategy.run(lambda: gamma_gradients(mirrored_model, mirrored_reg))

  gradients_per_replica = [
      [g.numpy().tolist() for g in values] for values in zip(
          *(strategy.experimental_local_results(t) for t in replica_gradients()))]
  x, y = make_data(64)
  gamma = mirrored_model.get_layer('c1_bn').gamma
  before = gamma.numpy()
  history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0,
                        callbacks=[callback.MorphNetCallback(mirrored_reg)])
  cost_after_fit = float(mirrored_reg.get_cost())
  gamma_changed = bool(not np.array_equal(gamma.numpy(), before))
  # Target mode: the strength adapts from the callback, in cross-replica context.
  with strategy.scope():
    target_trainer = training.MorphNetModel(mirrored_model, mirrored_reg,
                                            target_fraction=0.5, adapt_rate=0.05)
    target_trainer.compile(optimizer=keras.optimizers.Adam(0.01),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  initial_strength = target_trainer.regularization_strength
  target_callback = callback.MorphNetCallback(mirrored_reg)
  target_history = target_trainer.fit(x, y, batch_size=16, epochs=1, verbose=0,
                                      callbacks=[target_callback])
  print(json.dumps({
      'target': {'initial_strength': initial_strength,
                 'strength': target_history.history['strength'],
                 'target_cost': target_trainer.target_cost,
                 'exported_cost': target_callback.completion.cost},
      'replicas': strategy.num_replicas_in_sync,
      'variable_type': type(mirrored_model.get_layer('c1_bn').gamma.value).__name__,
      'single': single,
      'mirrored': mirrored,
      'per_replica': per_replica,
      'single_gradients': single_gradients,
      'gradients_per_replica': gradients_per_replica,
      'history': history.history,
      'gamma_changed': gamma_changed,
      'cost_after_fit': cost_after_fit,
  }))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  _distributed_main()
