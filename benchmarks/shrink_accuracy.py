"""Accuracy of the shrunk model: before, right after shrink, after recalibration, fine-tune.

Trains three models on scikit-learn's digits (8x8) with GammaFlopsRegularizer
until channels die, then shrinks each with `transfer_weights=True`:

  * `demo`: the demo's seed CNN (`morph_net.examples.demo.seed_model`, residual
    Add + Concatenate, 3x3 'same' convs without bias, BN after each), trained
    with the demo's default settings (`DemoConfig()`: 30 epochs, Adam 3e-3,
    strength = recommend_strength, threshold 1e-2);
  * `resnet`: a ResNet-style functional CNN (stem, two identity blocks, one
    projection block, one identity block), trained the same way with 3x the
    recommended strength;
  * `sequential`: a Sequential CNN (conv-BN-ReLU x3, max pooling, Flatten, Dense).

For each it prints the test accuracy of the trained model, of the shrunk model
without constant folding (what shrink did before issue 12) and with it, the max
|logit difference| to the original on the test set (also with the dead gammas
zeroed first, which leaves only the 'same'-padding border error and unfoldable
constants), then after `recalibrate_batch_norm` on the training set and after a
short fine-tune (Adam 1e-3). Appends a row per model to the "Shrink accuracy"
table of benchmarks/README.md with `--write`.

Run from the repository root:

  python benchmarks/shrink_accuracy.py [--epochs 30] [--fine-tune-epochs 3] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from unittest import mock

import keras
import numpy as np

from morph_net.examples import demo
from morph_net.examples import digits
from morph_net.keras_integration import batch_norm_recalibration
from morph_net.keras_integration import constant_folding
from morph_net.keras_integration import shrink
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer

L = keras.layers
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'README.md')
SECTION = '## Shrink accuracy'


def _block(x, filters, name, strides=1, project=False):
  y = L.Conv2D(filters, 3, strides=strides, padding='same', use_bias=False,
               name=f'{name}_a')(x)
  y = L.ReLU(name=f'{name}_a_relu')(L.BatchNormalization(momentum=0.9, name=f'{name}_a_bn')(y))
  y = L.Conv2D(filters, 3, padding='same', use_bias=False, name=f'{name}_b')(y)
  y = L.BatchNormalization(momentum=0.9, name=f'{name}_b_bn')(y)
  if project:
    x = L.Conv2D(filters, 1, strides=strides, use_bias=False, name=f'{name}_proj')(x)
    x = L.BatchNormalization(momentum=0.9, name=f'{name}_proj_bn')(x)
  return L.ReLU(name=f'{name}_relu')(L.Add(name=f'{name}_add')([x, y]))


def resnet_like(width: int = 16) -> keras.Model:
  inputs = keras.Input(digits.IMAGE_SHAPE, name='image')
  x = L.Conv2D(width, 3, padding='same', use_bias=False, name='stem')(inputs)
  x = L.ReLU(name='stem_relu')(L.BatchNormalization(momentum=0.9, name='stem_bn')(x))
  x = _block(x, width, 'b1')
  x = _block(x, width, 'b2')
  x = _block(x, 2 * width, 'b3', strides=2, project=True)
  x = _block(x, 2 * width, 'b4')
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(inputs, L.Dense(digits.NUM_CLASSES, name='logits')(x), name='resnet_like')


def sequential_cnn(width: int = 32) -> keras.Model:
  layers = [keras.Input(digits.IMAGE_SHAPE)]
  for i, filters in enumerate((width, width, 2 * width)):
    layers += [L.Conv2D(filters, 3, padding='same', use_bias=False, name=f'conv{i}'),
               L.BatchNormalization(momentum=0.9, name=f'bn{i}'), L.ReLU(name=f'relu{i}')]
    if i < 2:
      layers.append(L.MaxPooling2D(name=f'pool{i}'))
  layers += [L.Flatten(name='flatten'), L.Dense(digits.NUM_CLASSES, name='logits')]
  return keras.Sequential(layers, name='sequential_cnn')


def _compile(model, learning_rate):
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])


def _accuracy(model, test):
  logits = np.asarray(model.predict(test[0], batch_size=256, verbose=0))
  return float(np.mean(np.argmax(logits, axis=-1) == test[1])), logits


def _train(model, train, epochs, strength_multiplier, seed):
  keras.utils.set_random_seed(seed)
  regularizer = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=1e-2)
  strength = strength_multiplier * training.recommend_strength(regularizer).strength
  trainer = training.MorphNetModel(model, regularizer, regularization_strength=strength)
  _compile(trainer, 3e-3)
  trainer.fit(*train, batch_size=32, epochs=epochs, verbose=0)
  return regularizer


def _zero_dead_gammas(model, masks):
  """A copy of `model` whose dead channels' BN gammas are 0 (same predictions up to them)."""
  clone = keras.models.clone_model(model)
  clone.set_weights(model.get_weights())
  for layer in clone.layers:
    if isinstance(layer, L.BatchNormalization):
      conv = layer.input._keras_history.operation  # pylint: disable=protected-access
      mask = masks.get(conv.name)
      if mask is not None and len(mask) == layer.gamma.shape[0]:
        layer.gamma.assign(np.where(mask, np.asarray(layer.gamma), 0.0).astype(np.float32))
  return clone


def measure(name, model, train, test, epochs, strength_multiplier, fine_tune_epochs, seed):
  start = time.time()
  regularizer = _train(model, train, epochs, strength_multiplier, seed)
  masks = shrink.channel_masks(regularizer)
  alive = sum(int(m.sum()) for m in masks.values()) / sum(len(m) for m in masks.values())
  flops_before = float(regularizer.get_cost())
  acc_before, logits = _accuracy(model, test)
  with mock.patch.object(constant_folding, 'fold_removed_constants', lambda *a: None):
    unfolded = shrink.shrink_model(model, masks, transfer_weights=True)
  acc_unfolded, logits_unfolded = _accuracy(unfolded, test)
  folded = shrink.shrink_model(model, masks, transfer_weights=True)
  acc_folded, logits_folded = _accuracy(folded, test)
  zeroed = _zero_dead_gammas(model, masks)
  _, logits_zeroed = _accuracy(zeroed, test)
  _, logits_zeroed_shrunk = _accuracy(shrink.shrink_model(zeroed, masks, transfer_weights=True),
                                      test)
  batch_norm_recalibration.recalibrate_batch_norm(unfolded, train[0], batch_size=64)
  acc_unfolded_recalibrated, _ = _accuracy(unfolded, test)
  batch_norm_recalibration.recalibrate_batch_norm(folded, train[0], batch_size=64)
  acc_recalibrated, _ = _accuracy(folded, test)
  keras.utils.set_random_seed(seed)
  _compile(folded, 1e-3)
  folded.fit(*train, batch_size=32, epochs=fine_tune_epochs, verbose=0)
  acc_fine_tuned, _ = _accuracy(folded, test)
  row = dict(
      model=name, alive=alive, flops=flops_before, acc_before=acc_before,
      acc_unfolded=acc_unfolded, acc_folded=acc_folded,
      diff_unfolded=float(np.max(np.abs(logits_unfolded - logits))),
      diff_folded=float(np.max(np.abs(logits_folded - logits))),
      agree_unfolded=float(np.mean(logits_unfolded.argmax(-1) == logits.argmax(-1))),
      agree_folded=float(np.mean(logits_folded.argmax(-1) == logits.argmax(-1))),
      diff_zeroed=float(np.max(np.abs(logits_zeroed_shrunk - logits_zeroed))),
      acc_recalibrated=acc_recalibrated, acc_unfolded_recalibrated=acc_unfolded_recalibrated, acc_fine_tuned=acc_fine_tuned,
      seconds=time.time() - start)
  print(f'{name}: alive {alive:.2f}, test accuracy before {acc_before:.3f}; shrunk without '
        f'folding {acc_unfolded:.3f} (agreement {row["agree_unfolded"]:.3f}, max |dlogit| '
        f'{row["diff_unfolded"]:.3g}), with folding {acc_folded:.3f} (agreement '
        f'{row["agree_folded"]:.3f}, max |dlogit| {row["diff_folded"]:.3g}; dead gammas zeroed first: '
        f'{row["diff_zeroed"]:.3g}); recalibrated {acc_recalibrated:.3f} (without folding '
        f'{acc_unfolded_recalibrated:.3f}); fine-tuned '
        f'{fine_tune_epochs} epochs {acc_fine_tuned:.3f} ({row["seconds"]:.0f} s)', flush=True)
  return row


def _append(rows, args) -> None:
  header = (f'{SECTION} (digits 8x8; GammaFlops threshold 1e-2, {args.epochs} epochs Adam 3e-3; '
            f'fine-tune {args.fine_tune_epochs} epochs Adam 1e-3)\n\n'
            '| date | machine | model (border) | alive | acc before | shrunk, no folding: acc '
            '(agreement, max abs dlogit) | shrunk, folded: acc (agreement, max abs dlogit) | '
            'folded, dead gammas zeroed: max abs '
            'dlogit | + recalibrated (no folding + recalibrated) | + fine-tuned | seconds |\n'
            '|---|---|---|---|---|---|---|---|---|---|---|\n')
  machine = f'{os.cpu_count()} CPU, {platform.machine()}'
  lines = ''.join(
      f'| {datetime.date.today()} | {machine} | {r["model"]} | {r["alive"]:.2f} | '
      f'{r["acc_before"]:.3f} | {r["acc_unfolded"]:.3f} ({r["agree_unfolded"]:.3f}, '
      f'{r["diff_unfolded"]:.3g}) | {r["acc_folded"]:.3f} ({r["agree_folded"]:.3f}, '
      f'{r["diff_folded"]:.3g}) | {r["diff_zeroed"]:.3g} | '
      f'{r["acc_recalibrated"]:.3f} ({r["acc_unfolded_recalibrated"]:.3f}) | '
      f'{r["acc_fine_tuned"]:.3f} | {r["seconds"]:.0f} |\n'
      for r in rows)
  with open(README) as f:
    text = f.read()
  if SECTION in text:
    text = text.rstrip('\n') + '\n' + lines
  else:
    text = text.rstrip('\n') + '\n\n' + header + lines
  tmp = README + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, README)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--fine-tune-epochs', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--models', default='demo,resnet,sequential')
  parser.add_argument('--border', default=constant_folding.DEFAULT_BORDER,
                      choices=('interior', 'mean'),
                      help="how 'same'-padded layers fold constants")
  parser.add_argument('--write', action='store_true', help='append to benchmarks/README.md')
  args = parser.parse_args()
  constant_folding.DEFAULT_BORDER = args.border
  train, test = digits.load_digits(seed=args.seed)
  builders = {
      'demo': (lambda: demo.seed_model(32), 1.0),
      'resnet': (resnet_like, 3.0),
      'sequential': (sequential_cnn, 3.0),
  }
  rows = []
  for name in args.models.split(','):
    build, multiplier = builders[name]
    keras.utils.set_random_seed(args.seed)
    rows.append(measure(f'{name} ({args.border})', build(), train, test, args.epochs, multiplier,
                        args.fine_tune_epochs, args.seed))
  if args.write:
    _append(rows, args)


if __name__ == '__main__':
  main()
