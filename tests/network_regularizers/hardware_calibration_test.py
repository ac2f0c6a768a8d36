"""Tests for hardware_calibration: the rate fit and a tiny real calibration."""

from __future__ import annotations

import pytest

from morph_net.network_regularizers import hardware_calibration as hc


def _timings(kind, points):
  return [hc.KernelTiming(kind, (i,), work, seconds) for i, (work, seconds) in enumerate(points)]


def test_marginal_rate_separates_the_per_call_overhead():
  # t = 50 us + work / (20 GFLOP/s): the slope gives 20 GFLOP/s exactly, the
  # intercept 50 us, while the per-size rates (work / t) all stay below 20.
  points = [(w, 50e-6 + w / 20e9) for w in (1e6, 4e6, 1.6e7, 6.4e7)]
  fit = hc._fit('dense_conv', _timings('dense_conv', points))
  assert fit.rate == pytest.approx(20.0)
  assert fit.overhead_us == pytest.approx(50.0)
  assert fit.method.startswith('marginal')
  assert all(t.rate < 20.0 for t in fit.timings)


def test_theil_sen_ignores_one_outlier():
  # Four points on t = 1e-3 + w * 1e-9 and one disturbed by load.
  points = [(1e6, 2e-3), (2e6, 3e-3), (3e6, 4e-3 * 5), (4e6, 5e-3), (5e6, 6e-3)]
  slope, intercept = hc._theil_sen([w for w, _ in points], [t for _, t in points])
  assert slope == pytest.approx(1e-9)
  assert intercept == pytest.approx(1e-3)


def test_unusable_slope_falls_back_to_the_best_size_rate():
  # Time falls with work (noise): slope < 0. Rates: 1e6/2e-3 = 0.5 GFLOP/s,
  # 2e6/1e-3 = 2 GFLOP/s; the best is kept.
  fit = hc._fit('matmul', _timings('matmul', [(1e6, 2e-3), (2e6, 1e-3)]))
  assert (fit.rate, fit.overhead_us, fit.method) == (pytest.approx(2.0), None,
                                                     'best size rate')


def test_tiny_calibration_gives_a_valid_description():
  sizes = {'dense_conv': [(4, 4, 4), (8, 8, 8)], 'depthwise_conv': [(4, 4), (8, 8)],
           'matmul': [8, 16], 'copy': [256, 1024], 'broadcast': [256, 1024]}
  result = hc.calibrate(name='tiny', device='/CPU:0', sizes=sizes, repeats=1, warmup=0)
  hw = result.hardware
  assert hw.name == 'tiny' and hw.peak_compute > 0 and hw.memory_bandwidth > 0
  assert set(hw.op_efficiency) == {'Conv2D', 'Conv2DBackpropInput', 'Conv3D',
                                   'DepthwiseConv2dNative', 'MatMul'}
  assert max(hw.op_efficiency.values()) == 1.0
  # Work of each kernel, by hand: 2*H*W*9*Cin*Cout, 2*H*W*9*C, 2*n^3, 8*n, 8*n.
  works = {k: [t.work for t in f.timings] for k, f in result.fits.items()}
  assert works == {'dense_conv': [2 * 16 * 9 * 16, 2 * 64 * 9 * 64],
                   'depthwise_conv': [2 * 16 * 9 * 4, 2 * 64 * 9 * 8],
                   'matmul': [2 * 8 ** 3, 2 * 16 ** 3], 'copy': [8 * 256, 8 * 1024],
                   'broadcast': [8 * 256, 8 * 1024]}
  assert hw.memory_bandwidth == result.fits['copy'].rate
  assert hw.measurements['kinds']['broadcast']['unit'] == 'GB/s'
  assert 'peak_compute' in result.format_table()


@pytest.mark.parametrize('kwargs, match', [
    (dict(repeats=0), r'repeats must be an integer >= 1\. Received: repeats=0'),
    (dict(warmup=-1), r'warmup must be an integer >= 0\. Received: warmup=-1'),
    (dict(sizes={'dense_conv': [(4, 4, 4)]}), r'at least 2 sizes .* Received: too few for'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    hc.calibrate(device='/CPU:0', **kwargs)
