"""Benchmark 4: MorphNet vs the uniform width multiplier on the digits, matched FLOPs.

The paper's claim (Gordon et al. 2018): at the same FLOP cost, a network whose
widths MorphNet learned -- shrink, then expand uniformly to the budget -- is
more accurate than the seed network scaled by a uniform width multiplier ω.

Protocol, on the demo's data and seed network (`morph_net.examples`:
scikit-learn's 8x8 digits, fixed 1347 / 450 split; the digits CNN of width 32):
for each seed s (weights and data order),
  1. train the seed network with GammaFlopsRegularizer (strength
     `recommend_strength`, i.e. 1 / seed FLOPs) -> learned widths O'_s;
  2. for each budget b (a fraction of the seed's FLOPs): MorphNet = the
     learned widths expanded uniformly to the budget; baseline = the seed's
     widths scaled by the largest uniform ω under it; their FLOPs matched within
     2% (`demo.match_budget`: both stay under the budget);
  3. train both from scratch (same seed, same epochs) and measure the test
     accuracy.
It prints per budget the mean and standard deviation over seeds of each
family's test accuracy, the paired difference, the wins, and the actual FLOPs;
then records a row in benchmarks/README.md.

Run: python benchmarks/quality.py [--seeds 3 --budgets 0.5,0.25,0.0625 --epochs 30]
(about 15 minutes on 2 CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Dict, List

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402

from morph_net.examples import demo  # noqa: E402
from morph_net.examples import digits  # noqa: E402

import results_table  # noqa: E402


@dataclasses.dataclass
class Trial:
  seed: int
  budget_fraction: float
  morphnet_flops: float
  uniform_flops: float
  morphnet_accuracy: float
  uniform_accuracy: float
  learned_flops: float


def _fractions(text: str) -> List[float]:
  try:
    values = [float(part) for part in text.split(',') if part.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--budgets must be fractions such as 0.5,0.25. '
                                     f'Received: {text!r}') from None
  if not values or any(not 0 < v <= 1 for v in values):
    raise argparse.ArgumentTypeError(f'--budgets must be in (0, 1]. Received: {text!r}')
  return values


def _mean_std(values: List[float]) -> str:
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}'


def run_trials(args) -> List[Trial]:
  train, test = digits.load_digits()
  cost_fn = demo.flops_fn()
  trials = []
  for seed_value in range(args.seeds):
    config = demo.DemoConfig(width=args.width, regularized_epochs=args.regularized_epochs,
                             retrain_epochs=args.epochs, seed=seed_value)
    keras.utils.set_random_seed(seed_value)
    seed = demo.seed_model(args.width)
    seed_flops = cost_fn(seed)
    start = time.perf_counter()
    learned = demo.learn_structure(seed, train, test, config, verbose=0,
                                   seed_value=seed_value)
    learned_flops = cost_fn(demo.build_network(seed, learned.learned_widths, seed_value))
    print(f'seed {seed_value}: learned widths {learned.learned_widths} '
          f'({100 * learned_flops / seed_flops:.1f}% of the seed FLOPs, '
          f'{time.perf_counter() - start:.0f} s)', flush=True)
    for fraction in args.budgets:
      pair = demo.match_budget(seed, learned.seed_widths, learned.learned_widths,
                               fraction * seed_flops, cost_fn)
      accuracy = {}
      for family, candidate in (('MorphNet', pair.morphnet), ('uniform', pair.uniform)):
        model = demo.build_network(seed, candidate.widths, seed_value)
        accuracy[family] = demo.train_and_evaluate(model, train, test, config, seed_value)
      trials.append(Trial(seed_value, fraction, pair.morphnet.flops, pair.uniform.flops,
                          accuracy['MorphNet'], accuracy['uniform'], learned_flops))
      print(f'  budget {100 * fraction:g}%: MorphNet {pair.morphnet.flops:,.0f} FLOPs '
            f'{100 * accuracy["MorphNet"]:.2f}% | uniform ω={pair.uniform.width_multiplier:.3g} '
            f'{pair.uniform.flops:,.0f} FLOPs {100 * accuracy["uniform"]:.2f}% '
            f'(FLOP gap {100 * pair.flop_gap:.2f}%)', flush=True)
  return trials


def summarize(trials: List[Trial], budgets: List[float], seed_flops: float) -> Dict[float, dict]:
  summary = {}
  for fraction in budgets:
    group = [t for t in trials if t.budget_fraction == fraction]
    differences = [t.morphnet_accuracy - t.uniform_accuracy for t in group]
    summary[fraction] = {
        'morphnet': _mean_std([t.morphnet_accuracy for t in group]),
        'uniform': _mean_std([t.uniform_accuracy for t in group]),
        'difference': _mean_std(differences),
        'wins': (sum(d > 0 for d in differences), sum(d == 0 for d in differences),
                 sum(d < 0 for d in differences)),
        'morphnet_flops': statistics.mean(t.morphnet_flops for t in group),
        'uniform_flops': statistics.mean(t.uniform_flops for t in group),
        'max_gap': max(demo.flop_gap(t.morphnet_flops, t.uniform_flops) for t in group),
        'budget_flops': fraction * seed_flops,
    }
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--budgets', type=_fractions, default=[0.5, 0.25, 0.0625])
  parser.add_argument('--width', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=30, help='retraining epochs')
  parser.add_argument('--regularized-epochs', type=int, default=30)
  parser.add_argument('--no-record', action='store_true',
                      help='print only; do not add a row to benchmarks/README.md')
  args = parser.parse_args()
  start = time.perf_counter()
  trials = run_trials(args)
  seed_flops = demo.flops_fn()(demo.seed_model(args.width))
  summary = summarize(trials, args.budgets, seed_flops)
  minutes = (time.perf_counter() - start) / 60
  print(f'\nDigits, seed CNN width {args.width} ({seed_flops:,.0f} FLOPs), {args.seeds} '
        f'seeds, {args.epochs} epochs from scratch; test accuracy mean ± std (%):')
  header = (f'{"budget":>8} {"MorphNet FLOPs":>15} {"uniform FLOPs":>14} {"max gap":>8} '
            f'{"MorphNet acc":>14} {"uniform acc":>14} {"difference":>14} {"wins/ties/losses":>17}')
  print(header)
  for fraction, s in summary.items():
    print(f'{100 * fraction:>7g}% {s["morphnet_flops"]:>15,.0f} {s["uniform_flops"]:>14,.0f} '
          f'{100 * s["max_gap"]:>7.2f}% {s["morphnet"]:>14} {s["uniform"]:>14} '
          f'{s["difference"]:>14} {"/".join(map(str, s["wins"])):>17}')
  print(f'({minutes:.1f} minutes)')
  if not args.no_record:
    columns = [f'{100 * f:g}% FLOPs: MorphNet / uniform acc % (FLOPs)' for f in args.budgets]
    row = [f'{s["morphnet"]} ({s["morphnet_flops"]:,.0f}) / {s["uniform"]} '
           f'({s["uniform_flops"]:,.0f}); Δ {s["difference"]}, W/T/L '
           f'{"/".join(map(str, s["wins"]))}' for s in summary.values()]
    results_table.record(
        f'Quality: MorphNet vs uniform width multiplier (digits, CNN width {args.width}, '
        f'{args.seeds} seeds, {args.epochs} epochs, FLOPs matched within 2%)',
        columns + ['minutes'], row + [f'{minutes:.1f}'])


if __name__ == '__main__':
  main()
