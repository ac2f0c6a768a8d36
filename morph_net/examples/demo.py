"""The MorphNet demo: learn the layer widths of a small CNN on handwritten digits.

What `morphnet demo` runs (MorphNet, Gordon et al. 2018, Algorithm 1, one
iteration), on scikit-learn's bundled 8x8 digits (`digits.load_digits`):

  1. seed network: `seed_model(width)`, a CNN with a residual Add and an
     inception-style Concatenate, BatchNormalization after every convolution;
  2. train it with `GammaFlopsRegularizer` (strength: `recommend_strength`, i.e.
     1 / seed FLOPs, times `strength_multiplier`), exporting the learned
     structure (`learned_structure/alive_<step>` every epoch, then
     `learned_structure.json`);
  3. shrink: the FLOPs of the learned widths;
  4. expand uniformly back to the seed's FLOPs (`expand_structure`,
     `expanded_structure.json`);
  5. retrain from scratch, and compare at matched FLOPs with the seed scaled by
     uniform width multipliers ω: for every ω the MorphNet network is the learned
     structure expanded to the FLOPs of seed × ω.

It prints every layer's seed, learned and expanded width, the FLOPs, the test
accuracies, and writes the plots `widths.png` (seed vs FLOP-regularized widths,
as in the paper's Figure 1) and `accuracy_vs_flops.png`, plus
`demo_results.json` with every number.

Example:

  result = run_demo(DemoConfig(), output_dir='morphnet_demo')
  print(format_report(result))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from morph_net.examples import digits
from morph_net.examples import fashion_mnist
from morph_net.examples import plots
from morph_net.keras_integration import callback as callback_lib
from morph_net.keras_integration import expand
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import shrink
from morph_net.keras_integration import structure_io
from morph_net.keras_integration import training
from morph_net.network_regularizers import flop_regularizer
from morph_net.tools import structure_exporter

L = keras.layers

Data = Tuple[np.ndarray, np.ndarray]
_ALIVE_FILE = re.compile(r'^alive_\d+$')


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Settings of a demo run.

  Attributes:
    width: base width of the seed network (layers have width or 2 * width).
    regularized_epochs: epochs of training with the FLOP regularizer.
    retrain_epochs: epochs of training from scratch of every compared network.
    batch_size: batch size of every training.
    learning_rate: Adam's learning rate.
    retrain_schedule: learning-rate schedule of the retraining from scratch:
      'constant' (default) or 'cosine' (decays to 0 over `retrain_epochs`:
      the final accuracy is less noisy, for benchmarks). The regularized
      training always uses the constant rate (gammas must keep moving).
    strength_multiplier: the regularization strength is
      `strength_multiplier * recommend_strength(...).strength` (1 / seed FLOPs).
    gamma_threshold: a channel is alive iff its BatchNorm |gamma| exceeds it.
    width_multipliers: the uniform width multipliers ω < 1 compared with
      MorphNet (ω = 1, the seed itself, is always compared).
    train_limit: use only this many training images (None: all of the
      dataset's training split).
    seed: seed of the weights, the data order and the split.
    dataset: 'digits' (scikit-learn's bundled 8x8 digits) or 'fashion_mnist'
      (28x28 Fashion-MNIST from local files, see `fashion_mnist`).
    data_dir: where the Fashion-MNIST files are (None: the loader's default).
    test_limit: evaluate on only this many test images (None: all).
    target_fraction: None (default): train at the fixed strength above. A
      fraction such as 0.5: train in budget-target mode (the strength adapts
      so that the regularizer's cost lands on this fraction of the seed's, and
      the learned structure is completed to it, see `keras_integration.budget`).
  """
  width: int = 32
  regularized_epochs: int = 30
  retrain_epochs: int = 30
  batch_size: int = 32
  learning_rate: float = 3e-3
  retrain_schedule: str = 'constant'
  strength_multiplier: float = 1.0
  gamma_threshold: float = 1e-2
  width_multipliers: Tuple[float, ...] = (0.125, 0.25, 0.5)
  train_limit: Optional[int] = None
  seed: int = 0
  dataset: str = 'digits'
  data_dir: Optional[str] = None
  test_limit: Optional[int] = None
  target_fraction: Optional[float] = None


DATASETS = ('digits', 'fashion_mnist')
_DATASET_NAMES = {'digits': 'digits', 'fashion_mnist': 'Fashion-MNIST'}
_DATASET_DESCRIPTIONS = {'digits': 'scikit-learn digits (8x8 grayscale)',
                         'fashion_mnist': 'Fashion-MNIST (28x28 grayscale)'}
DEFAULT_CONFIG = DemoConfig()
# A few seconds of training: for tests and a first look. The accuracies mean
# little (tiny data, one or two epochs); the pipeline is the same.
QUICK_CONFIG = DemoConfig(width=8, regularized_epochs=2, retrain_epochs=1,
                          learning_rate=1e-2, strength_multiplier=10.0,
                          width_multipliers=(0.5,), train_limit=256)
# Fashion-MNIST (28x28, not saturated): width 16, 12,000 training images, 8
# epochs per training (about 25 minutes on 2 CPU cores).
FASHION_CONFIG = DemoConfig(width=16, regularized_epochs=8, retrain_epochs=8,
                            width_multipliers=(0.25, 0.5), train_limit=12000,
                            dataset='fashion_mnist')
FASHION_QUICK_CONFIG = dataclasses.replace(QUICK_CONFIG, dataset='fashion_mnist',
                                           test_limit=1000)


def config_for(dataset: str = 'digits', quick: bool = False,
               data_dir: Optional[str] = None) -> DemoConfig:
  """The demo's settings for `dataset` ('digits' or 'fashion_mnist').

  Raises:
    ValueError: an unknown dataset.
  """
  if dataset not in DATASETS:
    raise ValueError(f'Unknown demo dataset. Expected one of {", ".join(DATASETS)}. '
                     f'Received: dataset={dataset!r}.')
  if dataset == 'digits':
    config = QUICK_CONFIG if quick else DEFAULT_CONFIG
  else:
    config = FASHION_QUICK_CONFIG if quick else FASHION_CONFIG
  return dataclasses.replace(config, data_dir=data_dir) if data_dir else config


def load_data(config: DemoConfig) -> Tuple[Data, Data, Tuple[int, int, int], str]:
  """`(train, test, image_shape, description)` of the demo's dataset.

  Raises:
    ValueError: an unknown dataset.
    FileNotFoundError: Fashion-MNIST is not installed (the message says how).
  """
  if config.dataset == 'digits':
    train, test = digits.load_digits(seed=config.seed, train_limit=config.train_limit)
    if config.test_limit is not None:
      test = (test[0][:config.test_limit], test[1][:config.test_limit])
    return train, test, digits.IMAGE_SHAPE, _DATASET_DESCRIPTIONS['digits']
  if config.dataset == 'fashion_mnist':
    train, test = fashion_mnist.load_fashion_mnist(
        config.data_dir, train_limit=config.train_limit, test_limit=config.test_limit,
        seed=config.seed)
    return train, test, fashion_mnist.IMAGE_SHAPE, _DATASET_DESCRIPTIONS['fashion_mnist']
  raise ValueError(f'Unknown demo dataset. Expected one of {", ".join(DATASETS)}. '
                   f'Received: dataset={config.dataset!r}.')


@dataclasses.dataclass(frozen=True)
class NetworkResult:
  """One network of the comparison, retrained from scratch.

  Attributes:
    family: 'MorphNet' or 'uniform'.
    width_multiplier: the ω applied to the seed's widths ('uniform') or to
      the learned widths ('MorphNet').
    budget: the FLOP budget of the pair: the FLOPs of the seed × ω.
    flops: FLOPs of the network.
    accuracy: test accuracy after `retrain_epochs` epochs from scratch.
    widths: its width per layer.
  """
  family: str
  width_multiplier: float
  budget: float
  flops: float
  accuracy: float
  widths: Dict[str, int]


@dataclasses.dataclass(frozen=True)
class DemoResult:
  """Everything a demo run measured (also written as `demo_results.json`)."""
  config: DemoConfig
  layers: List[str]
  seed_widths: Dict[str, int]
  learned_widths: Dict[str, int]
  expanded_widths: Dict[str, int]
  seed_flops: float
  learned_flops: float
  expanded_flops: float
  expanded_width_multiplier: float
  regularization_strength: float
  regularized_accuracy: float
  networks: List[NetworkResult]
  train_examples: int
  test_examples: int
  seconds: float
  files: Dict[str, str]

  def as_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------
# The seed network and its costs.


def _conv_bn_relu(x, filters: int, kernel_size: int, name: str, strides: int = 1,
                  relu: bool = True):
  x = L.Conv2D(filters, kernel_size, strides=strides, padding='same', use_bias=False,
               name=f'{name}_conv')(x)
  # Momentum 0.9: the moving statistics must settle within a few hundred steps
  # (about 42 steps per epoch here); Keras' default 0.99 lags behind.
  x = L.BatchNormalization(momentum=0.9, name=f'{name}_bn')(x)
  return L.ReLU(name=f'{name}_relu')(x) if relu else x


def seed_model(width: int = 32, input_shape: Sequence[int] = digits.IMAGE_SHAPE,
               num_classes: int = digits.NUM_CLASSES, name: str = 'digits_cnn') -> keras.Model:
  """The demo's seed network (the embedded `small_cnn` layout for 8x8 images).

  stem conv (width) -> residual block (res_a, res_b: width; Add with the stem)
  -> strided conv `down` (2 * width) -> inception-style block (1x1 and 3x3
  branches of width, concatenated) -> strided conv `head` (2 * width) -> global
  average pooling -> dense logits. Every convolution is followed by a
  BatchNormalization, so the Gamma regularizers reach every layer.

  Args:
    width: the base width, >= 1.
    input_shape: image shape (H, W, C). Defaults to the digits' (8, 8, 1).
    num_classes: outputs (logits). Defaults to 10.
    name: the model name.

  Returns:
    A functional Keras model (logits, no softmax).
  """
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise ValueError(f'width must be a positive integer. Received: width={width!r}.')
  inputs = keras.Input(tuple(input_shape), name='image')
  x = _conv_bn_relu(inputs, width, 3, 'stem')
  y = _conv_bn_relu(x, width, 3, 'res_a')
  y = _conv_bn_relu(y, width, 3, 'res_b', relu=False)
  x = L.ReLU(name='res_relu')(L.Add(name='res_add')([x, y]))
  x = _conv_bn_relu(x, 2 * width, 3, 'down', strides=2)
  branch_1x1 = _conv_bn_relu(x, width, 1, 'mix_1x1')
  branch_3x3 = _conv_bn_relu(x, width, 3, 'mix_3x3')
  x = L.Concatenate(name='mix_concat')([branch_1x1, branch_3x3])
  x = _conv_bn_relu(x, 2 * width, 3, 'head', strides=2)
  x = L.GlobalAveragePooling2D(name='pool')(x)
  outputs = L.Dense(num_classes, name='logits')(x)
  return keras.Model(inputs, outputs, name=name)


def _architecture_key(model: keras.Model) -> Tuple[Any, ...]:
  """What determines the FLOPs of a model rebuilt from the seed: its layers and widths."""
  return (tuple(model.inputs[0].shape),) + tuple(
      (type(layer).__name__, layer.name, getattr(layer, 'filters', None),
       getattr(layer, 'units', None)) for layer in model.layers)


def flops_fn() -> expand.CostFn:
  """FLOPs per image of a freshly built model (every channel alive).

  Memoized by architecture (layer names, kinds and widths), so that the many
  expansions of one demo cost every distinct network once.
  """
  base = expand.regularizer_cost_fn(flop_regularizer.GammaFlopsRegularizer,
                                    gamma_threshold=0.0)
  memo: Dict[Tuple[Any, ...], float] = {}

  def cost_fn(model: keras.Model) -> float:
    key = _architecture_key(model)
    if key not in memo:
      memo[key] = base(model)
    return memo[key]

  return cost_fn


def build_network(seed: keras.Model, widths: Mapping[str, int], seed_value: int,
                  name: Optional[str] = None) -> keras.Model:
  """The seed's topology with `widths`, fresh weights drawn from `seed_value`."""
  keras.utils.set_random_seed(seed_value)
  return shrink.shrink_model(seed, dict(widths), name=name)


# ----------------------------------------------------------------------------
# Training.


def _verbosity() -> int:
  """Keras progress bars that redraw on a terminal, one line per update elsewhere."""
  return 1 if getattr(sys.stdout, 'isatty', lambda: False)() else 2


class _EpochBar(keras.callbacks.Callback):
  """One Keras progress bar over the epochs of a fit (loss, accuracy)."""

  def __init__(self, label: str, epochs: int, stream: TextIO):
    super().__init__()
    self._label = label
    self._epochs = epochs
    self._stream = stream

  def on_train_begin(self, logs=None):
    print(self._label, file=self._stream, flush=True)
    self._bar = keras.utils.Progbar(self._epochs, verbose=_verbosity(), unit_name='epoch',
                                     stateful_metrics=['loss', 'accuracy'])

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self._bar.update(epoch + 1, values=[(k, float(logs[k])) for k in ('loss', 'accuracy')
                                        if k in logs])


RETRAIN_SCHEDULES = ('constant', 'cosine')


def _compile(model: keras.Model, config: DemoConfig, steps: int = 0) -> None:
  """Compiles with Adam; `steps` > 0 with the cosine schedule decays over them."""
  rate = config.learning_rate
  if steps and config.retrain_schedule == 'cosine':
    rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
  elif config.retrain_schedule not in RETRAIN_SCHEDULES:
    raise ValueError(f'retrain_schedule must be one of {", ".join(RETRAIN_SCHEDULES)}. '
                     f'Received: retrain_schedule={config.retrain_schedule!r}.')
  model.compile(optimizer=keras.optimizers.Adam(rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])


def _accuracy(model: keras.Model, test: Data, batch_size: int) -> float:
  results = model.evaluate(*test, batch_size=batch_size, verbose=0, return_dict=True)
  return float(results['accuracy'])


def train_and_evaluate(model: keras.Model, train: Data, test: Data, config: DemoConfig,
                       seed_value: int, label: str = '',
                       stream: Optional[TextIO] = None) -> float:
  """Trains `model` from its current weights; returns its test accuracy.

  Args:
    model: a compiled-or-not Keras model with logits outputs.
    train: (images, labels) to train on.
    test: (images, labels) to evaluate.
    config: epochs (`retrain_epochs`), batch size, learning rate.
    seed_value: seeds the data order.
    label: printed above the progress bar; no bar when empty.
    stream: where the bar goes. Defaults to stdout.

  Returns:
    The test accuracy in [0, 1].
  """
  keras.utils.set_random_seed(seed_value)
  steps = config.retrain_epochs * -(-len(train[0]) // config.batch_size)
  _compile(model, config, steps)
  callbacks = [_EpochBar(label, config.retrain_epochs, stream or sys.stdout)] if label else []
  if config.retrain_epochs:
    model.fit(*train, batch_size=config.batch_size, epochs=config.retrain_epochs,
              verbose=0, callbacks=callbacks)
  return _accuracy(model, test, config.batch_size)


@dataclasses.dataclass(frozen=True)
class LearnedStructure:
  """What the regularized training learned.

  Attributes:
    seed_widths: every exported layer's width in the seed.
    learned_widths: its alive channels after training (O').
    strength: the regularization strength at the end of training (adapted
      in target mode).
    accuracy: test accuracy of the trained (regularized) seed network.
  """
  seed_widths: Dict[str, int]
  learned_widths: Dict[str, int]
  strength: float
  accuracy: float


def learn_structure(model: keras.Model, train: Data, test: Data, config: DemoConfig,
                    export_dir: Optional[str] = None, verbose: Optional[int] = None,
                    seed_value: Optional[int] = None, *,
                    regularizer_class: type = flop_regularizer.GammaFlopsRegularizer
                    ) -> LearnedStructure:
  """Trains `model` with the FLOP regularizer and reads the learned widths.

  Args:
    model: the seed network (trained in place).
    train: training data.
    test: test data (accuracy of the regularized network).
    config: epochs (`regularized_epochs`), strength multiplier, threshold, ...
    export_dir: where `MorphNetCallback` writes `learned_structure/alive_<step>`
      every epoch; None writes nothing.
    verbose: Keras `fit` verbosity; None: progress bars (see `_verbosity`).
    seed_value: seeds the data order. Defaults to `config.seed`.
    regularizer_class: a Gamma network regularizer class (its second argument
      is the gamma threshold). Defaults to GammaFlopsRegularizer;
      e.g. GammaModelSizeRegularizer learns where the weights are.

  Returns:
    A LearnedStructure.
  """
  keras.utils.set_random_seed(config.seed if seed_value is None else seed_value)
  regularizer = regularizer_class.from_keras_model(
      model, gamma_threshold=config.gamma_threshold)
  strength = config.strength_multiplier * training.recommend_strength(regularizer).strength
  trainer = training.MorphNetModel(model, regularizer, regularization_strength=strength,
                                   target_fraction=config.target_fraction)
  _compile(trainer, config)
  morphnet_callback = callback_lib.MorphNetCallback(regularizer, export_dir=export_dir)
  trainer.fit(*train, batch_size=config.batch_size, epochs=config.regularized_epochs,
              verbose=_verbosity() if verbose is None else verbose,
              callbacks=[morphnet_callback])
  exporter = layer_structure.LayerStructureExporter(regularizer)
  learned = exporter.alive_counts()
  if morphnet_callback.completion is not None:  # target mode: the completed structure
    learned = {name: morphnet_callback.completion.counts.get(name, count)
               for name, count in learned.items()}
  return LearnedStructure(
      seed_widths=exporter.channel_counts(), learned_widths=learned,
      strength=trainer.regularization_strength,
      accuracy=_accuracy(trainer, test, config.batch_size))


# ----------------------------------------------------------------------------
# Matching FLOPs.


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A network of one family: widths round(ω · structure) and their FLOPs."""
  widths: Dict[str, int]
  flops: float
  width_multiplier: float


@dataclasses.dataclass(frozen=True)
class MatchedNetworks:
  """A MorphNet network and a uniform width-multiplier network at matched FLOPs.

  Attributes:
    budget: the FLOP budget both meet.
    morphnet: the learned widths, expanded uniformly.
    uniform: the seed's widths, scaled uniformly (width multiplier ω).
    rounds: how many times the target was lowered to match the FLOPs.
  """
  budget: float
  morphnet: Candidate
  uniform: Candidate
  rounds: int

  @property
  def flop_gap(self) -> float:
    """|FLOPs(MorphNet) - FLOPs(uniform)| / the larger of the two."""
    return flop_gap(self.morphnet.flops, self.uniform.flops)


def flop_gap(a: float, b: float) -> float:
  """|a - b| / max(a, b): the relative FLOP mismatch of two networks."""
  return abs(a - b) / max(a, b)


def _around(seed: keras.Model, structure: Mapping[str, int], target: float,
            cost_fn: expand.CostFn) -> Tuple[Candidate, Candidate]:
  """The largest network of the family <= target, and the smallest one above it."""
  result = expand.expand_structure(seed, dict(structure), target, cost_fn)
  return (Candidate(result.widths, result.expanded_cost, result.width_multiplier),
          Candidate(result.next_widths, result.next_cost, result.next_width_multiplier))


def match_budget(seed: keras.Model, seed_widths: Mapping[str, int],
                 learned_widths: Mapping[str, int], budget: float,
                 cost_fn: Optional[expand.CostFn] = None, tolerance: float = 0.02,
                 max_rounds: int = 20) -> MatchedNetworks:
  """Large MorphNet and uniform networks under `budget` with matched FLOPs.

  Each family is a uniform scaling round(ω · widths) (`expand_structure`): of
  the learned widths (MorphNet) and of the seed's widths (the width-multiplier
  baseline), so its FLOPs are a step function of ω. Start with the largest
  network of each family within the budget. While their FLOPs differ by more
  than `tolerance`, the larger one is replaced by the network of its family
  closest to the smaller one's FLOPs (one rounding step above or the largest
  below it); if that is still too far, the target is lowered to it and both
  families are expanded again. Both networks always stay within `budget`.

  Args:
    seed: the seed network.
    seed_widths: its widths `{layer: width}` (the baseline's structure).
    learned_widths: the learned widths O'.
    budget: the FLOP budget.
    cost_fn: `cost_fn(model) -> FLOPs`. Defaults to `flops_fn()`.
    tolerance: the largest accepted `flop_gap`. Defaults to 0.02.
    max_rounds: stop lowering the target after this many rounds (the result
      may then differ by more than `tolerance`; check `flop_gap`).

  Returns:
    A MatchedNetworks.
  """
  cost_fn = cost_fn or flops_fn()
  structures = {'MorphNet': dict(learned_widths), 'uniform': dict(seed_widths)}
  target, rounds = float(budget), 0
  while True:
    best = {family: _around(seed, widths, target, cost_fn)[0]
            for family, widths in structures.items()}
    if flop_gap(best['MorphNet'].flops, best['uniform'].flops) <= tolerance:
      break
    low, high = sorted(best, key=lambda family: best[family].flops)
    below, above = _around(seed, structures[high], best[low].flops, cost_fn)
    # `above` costs at most best[high].flops <= budget: the next step up from
    # below best[low] is no larger than a network already under the budget.
    closest = min((below, above), key=lambda c: flop_gap(c.flops, best[low].flops))
    if flop_gap(closest.flops, best[low].flops) <= tolerance or rounds >= max_rounds:
      best[high] = closest
      break
    target = below.flops
    rounds += 1
  return MatchedNetworks(budget=float(budget), morphnet=best['MorphNet'],
                         uniform=best['uniform'], rounds=rounds)


# ----------------------------------------------------------------------------
# The demo.


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
  """Hides absl and TensorFlow INFO/WARNING lines during the demo.

  E.g. 'No regularizer found for logits' (the classifier has no gamma) and
  tf.function retracing notes (every costed network is traced once).
  """
  previous = logging.get_verbosity()
  tf_logger = tf.get_logger()
  previous_tf = tf_logger.level
  logging.set_verbosity(logging.ERROR)
  tf_logger.setLevel('ERROR')
  try:
    yield
  finally:
    logging.set_verbosity(previous)
    tf_logger.setLevel(previous_tf)


def _remove_old_exports(output_dir: str) -> None:
  """Deletes `alive_<step>` files of an earlier demo run in `output_dir`."""
  directory = os.path.join(output_dir, 'learned_structure')
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if _ALIVE_FILE.match(name):
      os.remove(os.path.join(directory, name))


def check_output_dir(output_dir: str) -> None:
  """Raises ValueError if `output_dir` exists and is not a directory."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise ValueError(
        f'--output-dir must be a directory; {output_dir!r} is a file. Pass a new or '
        'existing directory.')


def run_demo(config: DemoConfig = DEFAULT_CONFIG, output_dir: str = 'morphnet_demo',
             stream: Optional[TextIO] = None) -> DemoResult:
  """Runs the demo (see the module doc) and writes its files to `output_dir`.

  Args:
    config: the settings (DEFAULT_CONFIG, or QUICK_CONFIG for a short run).
    output_dir: where the structure files, plots and `demo_results.json` go
      (created).
    stream: where progress goes. Defaults to stdout.

  Returns:
    A DemoResult.

  Raises:
    ImportError: scikit-learn or matplotlib is missing (with the install command).
    ValueError: `output_dir` is a file.
  """
  stream = stream or sys.stdout
  start = time.perf_counter()
  check_output_dir(output_dir)
  plots.require_matplotlib()
  train, test, image_shape, description = load_data(config)

  def say(text: str) -> None:
    print(text, file=stream, flush=True)

  with _quiet_logs():
    os.makedirs(output_dir, exist_ok=True)
    _remove_old_exports(output_dir)
    cost_fn = flops_fn()
    keras.utils.set_random_seed(config.seed)
    seed = seed_model(config.width, input_shape=image_shape)
    seed_flops = cost_fn(seed)
    say(f'[1/4] Training the seed network (width {config.width}, {seed_flops:,.0f} FLOPs '
        f'per image) with the FLOP regularizer for {config.regularized_epochs} epochs on '
        f'{len(train[0])} images of {description}...')
    learned = learn_structure(seed, train, test, config, export_dir=output_dir)
    learned_path = structure_io.save_structure(
        os.path.join(output_dir, 'learned_structure.json'), learned.learned_widths)
    learned_flops = cost_fn(shrink.shrink_model(seed, learned.learned_widths))

    say(f'[2/4] Shrink: the learned widths cost {learned_flops:,.0f} FLOPs; expanding '
        'them uniformly back to the seed\'s FLOPs...')
    expansion = expand.expand_structure(seed, learned.learned_widths, seed_flops, cost_fn)
    expanded_path = structure_io.save_structure(
        os.path.join(output_dir, 'expanded_structure.json'), expansion.widths)

    multipliers = sorted({float(w) for w in config.width_multipliers if 0 < w < 1} | {1.0})
    say(f'[3/4] Retraining from scratch for {config.retrain_epochs} epochs: at the FLOPs of '
        f'the seed × ω for ω in {multipliers}, the uniform width-multiplier network and '
        'the MorphNet network (learned widths expanded), FLOPs matched within 2%...')
    networks: List[NetworkResult] = []
    trained: Dict[Tuple[Tuple[str, int], ...], float] = {}
    for omega in multipliers:
      budget = cost_fn(build_network(seed, expand.scale_structure(learned.seed_widths, omega),
                                     config.seed))
      pair = match_budget(seed, learned.seed_widths, learned.learned_widths, budget, cost_fn)
      for family, candidate in (('uniform', pair.uniform), ('MorphNet', pair.morphnet)):
        widths, flops = candidate.widths, candidate.flops
        key = tuple(sorted(widths.items()))
        if key in trained:  # Same widths, same seed: the same network.
          accuracy = trained[key]
          say(f'  {family} network at {100 * flops / seed_flops:.1f}% of the seed FLOPs: '
              'the same widths as a network above.')
        else:
          model = build_network(seed, widths, config.seed, name=f'{family}_{omega:g}'.lower())
          accuracy = trained[key] = train_and_evaluate(
              model, train, test, config, config.seed, stream=stream,
              label=f'  {family} network at {100 * flops / seed_flops:.1f}% of the seed '
              f'FLOPs ({flops:,.0f}):')
        networks.append(NetworkResult(
            family=family, width_multiplier=candidate.width_multiplier,
            budget=budget, flops=float(flops), accuracy=accuracy, widths=dict(widths)))

    say('[4/4] Writing the plots...')
    layers = [layer.name for layer in seed.layers if layer.name in learned.seed_widths]
    files = {
        'learned_structure': learned_path,
        'expanded_structure': expanded_path,
        'widths_plot': os.path.join(output_dir, 'widths.png'),
        'accuracy_plot': os.path.join(output_dir, 'accuracy_vs_flops.png'),
        'results': os.path.join(output_dir, 'demo_results.json'),
    }
    result = DemoResult(
        config=config, layers=layers, seed_widths=learned.seed_widths,
        learned_widths=learned.learned_widths, expanded_widths=expansion.widths,
        seed_flops=seed_flops, learned_flops=learned_flops,
        expanded_flops=expansion.expanded_cost,
        expanded_width_multiplier=expansion.width_multiplier,
        regularization_strength=learned.strength,
        regularized_accuracy=learned.accuracy, networks=networks,
        train_examples=len(train[0]), test_examples=len(test[0]),
        seconds=time.perf_counter() - start, files=files)
    write_plots(result)
    structure_exporter.write_file_atomically(
        files['results'], json.dumps(result.as_dict(), indent=2, sort_keys=True))
  return result


def write_plots(result: DemoResult) -> None:
  """Writes the widths plot and the accuracy-vs-FLOPs plot of a demo run."""
  layers = result.layers
  plots.plot_widths(
      result.files['widths_plot'], layers,
      {'seed': [result.seed_widths[k] for k in layers],
       'FLOP-regularized (learned)': [result.learned_widths[k] for k in layers],
       'expanded to the seed FLOPs': [result.expanded_widths.get(k, 0) for k in layers]},
      title=f'MorphNet on {_DATASET_NAMES[result.config.dataset]}: widths per layer')
  curves = []
  for family, label in (('uniform', 'uniform width multiplier (seed × ω)'),
                        ('MorphNet', 'MorphNet (learned widths, expanded)')):
    points = [n for n in result.networks if n.family == family]
    curves.append(plots.Curve(
        label=label, flops=[n.flops for n in points], accuracy=[n.accuracy for n in points],
        point_labels=([f'ω={n.width_multiplier:.3g}' for n in points]
                      if family == 'uniform' else None)))
  plots.plot_accuracy_vs_flops(
      result.files['accuracy_plot'], curves,
      title=f'{_DATASET_NAMES[result.config.dataset]}: test accuracy vs FLOPs (one seed, {result.config.retrain_epochs} '
      'epochs from scratch)')


def _percent(value: float, total: float) -> str:
  return f'{100.0 * value / total:.1f}%'


def format_report(result: DemoResult) -> str:
  """The demo's tables: widths per layer, FLOPs, accuracies, files."""
  lines = [
      f'MorphNet on {_DATASET_DESCRIPTIONS[result.config.dataset]} '
      f'({result.train_examples} train / '
      f'{result.test_examples} test images), seed width {result.config.width}, '
      f'strength {result.regularization_strength:.3g}',
      '',
      f'{"layer":<16} {"seed":>12} {"learned":>12} {"expanded":>12}',
  ]
  for layer in result.layers:
    lines.append(f'{layer:<16} {result.seed_widths[layer]:>12} '
                 f'{result.learned_widths[layer]:>12} {result.expanded_widths.get(layer, 0):>12}')
  lines.append(f'{"FLOPs":<16} {result.seed_flops:>12,.0f} {result.learned_flops:>12,.0f} '
               f'{result.expanded_flops:>12,.0f}')
  lines.append(f'{"% of seed FLOPs":<16} {"100.0%":>12} '
               f'{_percent(result.learned_flops, result.seed_flops):>12} '
               f'{_percent(result.expanded_flops, result.seed_flops):>12}')
  lines.append(f'(expanded = learned × ω, ω = {result.expanded_width_multiplier:.3f}; the '
               f'FLOP-regularized seed network scores {100 * result.regularized_accuracy:.1f}% '
               'before shrinking)')
  lines += ['', f'Test accuracy at matched FLOPs (each network trained from scratch for '
            f'{result.config.retrain_epochs} epochs):',
            f'{"network":<30} {"FLOPs":>12} {"% of seed":>10} {"accuracy":>9}']
  for network in result.networks:
    if network.family == 'uniform':
      name = f'uniform: seed × {network.width_multiplier:.3g}'
    else:
      name = f'MorphNet: learned × {network.width_multiplier:.3g}'
    lines.append(f'{name:<30} {network.flops:>12,.0f} '
                 f'{_percent(network.flops, result.seed_flops):>10} '
                 f'{100 * network.accuracy:>8.1f}%')
  lines += ['', f'Files in {os.path.dirname(result.files["results"]) or "."}: '
            + ', '.join(os.path.basename(p) for p in result.files.values())
            + ', learned_structure/alive_<step>',
            f'Done in {result.seconds:.0f} s.']
  return '\n'.join(lines)
