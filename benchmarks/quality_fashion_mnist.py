"""Benchmark: MorphNet vs the uniform width multiplier on Fashion-MNIST, matched FLOPs.

The paper (Gordon et al. 2018) claims that, at the same FLOPs, the widths
MorphNet learns (shrink with the FLOP regularizer, expand uniformly to the
budget) beat the seed scaled by a uniform width multiplier ω; that a second
shrink/expand iteration helps further; that the FLOP regularizer prunes the
early, high-resolution layers while the model-size regularizer prunes late
layers; and that the learned structure is stable across runs.

Protocol (Fashion-MNIST, 28x28, `morph_net.examples.fashion_mnist`; the seed is
`demo.seed_model(width)`: stem conv, a residual Add block, a strided conv, an
inception-style Concatenate block, a strided head conv, GAP, dense logits;
BatchNormalization after every conv). For every seed s (weights, data order):
  1. train the seed with GammaFlopsRegularizer -> learned widths (shrink), and,
     separately, with GammaModelSizeRegularizer -> size-learned widths; both in
     budget-target mode (`--target-fraction`, default 0.5: the strength adapts
     so that the cost lands on half the seed's, and the structure is completed
     to it if training stops above; `keras_integration.budget`);
  2. for each budget b in {1.0, 0.5, 0.25} x the seed's FLOPs: MorphNet = the
     FLOP-learned widths expanded uniformly to the budget; uniform = the seed's
     widths x the largest ω under it; FLOPs matched within 2%
     (`demo.match_budget`); both trained from scratch with the same epochs,
     optimizer (Adam, cosine decay to 0: a less noisy final accuracy) and
     augmentation (random horizontal flips);
  3. second iteration at the seed's FLOPs: the expanded network of step 2 (b=1)
     is trained with the FLOP regularizer again, shrunk, expanded back to the
     seed's FLOPs and trained from scratch.
It prints mean ± std over seeds and the paired difference per budget; per-layer
widths and their relative std over seeds; the FLOPs relative std of the learned
structures; writes benchmarks/results/quality_fashion_mnist.json, two PNG plots
(accuracy vs FLOPs with error bars; widths per layer) and a row in
benchmarks/README.md.

Run (needs `apt-get install -y dataset-fashion-mnist` and the demo extra):
  python benchmarks/quality_fashion_mnist.py            # 3 seeds (a few CPU-hours)
  python benchmarks/quality_fashion_mnist.py --quick    # 1 seed, tiny: a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402
import numpy as np  # noqa: E402

from morph_net.examples import demo  # noqa: E402
from morph_net.examples import fashion_mnist  # noqa: E402
from morph_net.examples import plots  # noqa: E402
from morph_net.keras_integration import expand  # noqa: E402
from morph_net.network_regularizers import model_size_regularizer  # noqa: E402
from morph_net.tools import structure_exporter  # noqa: E402

import results_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, 'results')
BUDGETS = (1.0, 0.5, 0.25)


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random horizontal flips (half the images), the same for every network of a seed."""
  flip = rng.random(len(images)) < 0.5
  out = images.copy()
  out[flip] = out[flip][:, :, ::-1]
  return out


def _relative_std(values: Sequence[float]) -> float:
  if len(values) < 2 or statistics.mean(values) == 0:
    return 0.0
  return statistics.stdev(values) / statistics.mean(values)


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
  return {'mean': statistics.mean(values),
          'std': statistics.stdev(values) if len(values) > 1 else 0.0}


@dataclasses.dataclass
class SeedRun:
  seed: int
  seed_widths: Dict[str, int]
  learned_widths: Dict[str, int]
  size_learned_widths: Dict[str, int]
  learned_flops: float
  size_learned_flops: float
  morphnet: Dict[float, Dict[str, float]]  # budget -> {'flops', 'acc', 'widths'...}
  uniform: Dict[float, Dict[str, float]]
  expanded_widths: Dict[str, int]
  second_iteration: Dict[str, float]


def run_seed(seed_value: int, args, train, test, cost_fn) -> SeedRun:
  config = demo.DemoConfig(width=args.width, regularized_epochs=args.regularized_epochs,
                           retrain_epochs=args.epochs, learning_rate=args.learning_rate,
                           strength_multiplier=args.strength_multiplier, seed=seed_value,
                           dataset='fashion_mnist', target_fraction=args.target_fraction,
                           retrain_schedule=args.retrain_schedule)
  augmented = (_augment(train[0], np.random.default_rng(seed_value)), train[1])
  keras.utils.set_random_seed(seed_value)
  seed = demo.seed_model(args.width, input_shape=fashion_mnist.IMAGE_SHAPE)
  seed_flops = cost_fn(seed)

  def learn(model, regularizer_class=None):
    kwargs = {} if regularizer_class is None else {'regularizer_class': regularizer_class}
    return demo.learn_structure(model, augmented, test, config, verbose=0,
                                seed_value=seed_value, **kwargs)

  def train_eval(widths: Mapping[str, int], label: str) -> float:
    start = time.perf_counter()
    model = demo.build_network(seed, widths, seed_value)
    accuracy = demo.train_and_evaluate(model, augmented, test, config, seed_value)
    print(f'    {label}: {100 * accuracy:.2f}% ({time.perf_counter() - start:.0f} s)',
          flush=True)
    return accuracy

  start = time.perf_counter()
  learned = learn(seed)
  learned_flops = cost_fn(demo.build_network(seed, learned.learned_widths, seed_value))
  print(f'seed {seed_value}: FLOP-learned widths {learned.learned_widths} '
        f'({100 * learned_flops / seed_flops:.1f}% of the seed FLOPs, '
        f'{time.perf_counter() - start:.0f} s)', flush=True)
  keras.utils.set_random_seed(seed_value)
  size_seed = demo.seed_model(args.width, input_shape=fashion_mnist.IMAGE_SHAPE)
  size_learned = learn(size_seed, model_size_regularizer.GammaModelSizeRegularizer)
  size_flops = cost_fn(demo.build_network(seed, size_learned.learned_widths, seed_value))
  print(f'  size-learned widths {size_learned.learned_widths}', flush=True)

  morphnet, uniform = {}, {}
  expanded_widths: Dict[str, int] = {}
  for fraction in args.budgets:
    pair = demo.match_budget(seed, learned.seed_widths, learned.learned_widths,
                             fraction * seed_flops, cost_fn)
    if fraction == 1.0:
      expanded_widths = dict(pair.morphnet.widths)
    print(f'  budget {100 * fraction:g}% (FLOP gap {100 * pair.flop_gap:.2f}%):', flush=True)
    morphnet[fraction] = {'flops': pair.morphnet.flops, 'widths': pair.morphnet.widths,
                          'acc': train_eval(pair.morphnet.widths,
                                            f'MorphNet {pair.morphnet.flops:,.0f} FLOPs')}
    uniform[fraction] = {'flops': pair.uniform.flops, 'widths': pair.uniform.widths,
                         'width_multiplier': pair.uniform.width_multiplier,
                         'acc': train_eval(pair.uniform.widths,
                                           f'uniform ω={pair.uniform.width_multiplier:.3g} '
                                           f'{pair.uniform.flops:,.0f} FLOPs')}

  second: Dict[str, float] = {}
  if args.second_iteration and expanded_widths:
    # Iteration 2: regularize the expanded network, shrink, expand to the seed FLOPs.
    keras.utils.set_random_seed(seed_value)
    second_seed = demo.build_network(seed, expanded_widths, seed_value)
    learned_2 = learn(second_seed)
    result = expand.expand_structure(second_seed, learned_2.learned_widths, seed_flops,
                                     cost_fn)
    second = {'flops': result.expanded_cost, 'widths': result.widths,
              'acc': train_eval(result.widths, f'MorphNet x2 {result.expanded_cost:,.0f} FLOPs')}
  return SeedRun(seed_value, learned.seed_widths, learned.learned_widths, size_learned.learned_widths,
                 learned_flops, size_flops, morphnet, uniform, expanded_widths, second)


def summarize(runs: List[SeedRun], args, seed_flops: float, seed_widths: Mapping[str, int],
              layers: Sequence[str]) -> dict:
  budgets = []
  for fraction in args.budgets:
    m_acc = [r.morphnet[fraction]['acc'] for r in runs]
    u_acc = [r.uniform[fraction]['acc'] for r in runs]
    differences = [m - u for m, u in zip(m_acc, u_acc)]
    budgets.append({
        'budget': fraction, 'budget_flops': fraction * seed_flops,
        'morphnet': {'flops': [r.morphnet[fraction]['flops'] for r in runs], 'acc': m_acc},
        'uniform': {'flops': [r.uniform[fraction]['flops'] for r in runs], 'acc': u_acc},
        'difference': _mean_std(differences),
        'wins_ties_losses': [sum(d > 0 for d in differences), sum(d == 0 for d in differences),
                             sum(d < 0 for d in differences)],
    })
  widths = {
      'layers': list(layers),
      'seed': [seed_widths[k] for k in layers],
      'flops_learned_mean': [statistics.mean(r.learned_widths[k] for r in runs) for k in layers],
      'size_learned_mean': [statistics.mean(r.size_learned_widths[k] for r in runs)
                            for k in layers],
      'expanded_mean': [statistics.mean(r.expanded_widths.get(k, 0) for r in runs)
                        for k in layers],
      'flops_learned_relative_std': [_relative_std([r.learned_widths[k] for r in runs])
                                     for k in layers],
  }
  second = [r.second_iteration for r in runs if r.second_iteration]
  return {
      'seed_flops': seed_flops,
      'budgets': budgets,
      'second_iteration': ({'flops': [s['flops'] for s in second],
                            'acc': [s['acc'] for s in second]} if second else None),
      'learned_flops': [r.learned_flops for r in runs],
      'learned_flops_relative_std': _relative_std([r.learned_flops for r in runs]),
      'size_learned_flops': [r.size_learned_flops for r in runs],
      'widths': widths,
      'seeds': [dataclasses.asdict(r) for r in runs],
  }


def write_plots(summary: dict, out_prefix: str, epochs: int, seeds: int) -> List[str]:
  curves = []
  for family, label in (('uniform', 'uniform width multiplier'),
                        ('morphnet', 'MorphNet (FLOP-learned, expanded)')):
    points = summary['budgets']
    curves.append(plots.Curve(
        label=label, flops=[statistics.mean(b[family]['flops']) for b in points],
        accuracy=[statistics.mean(b[family]['acc']) for b in points],
        spread=[_mean_std(b[family]['acc'])['std'] for b in points]))
  if summary['second_iteration']:
    s = summary['second_iteration']
    curves.append(plots.Curve(label='MorphNet, 2nd iteration', flops=[statistics.mean(s['flops'])],
                              accuracy=[statistics.mean(s['acc'])],
                              spread=[_mean_std(s['acc'])['std']]))
  accuracy_plot = plots.plot_accuracy_vs_flops(
      f'{out_prefix}_accuracy_vs_flops.png', curves,
      title=f'Fashion-MNIST: accuracy vs FLOPs ({seeds} seeds, {epochs} epochs, mean ± std)')
  w = summary['widths']
  widths_plot = plots.plot_widths(
      f'{out_prefix}_widths.png', w['layers'],
      {'seed': w['seed'],
       'FLOP-regularized (learned)': [round(v) for v in w['flops_learned_mean']],
       'size-regularized (learned)': [round(v) for v in w['size_learned_mean']],
       'expanded to the seed FLOPs': [round(v) for v in w['expanded_mean']]},
      title='Fashion-MNIST: widths per layer (mean over seeds)')
  return [accuracy_plot, widths_plot]


def _fractions(text: str) -> List[float]:
  try:
    values = [float(part) for part in text.split(',') if part.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--budgets must be fractions such as 1,0.5,0.25. '
                                     f'Received: {text!r}') from None
  if not values or any(not 0 < v <= 1 for v in values):
    raise argparse.ArgumentTypeError(f'--budgets must be in (0, 1]. Received: {text!r}')
  return values


def _target(text: str) -> Optional[float]:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'--target-fraction must be a number in [0, 1). '
                                     f'Received: {text!r}') from None
  if not 0 <= value < 1:
    raise argparse.ArgumentTypeError(f'--target-fraction must be in [0, 1) (0: fixed '
                                     f'strength). Received: {text!r}')
  return value or None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--budgets', type=_fractions, default=list(BUDGETS))
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--epochs', type=int, default=8, help='retraining epochs')
  parser.add_argument('--regularized-epochs', type=int, default=8)
  parser.add_argument('--learning-rate', type=float, default=3e-3)
  parser.add_argument('--strength-multiplier', type=float, default=1.0)
  parser.add_argument('--retrain-schedule', choices=demo.RETRAIN_SCHEDULES, default='cosine',
                      help='learning-rate schedule of every training from scratch')
  parser.add_argument('--target-fraction', type=_target, default=0.5,
                      help='shrink phase in budget-target mode: the regularizer\'s cost '
                           'lands on this fraction of the seed\'s (0: fixed strength)')
  parser.add_argument('--train-limit', type=int, default=20000)
  parser.add_argument('--test-limit', type=int, default=None)
  parser.add_argument('--data-dir', default=None)
  parser.add_argument('--no-second-iteration', dest='second_iteration', action='store_false')
  parser.add_argument('--quick', action='store_true',
                      help='1 seed, width 8, 1,000 images, 1 epoch: a smoke run')
  parser.add_argument('--out', default=os.path.join(RESULTS_DIR, 'quality_fashion_mnist'),
                      help='prefix of the JSON and PNG files')
  parser.add_argument('--no-record', action='store_true',
                      help='do not add a row to benchmarks/README.md')
  args = parser.parse_args(argv)
  if args.quick:
    args.seeds, args.width, args.epochs, args.regularized_epochs = 1, 8, 1, 1
    args.train_limit, args.test_limit = 1000, 1000
    args.strength_multiplier, args.learning_rate = 10.0, 1e-2
  if not fashion_mnist.is_available(args.data_dir):
    sys.exit(f'Fashion-MNIST is not in {fashion_mnist.resolve_dir(args.data_dir)}. '
             f'{fashion_mnist.INSTALL_HINT}')
  plots.require_matplotlib()
  start = time.perf_counter()
  train, test = fashion_mnist.load_fashion_mnist(args.data_dir, train_limit=args.train_limit,
                                                 test_limit=args.test_limit)
  cost_fn = demo.flops_fn()
  runs = [run_seed(s, args, train, test, cost_fn) for s in range(args.seeds)]
  seed = demo.seed_model(args.width, input_shape=fashion_mnist.IMAGE_SHAPE)
  seed_widths = runs[0].seed_widths
  layers = [layer.name for layer in seed.layers if layer.name in seed_widths]
  summary = summarize(runs, args, cost_fn(seed), seed_widths, layers)
  minutes = (time.perf_counter() - start) / 60
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  # Paths inside the repository are written relative to it (the JSON is committed).
  repo = os.path.dirname(HERE)
  summary['plots'] = [
      os.path.relpath(path, repo) if os.path.abspath(path).startswith(repo + os.sep) else path
      for path in write_plots(summary, args.out, args.epochs, args.seeds)]
  summary['command'] = 'python benchmarks/quality_fashion_mnist.py ' + shlex.join(
      sys.argv[1:] if argv is None else argv)
  summary['wall_minutes'] = minutes
  summary['settings'] = {k: v for k, v in vars(args).items() if k not in ('out',)}
  structure_exporter.write_file_atomically(f'{args.out}.json',
                                           json.dumps(summary, indent=2, sort_keys=True))
  print(f'\nFashion-MNIST, seed width {args.width} ({summary["seed_flops"]:,.0f} FLOPs), '
        f'{args.seeds} seeds, {args.epochs} epochs from scratch; test accuracy mean ± std (%):')
  print(f'{"budget":>7} {"MorphNet FLOPs":>15} {"uniform FLOPs":>14} {"MorphNet":>14} '
        f'{"uniform":>14} {"difference":>14} W/T/L')
  cells = []
  for b in summary['budgets']:
    m, u = _mean_std(b['morphnet']['acc']), _mean_std(b['uniform']['acc'])
    d = b['difference']
    text = (f'{100 * m["mean"]:.2f} ± {100 * m["std"]:.2f} / {100 * u["mean"]:.2f} ± '
            f'{100 * u["std"]:.2f}; Δ {100 * d["mean"]:+.2f} ± {100 * d["std"]:.2f}')
    cells.append(text)
    print(f'{100 * b["budget"]:>6g}% {statistics.mean(b["morphnet"]["flops"]):>15,.0f} '
          f'{statistics.mean(b["uniform"]["flops"]):>14,.0f} {text} '
          f'{"/".join(map(str, b["wins_ties_losses"]))}')
  if summary['second_iteration']:
    s = _mean_std(summary['second_iteration']['acc'])
    print(f'2nd iteration at the seed FLOPs: {100 * s["mean"]:.2f} ± {100 * s["std"]:.2f}')
  w = summary['widths']
  print(f'\n{"layer":<14} {"seed":>5} {"FLOP-learned":>13} {"rel std":>8} {"size-learned":>13}')
  for i, layer in enumerate(w['layers']):
    print(f'{layer:<14} {w["seed"][i]:>5} {w["flops_learned_mean"][i]:>13.1f} '
          f'{100 * w["flops_learned_relative_std"][i]:>7.1f}% {w["size_learned_mean"][i]:>13.1f}')
  print(f'learned FLOPs relative std over seeds: '
        f'{100 * summary["learned_flops_relative_std"]:.2f}%  ({minutes:.1f} minutes)')
  if not args.no_record and not args.quick:
    results_table.record(
        f'Quality on Fashion-MNIST: MorphNet vs uniform width multiplier (seed width '
        f'{args.width}, {args.seeds} seeds, {args.epochs} epochs, FLOPs matched within 2%)',
        [f'{100 * f:g}% FLOPs: MorphNet / uniform acc %' for f in args.budgets] + ['minutes'],
        cells + [f'{minutes:.1f}'])


if __name__ == '__main__':
  main()
