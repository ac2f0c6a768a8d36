"""Benchmark: does the latency cost rank real sub-networks by measured latency?

Builds N random sub-networks (random width per layer) of two seed families
(ResNet-style with residual adds, MobileNet-style with depthwise separable
blocks), measures their real inference latency on this machine (batch 1 and 32,
warm-up, interleaved rounds, medians), and compares three predictors:

  (a) FLOPs (MorphNet's FLOP cost; in seconds at the calibrated peak compute),
  (b) the roofline latency cost with a datasheet entry (V100; the other
      datasheet entries are in the JSON results),
  (c) the roofline latency cost with this machine's calibrated description
      (`hardware_calibration.calibrate`, run first in this process with the
      same thread settings, or loaded with --hardware-file);
  (d) a sensitivity check, not a product figure: (c) with its memory bandwidth
      replaced by the calibrated broadcast-multiply rate (the kernel of Keras 3
      batch norms), recorded by the calibration but not used by default.

For each it reports Spearman's rank correlation with the measured latency, the
median relative error |pred - measured| / measured, and the same error after
the best single scale factor (shape only). Writes a scatter plot per family
and results JSON into benchmarks/results/ and appends rows to
benchmarks/README.md.

Run (CPU, a few minutes on 2 shared cores):
  python benchmarks/latency_check.py
On a GPU machine (TensorFlow must see the GPU; calibration and timing run there):
  python benchmarks/latency_check.py --device gpu --num-models 24
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import results_table  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
DATASHEET = 'V100'
BATCH_SIZES = (1, 32)
SECTION = 'Latency check: predicted vs measured latency of random sub-networks'


# ---------------------------------------------------------------------------
# Seed families and their random sub-networks.


def _conv_bn_relu(keras, x, filters, kernel, stride, name, relu=True):
  x = keras.layers.Conv2D(filters, kernel, strides=stride, padding='same', use_bias=False,
                          name=f'{name}_conv')(x)
  x = keras.layers.BatchNormalization(name=f'{name}_bn')(x)
  return keras.layers.ReLU(name=f'{name}_relu')(x) if relu else x


def resnet_style(widths: Dict[str, int], image: int = 32):
  """A small ResNet: stem, 3 stages x 2 basic blocks (projection at stage start)."""
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((image, image, 3))
  x = _conv_bn_relu(keras, inputs, widths['stem'], 3, 1, 'stem')
  for stage, stride in zip(range(3), (1, 2, 2)):
    out = widths[f's{stage}_out']
    for block in range(2):
      name = f's{stage}b{block}'
      s = stride if block == 0 else 1
      y = _conv_bn_relu(keras, x, widths[f'{name}_inner'], 3, s, f'{name}_a')
      y = _conv_bn_relu(keras, y, out, 3, 1, f'{name}_b', relu=False)
      shortcut = (_conv_bn_relu(keras, x, out, 1, s, f'{name}_proj', relu=False)
                  if block == 0 else x)
      x = keras.layers.ReLU(name=f'{name}_out')(keras.layers.Add(name=f'{name}_add')(
          [y, shortcut]))
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(x))


RESNET_SEED = dict(
    {'stem': 16},
    **{f's{s}_out': w for s, w in enumerate((16, 32, 64))},
    **{f's{s}b{b}_inner': w for s, w in enumerate((16, 32, 64)) for b in range(2)})


MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))


def mobilenet_style(widths: Dict[str, int], image: int = 64):
  """A small MobileNet (V1): stem, 6 depthwise-separable blocks."""
  import keras  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((image, image, 3))
  x = _conv_bn_relu(keras, inputs, widths['stem'], 3, 2, 'stem')
  for i, (_, stride) in enumerate(MOBILENET_BLOCKS):
    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding='same', use_bias=False,
                                     name=f'b{i}_dw')(x)
    x = keras.layers.BatchNormalization(name=f'b{i}_dw_bn')(x)
    x = keras.layers.ReLU(name=f'b{i}_dw_relu')(x)
    x = _conv_bn_relu(keras, x, widths[f'b{i}_pw'], 1, 1, f'b{i}_pw')
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10, name='logits')(x))


MOBILENET_SEED = dict({'stem': 32}, **{f'b{i}_pw': w for i, (w, _) in enumerate(MOBILENET_BLOCKS)})

FAMILIES = {
    'resnet_style': (resnet_style, RESNET_SEED),
    'mobilenet_style': (mobilenet_style, MOBILENET_SEED),
}


# How sub-network widths are drawn: (per-network scale range, per-layer factor range).
WIDTH_MODES = {
    # Seed width x a per-network scale x a per-layer factor: the scale spreads
    # the sub-networks' costs beyond the timing noise of a shared machine.
    'scaled': ((0.3, 1.0), (0.4, 1.0)),
    # Independent per-layer factors only, as in the MorphNet authors' study:
    # totals are closer together, shapes differ more.
    'per_layer': ((1.0, 1.0), (0.15, 1.0)),
}


def random_widths(seed_widths: Dict[str, int], rng, mode: str = 'scaled') -> Dict[str, int]:
  """Random widths: seed width x a per-network scale x a per-layer factor (WIDTH_MODES)."""
  scale, per_layer = WIDTH_MODES[mode]
  s = rng.uniform(*scale)
  return {k: max(1, int(round(w * s * rng.uniform(*per_layer))))
          for k, w in seed_widths.items()}


# ---------------------------------------------------------------------------
# Costs and measurements.


def op_terms(model, calibrated):
  """Per costed op: type, FLOPs per example and bytes per batch size (all alive).

  Computed with the resource functions on static channel counts, as the
  CostCalculator does when every channel is alive; `latency_ns` combines them
  for any hardware in Python (the first `get_cost()` of each new calculator
  traces a graph, too slow to repeat for every hardware on a shared machine).
  The seed's calibrated total is checked against the regularizer's own
  `get_cost()` in `run_family`.
  """
  from morph_net.network_regularizers import cost_calculator  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import latency_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import resource_function as rf  # pylint: disable=g-import-not-at-top
  # Fresh BN gammas are 1: every channel is alive, the cost is the built width's.
  reg = latency_regularizer.GammaLatencyRegularizer.from_keras_model(
      model, gamma_threshold=1e-3, hardware=calibrated)
  terms = []
  for op in reg.op_regularizer_manager.ops:
    if op.type not in cost_calculator.SUPPORTED_OPS:
      continue
    tensor = op.outputs[0] if op.type == 'ConcatV2' else cost_calculator.get_input_activation(op)
    a_in, a_out = float(tensor.shape[-1]), float(op.outputs[0].shape[-1])
    flops = rf.flop_function(op, False, a_in, a_out, 0.0, 0.0) if rf.is_flop_op(op) else 0.0
    terms.append({'type': op.type, 'flops': float(flops), **{
        f'bytes_b{b}': float(rf.memory_function(op, False, a_in, a_out, 0.0, 0.0, batch_size=b))
        for b in BATCH_SIZES}})
  return terms, reg


def latency_ns(terms: List[Dict], hw, batch_size: int) -> float:
  """The roofline latency of `latency_function`, summed over the ops."""
  return sum(max(t['flops'] * batch_size / hw.effective_peak_compute(t['type']),
                 t[f'bytes_b{batch_size}'] / hw.memory_bandwidth) for t in terms)


def broadcast_variant(calibrated):
  """`calibrated` with the broadcast-multiply rate as memory bandwidth, or None."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  kinds = (calibrated.measurements or {}).get('kinds', {})
  if 'broadcast' not in kinds:
    return None
  return dataclasses.replace(calibrated, name=calibrated.name + '_broadcast_bw',
                             memory_bandwidth=kinds['broadcast']['rate'])


def predicted_costs(terms: List[Dict], calibrated, datasheet_names: Sequence[str]) -> Dict:
  """FLOPs per example and roofline latencies (ns) per batch size."""
  from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
  out = {'flops': sum(t['flops'] for t in terms)}
  variant = broadcast_variant(calibrated)
  for b in BATCH_SIZES:
    out[f'calibrated_b{b}'] = latency_ns(terms, calibrated, b)
    if variant is not None:
      out[f'broadcast_bw_b{b}'] = latency_ns(terms, variant, b)
    for name in datasheet_names:
      out[f'{name}_b{b}'] = latency_ns(terms, hardware.get(name), b)
  return out


def measure(models: List, rounds: int, warmup: int, device: str, seed: int,
            small_batch_calls: int = 5) -> np.ndarray:
  """Median seconds per inference, shape [len(models), len(BATCH_SIZES)].

  Every round times each (model, batch) once, in a fresh random order, so that
  load from other processes on a shared machine spreads over all of them. A
  batch-1 sample is the median of `small_batch_calls` consecutive calls (they
  last milliseconds, so one preemption would otherwise dominate a sample).
  """
  rng = np.random.default_rng(seed)
  calls = []
  with tf.device(device):
    for model in models:
      fn = tf.function(lambda x, m=model: m(x, training=False))
      for b in BATCH_SIZES:
        x = tf.constant(rng.standard_normal((b,) + tuple(model.input_shape[1:])),
                        tf.float32)
        calls.append((b, lambda fn=fn, x=x: fn(x)[0, 0].numpy()))
    for _, call in calls:
      for _ in range(warmup):
        call()
    samples = [[] for _ in calls]
    for _ in range(rounds):
      for i in rng.permutation(len(calls)):
        b, call = calls[i]
        times = []
        for _ in range(small_batch_calls if b == 1 else 1):
          tic = time.perf_counter()
          call()
          times.append(time.perf_counter() - tic)
        samples[i].append(statistics.median(times))
  return np.array([statistics.median(s) for s in samples]).reshape(
      len(models), len(BATCH_SIZES))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman's rank correlation (average ranks for ties)."""

  def ranks(v):
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, kind='mergesort')
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # average ties
      tied = v == value
      r[tied] = r[tied].mean()
    return r

  ra, rb = ranks(a), ranks(b)
  if ra.std() == 0 or rb.std() == 0:
    return float('nan')
  return float(np.corrcoef(ra, rb)[0, 1])


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> Dict[str, float]:
  raw = float(np.median(np.abs(predicted - measured) / measured))
  scale = float(np.exp(np.median(np.log(measured / predicted))))
  fitted = float(np.median(np.abs(scale * predicted - measured) / measured))
  return {'median_rel_error': raw, 'scale': scale, 'median_rel_error_after_scale': fitted}


# ---------------------------------------------------------------------------


def plot(family: str, predictors: Dict[str, np.ndarray], measured: np.ndarray,
         stats: Dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  names = list(predictors)
  fig, axes = plt.subplots(len(BATCH_SIZES), len(names),
                           figsize=(4 * len(names), 3.6 * len(BATCH_SIZES)), squeeze=False)
  for row, b in enumerate(BATCH_SIZES):
    for col, name in enumerate(names):
      ax = axes[row][col]
      pred = predictors[name][:, row] * 1e3
      meas = measured[:, row] * 1e3
      ax.scatter(pred, meas, s=18)
      s = stats[f'b{b}'][name]
      lo, hi = min(pred.min(), meas.min()), max(pred.max(), meas.max())
      ax.plot([lo, hi], [lo, hi], 'k:', lw=0.8, label='measured = predicted')
      ax.set_xscale('log')
      ax.set_yscale('log')
      for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.set_title(f'{name}, batch {b}\nSpearman {s["spearman"]:.3f}, '
                   f'rel. err. {s["median_rel_error"]:.2f}', fontsize=9)
      ax.set_xlabel('predicted ms')
      ax.set_ylabel('measured ms')
  fig.suptitle(f'{family} ({stats["widths"]} widths): predicted vs measured inference latency')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _seed_suffix(args) -> str:
  return f'_seed{args.seed}' if args.seed else ''


def run_family(family: str, args, calibrated, device: str) -> Dict:
  from morph_net.network_regularizers import resource_function as rf  # pylint: disable=g-import-not-at-top
  builder, seed_widths = FAMILIES[family]
  rng = np.random.default_rng(args.seed)
  datasheet_names = [n for n in rf.PEAK_COMPUTE if n not in ('FLOP_LATENCY', 'MEMORY_LATENCY')]
  models, widths, costs = [], [], []
  tic = time.perf_counter()
  for i in range(args.num_models):
    w = seed_widths if i == 0 else random_widths(seed_widths, rng, args.widths)
    model = builder(w)
    models.append(model)
    widths.append(w)
    terms, reg = op_terms(model, calibrated)
    costs.append(predicted_costs(terms, calibrated, datasheet_names))
    if i == 0:  # The Python sum must equal the regularizer's own cost.
      check = float(reg.get_cost())
      if abs(check - costs[0]['calibrated_b1']) > 1e-4 * check:
        raise RuntimeError(f'per-op sum {costs[0]["calibrated_b1"]} != get_cost() {check}')
      print(f'  seed: GammaLatencyRegularizer(hardware=calibrated).get_cost() = {check:.6g} '
            'ns = the per-op sum used below')
    print(f'  sub-network {i}: {costs[-1]["flops"] / 1e6:.1f} MFLOPs per example '
          f'({time.perf_counter() - tic:.0f} s)', flush=True)
  build_s = time.perf_counter() - tic
  tic = time.perf_counter()
  measured = measure(models, args.rounds, args.warmup, device, args.seed)
  measure_s = time.perf_counter() - tic
  gflops_peak = calibrated.peak_compute * 1e9
  batch = np.array(BATCH_SIZES, dtype=float)
  flops = np.array([c['flops'] for c in costs])
  predictors = {
      'FLOPs': flops[:, None] * batch[None, :] / gflops_peak,
      f'roofline {DATASHEET}': np.array(
          [[c[f'{DATASHEET}_b{b}'] for b in BATCH_SIZES] for c in costs]) * 1e-9,
      'roofline calibrated': np.array(
          [[c[f'calibrated_b{b}'] for b in BATCH_SIZES] for c in costs]) * 1e-9,
  }
  if 'broadcast_bw_b1' in costs[0]:
    predictors['calibrated, broadcast bw'] = np.array(
        [[c[f'broadcast_bw_b{b}'] for b in BATCH_SIZES] for c in costs]) * 1e-9
  stats = {'widths': args.widths}
  for col, b in enumerate(BATCH_SIZES):
    stats[f'b{b}'] = {
        name: dict(spearman=spearman(p[:, col], measured[:, col]),
                   **relative_errors(p[:, col], measured[:, col]))
        for name, p in predictors.items()}
    stats[f'b{b}']['datasheet_spearman'] = {
        name: spearman([c[f'{name}_b{b}'] for c in costs], measured[:, col])
        for name in datasheet_names}
  os.makedirs(RESULTS_DIR, exist_ok=True)
  png = os.path.join(RESULTS_DIR, f'latency_check_{family}_{args.widths}{_seed_suffix(args)}.png')
  plot(family, predictors, measured, stats, png)
  return {'family': family, 'num_models': args.num_models, 'widths': widths,
          'costs': costs, 'measured_s': measured.tolist(), 'stats': stats, 'plot': png,
          'build_and_cost_s': build_s, 'measure_s': measure_s}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num-models', type=int, default=16,
                      help='sub-networks per family, the seed included. Default: 16')
  parser.add_argument('--rounds', type=int, default=7,
                      help='timed rounds per (model, batch); medians kept. Default: 7')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--widths', choices=list(WIDTH_MODES), default='scaled',
                      help='how sub-network widths are drawn (WIDTH_MODES). Default: scaled')
  parser.add_argument('--device', choices=('auto', 'cpu', 'gpu'), default='auto')
  parser.add_argument('--threads', type=int, default=1,
                      help='TensorFlow intra- and inter-op threads (0: TensorFlow\'s '
                      'choice). Default: 1, steadier on a shared machine')
  parser.add_argument('--hardware-file', default=None,
                      help='a calibrated hardware JSON file; default: calibrate now')
  parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
  parser.add_argument('--no-readme', action='store_true', help='do not append README rows')
  args = parser.parse_args(argv)
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import hardware_calibration  # pylint: disable=g-import-not-at-top
  device = {'auto': hardware_calibration.default_device(), 'cpu': '/CPU:0',
            'gpu': '/GPU:0'}[args.device]
  kind = 'gpu' if 'GPU' in device else 'cpu'
  start = time.perf_counter()
  if args.hardware_file:
    calibrated = hardware.load(args.hardware_file)
  else:
    result = hardware_calibration.calibrate(device=device, log=print)
    print(result.format_table())
    calibrated = result.hardware
    os.makedirs(RESULTS_DIR, exist_ok=True)
    hardware.save(calibrated, os.path.join(RESULTS_DIR, f'latency_check_hardware_{kind}.json'))
  results = {'widths': args.widths, 'width_modes': WIDTH_MODES, 'device': device, 'threads': args.threads, 'rounds': args.rounds,
             'warmup': args.warmup, 'batch_sizes': list(BATCH_SIZES),
             'calibrated': calibrated.to_dict(), 'families': {}}
  for family in args.families:
    print(f'\n== {family}: {args.num_models} sub-networks')
    r = run_family(family, args, calibrated, device)
    results['families'][family] = r
    print(f'built and costed in {r["build_and_cost_s"]:.1f} s, measured in '
          f'{r["measure_s"]:.1f} s; plot {os.path.relpath(r["plot"])}')
    measured = np.array(r['measured_s'])
    for col, b in enumerate(BATCH_SIZES):
      s = r['stats'][f'b{b}']
      print(f'batch {b}: measured {measured[:, col].min() * 1e3:.2f}..'
            f'{measured[:, col].max() * 1e3:.2f} ms')
      for name in s:
        if name == 'datasheet_spearman':
          continue
        print(f'  {name:<22} Spearman {s[name]["spearman"]:+.3f}  median rel. error '
              f'{s[name]["median_rel_error"]:.3f} (after best scale '
              f'{s[name]["median_rel_error_after_scale"]:.3f})')
      if not args.no_readme:
        names = [n for n in s if n != 'datasheet_spearman']
        results_table.record(
            SECTION,
            ['family', 'widths', 'device, threads', 'batch', 'N', 'measured ms',
             'Spearman FLOPs / V100 / calibrated (/ broadcast bw)',
             'median rel. err. FLOPs / V100 / calibrated (/ broadcast bw)',
             'rel. err. after best scale FLOPs / V100 / calibrated (/ broadcast bw)'],
            [family, args.widths + (f' (seed {args.seed})' if args.seed else ''),
             f'{kind}, {args.threads or "auto"}', b, args.num_models,
             f'{measured[:, col].min() * 1e3:.2f}..{measured[:, col].max() * 1e3:.2f}',
             ' / '.join(f'{s[n]["spearman"]:.3f}' for n in names),
             ' / '.join(f'{s[n]["median_rel_error"]:.2f}' for n in names),
             ' / '.join(f'{s[n]["median_rel_error_after_scale"]:.2f}' for n in names)],
            keep=12)
  results['seconds'] = time.perf_counter() - start
  path = os.path.join(RESULTS_DIR, f'latency_check_{kind}_{args.widths}{_seed_suffix(args)}.json')
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
  structure_exporter.write_file_atomically(path, json.dumps(results, indent=1) + '\n')
  print(f'\nwrote {os.path.relpath(path)} ({results["seconds"]:.0f} s in all)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
