"""Tests for `morphnet calibrate` and `--hardware PATH.json` in the other subcommands."""

from __future__ import annotations

import json
import os

import pytest

from morph_net.cli import main as cli_main
from morph_net.network_regularizers import hardware


def test_quick_calibration_writes_a_valid_file(tmp_path, capsys):
  path = tmp_path / 'out' / 'this_machine.json'
  assert cli_main.main(['calibrate', '--quick', '--repeats', '2', '--device', 'cpu',
                        '--name', 'here', '--output', str(path)]) == 0
  out = capsys.readouterr().out
  for kind in ('dense_conv', 'depthwise_conv', 'matmul', 'copy', 'broadcast'):
    assert f'-> {kind}:' in out
  assert 'peak_compute' in out and f'wrote {path}' in out
  assert os.listdir(path.parent) == ['this_machine.json']  # written atomically
  hw = hardware.load(str(path))
  assert hw.name == 'here'
  content = json.loads(path.read_text())
  kinds = content['measurements']['kinds']
  # peak is the fastest compute kind; efficiencies are rates / peak.
  rates = {k: kinds[k]['rate'] for k in ('dense_conv', 'depthwise_conv', 'matmul')}
  assert hw.peak_compute == pytest.approx(max(rates.values()))
  assert hw.efficiency('Conv2D') == pytest.approx(rates['dense_conv'] / hw.peak_compute)
  assert hw.efficiency('DepthwiseConv2dNative') == pytest.approx(
      rates['depthwise_conv'] / hw.peak_compute)
  assert hw.efficiency('MatMul') == pytest.approx(rates['matmul'] / hw.peak_compute)
  assert hw.memory_bandwidth == pytest.approx(kinds['copy']['rate'])
  assert max(hw.efficiency(t) for t in ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')) == 1.0
  # Each size: work / median time, as printed (2 rounds each).
  for kind in kinds.values():
    assert len(kind['sizes']) == 3
    for size in kind['sizes']:
      assert size['rate'] == pytest.approx(size['work'] / size['median_s'] / 1e9)

  # The file is usable as --hardware by report.
  assert cli_main.main(['report', '--hardware', str(path), '--json']) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['hardware'] == 'here' and report['total_latency'] > 0


def test_bad_arguments(tmp_path, capsys):
  assert cli_main.main(['calibrate', '--quick', '--output', str(tmp_path / 'x.txt')]) == 2
  err = capsys.readouterr().err
  assert '--output must be a file name ending in .json' in err and "x.txt'" in err
  with pytest.raises(SystemExit):
    cli_main.main(['calibrate', '--repeats', '0'])
  assert '--repeats must be >= 1' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli_main.main(['report', '--hardware', str(tmp_path / 'missing.json')])
  err = capsys.readouterr().err
  assert '--hardware must be one of' in err and 'missing.json' in err


def test_learn_and_apply_take_a_hardware_file(tmp_path):
  from morph_net.cli import common  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'filed.json')
  hardware.save(hardware.Hardware('filed', 10, 1), path)
  cls, kwargs = common.regularizer_arguments('gamma', 'latency', 0.1, path)
  assert cls.__name__ == 'GammaLatencyRegularizer'
  assert kwargs == {'gamma_threshold': 0.1, 'hardware': hardware.Hardware('filed', 10, 1)}
  bad = tmp_path / 'bad.json'
  bad.write_text('{"name": "x", "peak_compute": 0, "memory_bandwidth": 1}')
  with pytest.raises(common.CliError, match=r'--hardware must be one of .*Received: .*bad\.json'
                     r'.*peak_compute must be a finite number > 0'):
    common.regularizer_arguments('gamma', 'latency', 0.1, str(bad))
