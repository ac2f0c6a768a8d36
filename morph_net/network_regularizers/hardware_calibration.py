"""Measures this machine's effective roofline figures with TF microbenchmarks.

`calibrate()` times four kinds of kernels at several sizes, on the CPU or a
GPU:

| kind | op type(s) it calibrates | work |
|---|---|---|
| `dense_conv` | `Conv2D` (also used for `Conv2DBackpropInput`, `Conv3D`) | 2·H·W·9·C_in·C_out FLOPs (3x3, SAME, batch 1) |
| `depthwise_conv` | `DepthwiseConv2dNative` | 2·H·W·9·C FLOPs |
| `matmul` | `MatMul` | 2·n³ FLOPs (n×n by n×n) |
| `copy` | memory bandwidth | 8·n bytes (float32 ReLU: read n, write n) |
| `broadcast` | recorded only | 8·n bytes (x[n/64, 64] * s[64], Keras 3 BN's per-channel Mul) |

Each kernel runs in its own `tf.function` on fixed inputs; after warm-up
calls, every (kind, size) is timed once per round, the rounds interleave all
kernels (so a burst of load on a shared machine hits all of them alike), and
the median time per (kind, size) is kept. The effective rate of a kind is the
*marginal* one: the slope of time against work over the sizes (Theil-Sen:
median of the pairwise slopes), since the roofline has no per-op overhead term
and a fixed dispatch overhead only shifts all sub-networks of a model alike.
The intercept is reported as the per-call overhead. When the slope is not
usable (non-positive, or a negative intercept from noise), the best rate seen
at any size is used instead, and the measurement records which.

`peak_compute` is the fastest of the three compute kinds; `op_efficiency`
holds each op type's fraction of it; `memory_bandwidth` is the copy rate. The
broadcast multiply's rate is only recorded in `measurements`: on CPUs it can
be several times lower than a plain copy, and Keras 3 batch norms are such
broadcasts (edit `memory_bandwidth` to use it).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from morph_net.network_regularizers import hardware as hardware_lib

KINDS = ('dense_conv', 'depthwise_conv', 'matmul', 'copy', 'broadcast')

# Op types each compute kind calibrates. Transposed and 3-D convolutions are
# not timed: they take the dense convolution's efficiency.
KIND_OP_TYPES = {
    'dense_conv': ('Conv2D', 'Conv2DBackpropInput', 'Conv3D'),
    'depthwise_conv': ('DepthwiseConv2dNative',),
    'matmul': ('MatMul',),
}

MEMORY_KINDS = ('copy', 'broadcast')

# Sizes per kind: (H, C_in, C_out) for dense, (H, C) for depthwise, n for
# matmul and copy. CPU sizes keep a full run well under a minute on 2 cores.
CPU_SIZES = {
    'dense_conv': [(16, 32, 32), (16, 64, 64), (32, 64, 64), (32, 96, 96), (32, 128, 128)],
    'depthwise_conv': [(16, 64), (32, 64), (32, 128), (64, 128), (64, 256)],
    'matmul': [128, 256, 384, 512, 768],
    'copy': [1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22],
    'broadcast': [1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22],
}
QUICK_SIZES = {
    'dense_conv': [(8, 16, 16), (16, 32, 32), (16, 64, 64)],
    'depthwise_conv': [(16, 32), (32, 64), (32, 128)],
    'matmul': [64, 128, 256],
    'copy': [1 << 14, 1 << 17, 1 << 19],
    'broadcast': [1 << 14, 1 << 17, 1 << 19],
}
GPU_SIZES = {
    'dense_conv': [(28, 128, 128), (56, 128, 128), (56, 256, 256), (112, 256, 256)],
    'depthwise_conv': [(56, 256), (112, 256), (112, 512), (224, 512)],
    'matmul': [1024, 2048, 3072, 4096],
    'copy': [1 << 22, 1 << 24, 1 << 25, 1 << 26],
    'broadcast': [1 << 22, 1 << 24, 1 << 25, 1 << 26],
}


@dataclasses.dataclass
class KernelTiming:
  """The median time of one (kind, size) and the rate it implies."""
  kind: str
  size: Tuple[int, ...]
  work: float  # FLOPs, or bytes for 'copy' and 'broadcast'.
  median_s: float

  @property
  def rate(self) -> float:
    """GFLOP/s (GB/s for memory kinds) at this size, per-call overhead included."""
    return self.work / self.median_s / 1e9


@dataclasses.dataclass
class KindFit:
  """The effective rate of a kind."""
  kind: str
  rate: float  # GFLOP/s or GB/s.
  overhead_us: Optional[float]  # per-call intercept, None when not fitted.
  method: str  # 'marginal (Theil-Sen slope)' or 'best size rate'.
  timings: List[KernelTiming]


@dataclasses.dataclass
class Calibration:
  """The outcome of `calibrate()`: the description and what was measured."""
  hardware: hardware_lib.Hardware
  fits: Dict[str, KindFit]
  seconds: float

  def format_table(self) -> str:
    """A human-readable summary of the measurements."""
    lines = [f'{"kind":<15} {"size":<16} {"work":>12} {"median ms":>10} {"rate":>10}']
    for kind in KINDS:
      fit = self.fits[kind]
      unit = 'GB/s' if kind in MEMORY_KINDS else 'GFLOP/s'
      for t in fit.timings:
        size = 'x'.join(str(s) for s in t.size)
        lines.append(f'{kind:<15} {size:<16} {t.work:>12.4g} {t.median_s * 1e3:>10.3f} '
                     f'{t.rate:>10.2f}')
      overhead = ('' if fit.overhead_us is None else
                  f', per-call overhead {fit.overhead_us:.1f} us')
      lines.append(f'  -> {kind}: {fit.rate:.2f} {unit} ({fit.method}{overhead})')
    hw = self.hardware
    lines.append(f'peak_compute {hw.peak_compute:.4g} GFLOP/s, memory_bandwidth '
                 f'{hw.memory_bandwidth:.4g} GB/s, op_efficiency '
                 + ', '.join(f'{k} {v:.3g}' for k, v in sorted(hw.op_efficiency.items())))
    lines.append(f'measured in {self.seconds:.1f} s')
    return '\n'.join(lines)


def _kernel(kind: str, size, seed: int) -> Tuple[Callable[[], tf.Tensor], float]:
  """A zero-argument timed callable for (kind, size) and its work."""
  rng = np.random.default_rng(seed)

  def tensor(*shape):
    return tf.constant(rng.standard_normal(shape).astype(np.float32))

  if kind == 'dense_conv':
    h, c_in, c_out = size
    x, w = tensor(1, h, h, c_in), tensor(3, 3, c_in, c_out)
    fn = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, 'SAME')[0, 0, 0, :1])
    work = 2.0 * h * h * 9 * c_in * c_out
    args = (x, w)
  elif kind == 'depthwise_conv':
    h, c = size
    x, w = tensor(1, h, h, c), tensor(3, 3, c, 1)
    fn = tf.function(
        lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], 'SAME')[0, 0, 0, :1])
    work = 2.0 * h * h * 9 * c
    args = (x, w)
  elif kind == 'matmul':
    n = size
    a, b = tensor(n, n), tensor(n, n)
    fn = tf.function(lambda a, b: tf.matmul(a, b)[0, :1])
    work = 2.0 * n ** 3
    args = (a, b)
  elif kind == 'copy':
    n = size
    x = tensor(n)
    fn = tf.function(lambda x: tf.nn.relu(x)[:1])
    work = 8.0 * n  # float32 read + write.
    args = (x,)
  elif kind == 'broadcast':
    n = size
    x, scale = tensor(max(1, n // 64), 64), tensor(64)
    fn = tf.function(lambda x, s: (x * s)[0, :1])
    work = 8.0 * max(1, n // 64) * 64  # read x, write the product (s is tiny).
    args = (x, scale)
  else:
    raise ValueError(f'kind must be one of {list(KINDS)}. Received: kind={kind!r}.')
  # Reading one element back waits for the kernel (GPU) at negligible cost.
  return (lambda: fn(*args).numpy()), work


def _theil_sen(works: Sequence[float], seconds: Sequence[float]) -> Tuple[float, float]:
  slopes = [(t2 - t1) / (w2 - w1)
            for (w1, t1), (w2, t2) in itertools.combinations(zip(works, seconds), 2)
            if w2 != w1]
  slope = statistics.median(slopes)
  intercept = statistics.median(t - slope * w for w, t in zip(works, seconds))
  return slope, intercept


def _fit(kind: str, timings: List[KernelTiming]) -> KindFit:
  best = max(t.rate for t in timings)
  slope, intercept = _theil_sen([t.work for t in timings], [t.median_s for t in timings])
  if slope > 0 and intercept >= 0:
    return KindFit(kind, 1.0 / slope / 1e9, intercept * 1e6,
                   'marginal (Theil-Sen slope)', timings)
  return KindFit(kind, best, None, 'best size rate', timings)


def default_device() -> str:
  """'/GPU:0' when TensorFlow sees a GPU, else '/CPU:0'."""
  return '/GPU:0' if tf.config.list_physical_devices('GPU') else '/CPU:0'


def calibrate(*, name: Optional[str] = None, device: Optional[str] = None,
              quick: bool = False, repeats: Optional[int] = None, warmup: int = 3,
              sizes: Optional[Dict[str, list]] = None,
              log: Optional[Callable[[str], None]] = None) -> Calibration:
  """Measures this machine's effective compute and bandwidth figures.

  Args:
    name: The name of the description. Defaults to
      `'calibrated_<machine>_<cpu|gpu>'`.
    device: A TensorFlow device, e.g. `'/CPU:0'` or `'/GPU:0'`. Defaults to
      `default_device()`.
    quick: Fewer, smaller sizes and fewer rounds (a few seconds; figures
      dominated by per-call overhead, for tests and smoke runs).
    repeats: Timed rounds per (kind, size). Defaults to 5 (quick) or 21.
    warmup: Untimed calls per (kind, size) before timing. Defaults to 3.
    sizes: Overrides the sizes per kind (see `CPU_SIZES`).
    log: Called with progress lines. Defaults to silence.

  Returns:
    A `Calibration` whose `hardware` can be passed as `hardware=`.

  Raises:
    ValueError: a bad `repeats`, `warmup` or `device`.
  """
  repeats = repeats if repeats is not None else (5 if quick else 21)
  for field, value, minimum in (('repeats', repeats, 1), ('warmup', warmup, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ValueError(f'{field} must be an integer >= {minimum}. '
                       f'Received: {field}={value!r}.')
  device = device or default_device()
  on_gpu = 'GPU' in device.upper()
  if sizes is None:
    sizes = QUICK_SIZES if quick else (GPU_SIZES if on_gpu else CPU_SIZES)
  missing = [k for k in KINDS if not sizes.get(k) or len(sizes[k]) < 2]
  if missing:
    raise ValueError(f'sizes must give at least 2 sizes for each kind {list(KINDS)}. '
                     f'Received: too few for {missing}.')
  log = log or (lambda line: None)
  start = time.perf_counter()
  try:
    with tf.device(device):
      kernels = [(kind, size) + _kernel(kind, size, seed=i)
                 for i, (kind, size) in enumerate(
                     (k, s) for k in KINDS for s in sizes[k])]
      log(f'calibrating on {device}: {len(kernels)} kernels, {warmup} warm-up calls, '
          f'{repeats} interleaved rounds')
      for _, _, call, _ in kernels:
        for _ in range(warmup):
          call()
      samples: List[List[float]] = [[] for _ in kernels]
      rng = np.random.default_rng(0)
      for _ in range(repeats):
        for index in rng.permutation(len(kernels)):
          call = kernels[index][2]
          tic = time.perf_counter()
          call()
          samples[index].append(time.perf_counter() - tic)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    raise ValueError(f'Cannot run the microbenchmarks on device {device!r}: {e}. '
                     f'Received: device={device!r}.') from e
  timings: Dict[str, List[KernelTiming]] = {k: [] for k in KINDS}
  for (kind, size, _, work), times in zip(kernels, samples):
    size_tuple = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    timings[kind].append(KernelTiming(kind, size_tuple, work, statistics.median(times)))
  fits = {kind: _fit(kind, timings[kind]) for kind in KINDS}
  peak = max(fits[k].rate for k in KIND_OP_TYPES)
  efficiency = {op_type: min(1.0, fits[kind].rate / peak)
                for kind, op_types in KIND_OP_TYPES.items() for op_type in op_types}
  seconds = time.perf_counter() - start
  name = name or f'calibrated_{platform.machine() or "machine"}_{"gpu" if on_gpu else "cpu"}'
  measurements = {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device': device,
      'platform': platform.platform(),
      'processor': platform.processor() or platform.machine(),
      'tensorflow': tf.__version__,
      'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'quick': quick, 'repeats': repeats, 'warmup': warmup, 'seconds': round(seconds, 2),
      'note': 'Conv2DBackpropInput and Conv3D take the dense_conv efficiency (not timed); '
              'memory_bandwidth is the copy rate, the broadcast rate is recorded only.',
      'kinds': {
          kind: {
              'rate': fit.rate, 'unit': 'GB/s' if kind in MEMORY_KINDS else 'GFLOP/s',
              'method': fit.method, 'overhead_us': fit.overhead_us,
              'sizes': [{'size': list(t.size), 'work': t.work, 'median_s': t.median_s,
                         'rate': t.rate} for t in fit.timings],
          } for kind, fit in fits.items()},
  }
  described = hardware_lib.Hardware(
      name=name, peak_compute=peak, memory_bandwidth=fits['copy'].rate,
      op_efficiency=efficiency,
      description=f'measured by morphnet calibrate on {device}',
      measurements=measurements)
  return Calibration(described, fits, seconds)
