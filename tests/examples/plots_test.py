"""The demo's PNG plots."""

import pytest

from morph_net.examples import plots

pytest.importorskip('matplotlib')

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == PNG_SIGNATURE


def test_widths_plot_is_a_png(tmp_path):
  path = str(tmp_path / 'sub' / 'widths.png')
  assert plots.plot_widths(path, ['a', 'b'], {'seed': [8, 16], 'learned': [3, 16]}) == path
  assert _is_png(path)
  assert [p.name for p in (tmp_path / 'sub').iterdir()] == ['widths.png']  # no temp file


def test_accuracy_plot_is_a_png(tmp_path):
  path = str(tmp_path / 'accuracy.png')
  curves = [plots.Curve('uniform', [1e3, 4e3], [0.9, 0.95], point_labels=['ω=0.5', 'ω=1']),
            plots.Curve('MorphNet', [1e3, 4e3], [0.92, 0.96], spread=[0.01, 0.005])]
  plots.plot_accuracy_vs_flops(path, curves)
  assert _is_png(path)


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="Series 'seed' has 1 widths for 2 layers"):
    plots.plot_widths(str(tmp_path / 'w.png'), ['a', 'b'], {'seed': [1]})
  with pytest.raises(ValueError, match='at least one layer and one series'):
    plots.plot_widths(str(tmp_path / 'w.png'), [], {})
  with pytest.raises(ValueError, match='as many FLOP counts as accuracies'):
    plots.plot_accuracy_vs_flops(str(tmp_path / 'a.png'), [plots.Curve('x', [1.0], [])])
  with pytest.raises(ValueError, match='FLOP count <= 0'):
    plots.plot_accuracy_vs_flops(str(tmp_path / 'a.png'), [plots.Curve('x', [0.0], [0.5])])
  with pytest.raises(ValueError, match='at least one curve'):
    plots.plot_accuracy_vs_flops(str(tmp_path / 'a.png'), [])
  assert list(tmp_path.iterdir()) == []
