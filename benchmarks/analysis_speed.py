"""Benchmark 1: trace + analysis + first cost evaluation of deep Keras models.

Target (issue 6): ResNet152 under 2 s. Also shows how the time grows with depth
(ResNet50 -> 101 -> 152). Run: python benchmarks/analysis_speed.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402

from morph_net.keras_integration import tracing  # noqa: E402
from morph_net.network_regularizers import flop_regularizer  # noqa: E402

import results_table  # noqa: E402

MODELS = ('ResNet50', 'ResNet101', 'ResNet152', 'InceptionV3', 'DenseNet201')


def measure(name: str, size: int = 224) -> dict:
  model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
  start = time.perf_counter()
  traced = tracing.trace_model(model)
  traced_at = time.perf_counter()
  reg = flop_regularizer.GammaFlopsRegularizer(traced.output_ops, gamma_threshold=1e-2)
  analysed_at = time.perf_counter()
  cost = float(reg.get_cost())
  done = time.perf_counter()
  return dict(model=name, ops=len(reg.op_regularizer_manager.ops), flops=cost,
              trace=traced_at - start, analysis=analysed_at - traced_at,
              first_cost=done - analysed_at, total=done - start)


def main():
  rows = [measure(name) for name in MODELS]
  print(f'{"model":<12} {"ops":>6} {"GFLOPs":>8} {"trace s":>8} {"analysis s":>10} '
        f'{"1st cost s":>10} {"total s":>8}')
  for r in rows:
    print(f'{r["model"]:<12} {r["ops"]:>6} {r["flops"] / 1e9:>8.2f} {r["trace"]:>8.2f} '
          f'{r["analysis"]:>10.2f} {r["first_cost"]:>10.2f} {r["total"]:>8.2f}')
  by_name = {r['model']: r for r in rows}
  growth = by_name['ResNet152']['total'] / by_name['ResNet50']['total']
  ops_growth = by_name['ResNet152']['ops'] / by_name['ResNet50']['ops']
  print(f'ResNet152 / ResNet50: time x{growth:.2f} for ops x{ops_growth:.2f} '
        f'(target: ResNet152 total < 2 s; measured {by_name["ResNet152"]["total"]:.2f} s)')
  results_table.record(
      'Analysis speed (224x224, batch 1; seconds: trace + analysis + first get_cost)',
      [r['model'] for r in rows] + ['R152/R50 time (ops ratio)'],
      [f'{r["total"]:.2f} ({r["trace"]:.2f}+{r["analysis"]:.2f}+{r["first_cost"]:.2f})'
       for r in rows] + [f'{growth:.2f} ({ops_growth:.2f})'])


if __name__ == '__main__':
  main()
