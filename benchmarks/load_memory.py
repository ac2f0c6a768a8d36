"""Benchmark: one regularizer serving thousands of evaluations (issue 7, "Load").

A `GammaFlopsRegularizer` is built once on ResNet152 (weights=None, 96x96
input). Then, after a warm-up:

1. eager: `get_cost()` and `get_regularization_term()` are read N times each
   (as a callback or a logging loop would);
2. `tf.function`: a train-step-like function computes the term, takes its
   gradient with respect to the gammas, applies an SGD update (so the values
   change every step) and returns the cost, N times.

Reported: the process RSS (VmRSS) before and after each loop, and the number
of traces of every compiled function (the calculator's compiled cost / term
functions, the train step). The expected result: RSS flat (within allocator
noise) and exactly one trace per function. Run:

  python benchmarks/load_memory.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from morph_net.network_regularizers import flop_regularizer  # noqa: E402

import results_table  # noqa: E402


def rss_mib() -> float:
  """Resident set size of this process, in MiB (Linux /proc)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  raise RuntimeError('VmRSS not found in /proc/self/status.')


def _settled_rss() -> float:
  gc.collect()
  return rss_mib()


def _tracing_counts(reg) -> dict:
  compiled = reg._calculator._compiled  # is_regularization -> tf.function
  return {('term' if key else 'cost'): fn.experimental_get_tracing_count()
          for key, fn in compiled.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--calls', type=int, default=2000)
  parser.add_argument('--warmup', type=int, default=100)
  args = parser.parse_args()

  start = time.perf_counter()
  model = keras.applications.ResNet152(weights=None, input_shape=(96, 96, 3), classes=10)
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  print(f'ResNet152 96x96: built and analysed in {time.perf_counter() - start:.1f} s, '
        f'{len(reg.op_regularizer_manager.ops)} ops grouped.')
  gammas = [layer.gamma for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]

  # 1. Eager reads.
  for _ in range(args.warmup):
    reg.get_cost().numpy()
    reg.get_regularization_term().numpy()
  eager_before = _settled_rss()
  start = time.perf_counter()
  for _ in range(args.calls):
    reg.get_cost().numpy()
    reg.get_regularization_term().numpy()
  eager_ms = (time.perf_counter() - start) / (2 * args.calls) * 1e3
  eager_after = _settled_rss()
  eager_traces = _tracing_counts(reg)
  print(f'eager: {args.calls} x (get_cost + get_regularization_term), '
        f'{eager_ms:.2f} ms per read; RSS {eager_before:.1f} -> {eager_after:.1f} MiB '
        f'({eager_after - eager_before:+.1f}); traces {eager_traces}')

  # 2. A train-step-like tf.function: term, gradient, SGD update, cost.
  optimizer = keras.optimizers.SGD(learning_rate=1e-12)
  optimizer.build(gammas)

  @tf.function
  def train_step():
    with tf.GradientTape() as tape:
      term = reg.get_regularization_term()
    grads = tape.gradient(term, [g._value for g in gammas])  # the tf.Variables read
    optimizer.apply_gradients(zip(grads, gammas))
    return reg.get_cost(), term

  for _ in range(args.warmup):
    train_step()
  step_before = _settled_rss()
  first_cost = None
  start = time.perf_counter()
  for _ in range(args.calls):
    cost, term = train_step()
    if first_cost is None:
      first_cost = float(cost)
  step_ms = (time.perf_counter() - start) / args.calls * 1e3
  step_after = _settled_rss()
  step_traces = train_step.experimental_get_tracing_count()
  print(f'tf.function train step: {args.calls} steps, {step_ms:.2f} ms per step; '
        f'RSS {step_before:.1f} -> {step_after:.1f} MiB ({step_after - step_before:+.1f}); '
        f'traces {step_traces}; cost {first_cost:.4g} -> {float(cost):.4g}, '
        f'term {float(term):.4g}')

  results_table.record(
      'Load: one regularizer, many evaluations (ResNet152 96x96, GammaFlops)',
      ['calls', 'eager ms/read', 'eager RSS MiB before -> after', 'eager traces (cost, term)',
       'tf.function ms/step', 'tf.function RSS MiB before -> after', 'tf.function traces'],
      [args.calls, f'{eager_ms:.2f}', f'{eager_before:.0f} -> {eager_after:.0f}',
       f"{eager_traces.get('cost')}, {eager_traces.get('term')}", f'{step_ms:.2f}',
       f'{step_before:.0f} -> {step_after:.0f}', step_traces])


if __name__ == '__main__':
  main()
