"""Benchmark 2: `fit` step time with the MorphNet term vs without.

ResNet50 (weights=None) at 64x64, batch 16, compiled train step (the Keras
default). Both models share one architecture; the runs alternate (plain,
MorphNet, plain, MorphNet, ...) so that machine drift affects both alike, and the
ratio of median step times is reported. Target (issue 6): ratio <= 1.05.
The inputs are random tensors: only the time of a step is measured here.
Run: python benchmarks/training_overhead.py [--rounds 3 --steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402
import numpy as np  # noqa: E402

from morph_net.keras_integration import training  # noqa: E402
from morph_net.network_regularizers import flop_regularizer  # noqa: E402

import results_table  # noqa: E402


class StepTimer(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.times = []

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def make_model(seed: int) -> keras.Model:
  keras.utils.set_random_seed(seed)
  return keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)


def step_times(model, x, y, steps) -> list:
  timer = StepTimer()
  model.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=steps, verbose=0,
            callbacks=[timer])
  return timer.times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16 * args.steps, 64, 64, 3)).astype('float32')
  y = rng.integers(0, 10, size=(16 * args.steps,))

  plain = make_model(0)
  plain.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')
  inner = make_model(0)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(inner, gamma_threshold=1e-2)
  morph = training.MorphNetModel(inner, reg, training.recommend_strength(reg).strength)
  morph.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')
  for model in (plain, morph):  # warm-up: compile the train functions
    step_times(model, x, y, 3)

  plain_times, morph_times = [], []
  for _ in range(args.rounds):
    plain_times += step_times(plain, x, y, args.steps)[1:]
    morph_times += step_times(morph, x, y, args.steps)[1:]
  plain_ms = statistics.median(plain_times) * 1e3
  morph_ms = statistics.median(morph_times) * 1e3
  ratio = morph_ms / plain_ms
  print(f'ResNet50 64x64 batch 16: plain {plain_ms:.1f} ms/step, with MorphNet term '
        f'{morph_ms:.1f} ms/step, ratio {ratio:.3f} (target <= 1.05; medians over '
        f'{len(plain_times)} steps each)')
  results_table.record('Training overhead (ResNet50 64x64, batch 16, fit, median step)',
                       ['plain ms/step', 'MorphNet ms/step', 'ratio'],
                       [f'{plain_ms:.1f}', f'{morph_ms:.1f}', f'{ratio:.3f}'])


if __name__ == '__main__':
  main()
