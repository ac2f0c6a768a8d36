"""Target mode: landing error on two models, and the controller's per-step cost.

Landing: `MorphNetModel(target_fraction=0.5)` + `MorphNetCallback`, Adam 1e-2,
on scikit-learn's digits, for
  * the README's small_cnn (width 16, 8x8x1), 1347 examples, 5 epochs;
  * keras.applications MobileNetV2 (alpha 0.35, weights=None) at 32x32x3
    (digits resized and tiled to 3 channels), 512 examples, 12 epochs.
Printed: initial / target / trained / exported FLOPs, the landing error of the
trained structure (|trained / target - 1|) and of the exported one.

Overhead: per-step time of `fit` on small_cnn, interleaved runs (5 rounds of
one epoch per mode, after a warm-up), medians, for (a) plain Keras, (b)
MorphNetModel at a fixed strength + MorphNetCallback (logging every step),
(c) the same in target mode (the controller updates every step).

Also the controller's own work per update in isolation (the rule, the
variable write) and the time from the last step to the end of `fit` in
target mode (the completion). The machine was shared: per-step medians of the
three modes move by 2x between runs; the isolated figures are steadier.

Usage: python benchmarks/budget.py [--quick] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from morph_net.examples.digits import load_digits  # noqa: E402
from morph_net.examples.models import small_cnn  # noqa: E402
from morph_net.keras_integration import budget  # noqa: E402
from morph_net.keras_integration import callback  # noqa: E402
from morph_net.keras_integration import training  # noqa: E402
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer  # noqa: E402


def _loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def land(name, model, x, y, epochs):
  reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  trainer = training.MorphNetModel(model, reg, target_fraction=0.5)
  trainer.compile(optimizer=keras.optimizers.Adam(1e-2), loss=_loss(),
                  metrics=['accuracy'])
  cb = callback.MorphNetCallback(reg, warn_after_epochs=None)
  start = time.time()
  history = trainer.fit(x, y, batch_size=32, epochs=epochs, verbose=0,
                        callbacks=[cb]).history
  completion = cb.completion
  target = trainer.target_cost
  return {
      'model': name, 'steps': int(trainer.optimizer.iterations),
      'initial': 2 * target, 'target': target,
      'trained': completion.trained_cost, 'exported': completion.cost,
      'trained_error': completion.trained_cost / target - 1.0,
      'exported_error': completion.cost / target - 1.0,
      'completed': completion.completed, 'refilled': sum(completion.refilled.values()),
      'final_strength_x_initial_cost': history['strength'][-1] * 2 * target,
      'accuracy': history['accuracy'][-1], 'seconds': time.time() - start,
  }


class _StepClock(keras.callbacks.Callback):
  """Records the time at the end of every training step (listed last)."""

  def __init__(self):
    super().__init__()
    self.ends = []

  def on_train_batch_end(self, batch, logs=None):
    self.ends.append(time.perf_counter())


def overhead(x, y, rounds):
  def make(mode):
    keras.utils.set_random_seed(0)
    model = small_cnn(input_shape=(8, 8, 1), width=16)
    if mode == 'plain':
      model.compile(optimizer='adam', loss=_loss())
      return model, []
    reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
    kwargs = {'target_fraction': 0.5} if mode == 'target' else {}
    trainer = training.MorphNetModel(model, reg, **kwargs)
    trainer.compile(optimizer='adam', loss=_loss())
    return trainer, [callback.MorphNetCallback(reg, warn_after_epochs=None)]

  modes = ('plain', 'fixed strength + callback', 'target + callback')
  built = {m: make(m.split(' ')[0]) for m in modes}
  steps = len(x) // 32
  times = {m: [] for m in modes}
  end_seconds = []
  for model, cbs in built.values():  # warm-up: compile
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=cbs)
  for _ in range(rounds):
    for m, (model, cbs) in built.items():
      clock = _StepClock()
      model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=cbs + [clock])
      # Steps 2..N (the callbacks' per-step work included; fit's start and
      # end, e.g. the target-mode completion, excluded).
      times[m].append((clock.ends[-1] - clock.ends[0]) / (len(clock.ends) - 1) * 1e3)
      if m.startswith('target'):
        end_seconds.append(time.perf_counter() - clock.ends[-1])
  medians = {m: statistics.median(v) for m, v in times.items()}
  # The controller's own work per update, in isolation: the rule, and writing
  # the strength variable.
  trainer = built[modes[2]][0]
  per_call = {}
  for name, fn in (('rule_ms', lambda: budget.next_strength(1e-6, 1.0, 2.0, 1)),
                   ('assign_ms', lambda: setattr(trainer, 'regularization_strength',
                                                 1e-6))):
    samples = []
    for _ in range(5):
      start = time.perf_counter()
      for _ in range(200):
        fn()
      samples.append((time.perf_counter() - start) / 200 * 1e3)
    per_call[name] = statistics.median(samples)
  return {'ms_per_step': medians, 'controller_update': per_call, 'steps_per_epoch': steps, 'rounds': rounds,
          'train_end_seconds_target_mode': statistics.median(end_seconds),
          'target_vs_fixed': medians[modes[2]] / medians[modes[1]],
          'target_vs_plain': medians[modes[2]] / medians[modes[0]]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--quick', action='store_true', help='overhead only')
  parser.add_argument('--rounds', type=int, default=5, help='overhead rounds')
  args = parser.parse_args()
  (x, y), _ = load_digits()
  results = {}
  if not args.quick:
    keras.utils.set_random_seed(0)
    results['small_cnn'] = land('small_cnn w16 8x8', small_cnn(input_shape=(8, 8, 1),
                                                               width=16), x, y, epochs=5)
    print(json.dumps(results['small_cnn']))
    keras.utils.set_random_seed(0)
    x32 = np.repeat(tf.image.resize(x[:512], (32, 32)).numpy(), 3, axis=-1)
    mobilenet = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                               weights=None, classes=10,
                                               classifier_activation=None)
    results['mobilenet_v2'] = land('MobileNetV2 a0.35 32x32', mobilenet, x32, y[:512],
                                   epochs=12)
    print(json.dumps(results['mobilenet_v2']))
  results['overhead'] = overhead(x, y, rounds=args.rounds)
  print(json.dumps(results['overhead']))
  print(f'date {time.strftime("%Y-%m-%d")}, machine {os.cpu_count()} CPU '
        f'{platform.machine()} (shared)')
  for key in ('small_cnn', 'mobilenet_v2'):
    if key in results:
      r = results[key]
      print(f'| {r["model"]} | {r["steps"]} | {r["initial"]:,.0f} | {r["target"]:,.0f} | '
            f'{r["trained"]:,.0f} ({100 * r["trained_error"]:+.1f}%) | '
            f'{r["exported"]:,.0f} ({100 * r["exported_error"]:+.1f}%) | '
            f'{r["accuracy"]:.3f} |')
  o = results['overhead']
  print('| ' + ' | '.join(f'{v:.2f}' for v in o['ms_per_step'].values())
        + f' | {o["target_vs_fixed"]:.3f} | {o["target_vs_plain"]:.3f} | '
        f'{o["controller_update"]["rule_ms"]:.4f} + {o["controller_update"]["assign_ms"]:.2f}'
        f' | {o["train_end_seconds_target_mode"]:.2f} |')


if __name__ == '__main__':
  main()
