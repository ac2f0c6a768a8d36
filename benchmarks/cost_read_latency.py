"""Benchmark 3: latency of an eager `get_cost()` / `get_regularization_term()` read.

Target (issue 6): under 5 ms per call on ResNet50. Run:
python benchmarks/cost_read_latency.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402

from morph_net.network_regularizers import flop_regularizer  # noqa: E402

import results_table  # noqa: E402


def per_call_ms(fn, calls: int = 200, repeats: int = 5) -> float:
  fn()  # warm-up (the first call compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - start) / calls * 1e3)
  return statistics.median(times)


def main():
  model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  cost_ms = per_call_ms(lambda: reg.get_cost().numpy())
  term_ms = per_call_ms(lambda: reg.get_regularization_term().numpy())
  print(f'ResNet50 eager get_cost(): {cost_ms:.2f} ms/call (target < 5 ms)')
  print(f'ResNet50 eager get_regularization_term(): {term_ms:.2f} ms/call')
  results_table.record('Cost read latency (ResNet50 224x224, eager, median of 5x200 calls)',
                       ['get_cost ms', 'get_regularization_term ms'],
                       [f'{cost_ms:.2f}', f'{term_ms:.2f}'])


if __name__ == '__main__':
  main()
