"""The demo's PNG plots: per-layer widths, and accuracy against FLOPs.

Drawn with matplotlib's Agg canvas (no display, no global backend switch), so
they work on a headless machine and inside tests.

* `plot_widths`: one group of bars per layer, in network order, one bar per
  series (e.g. seed widths, FLOP-regularized widths, expanded widths), in the
  style of Figure 1 of the MorphNet paper (Gordon et al. 2018).
* `plot_accuracy_vs_flops`: test accuracy against FLOPs (log scale) for
  several families of networks (e.g. MorphNet vs uniform width multiplier),
  each a line with markers, optional error bars and point labels.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

INSTALL_HINT = ("The demo's plots need matplotlib: pip install 'morph_net[demo]' "
                "(or pip install matplotlib).")

_COLORS = ('#9e9e9e', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd')


def require_matplotlib() -> None:
  """Raises ImportError (saying how to install it) when matplotlib is missing."""
  try:
    import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f'{INSTALL_HINT} ({e})') from e


def _figure(width: float, height: float):
  require_matplotlib()
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(width, height), dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, f'.{os.path.basename(path)}.tmp-{os.getpid()}.png')
  fig.savefig(temporary, format='png')
  os.replace(temporary, path)
  return path


def plot_widths(path: str, layers: Sequence[str], series: Mapping[str, Sequence[int]],
                title: str = 'Layer widths') -> str:
  """Writes a grouped bar chart of per-layer widths as a PNG.

  Args:
    path: the PNG file to write (replaced atomically).
    layers: layer names, in network order (the x axis).
    series: `{legend label: widths}`, one width per layer; drawn in order.
    title: the figure title.

  Returns:
    `path`.

  Raises:
    ValueError: a series does not have one width per layer, or nothing to plot.
  """
  if not layers or not series:
    raise ValueError('plot_widths needs at least one layer and one series. Received: '
                     f'{len(layers)} layers, {len(series)} series.')
  for label, widths in series.items():
    if len(widths) != len(layers):
      raise ValueError(
          f'Series {label!r} has {len(widths)} widths for {len(layers)} layers; give '
          'one width per layer.')
  fig = _figure(max(6.0, 0.9 * len(layers) + 2.0), 4.5)
  ax = fig.add_subplot(1, 1, 1)
  count = len(series)
  bar = 0.8 / count
  positions = range(len(layers))
  for index, (label, widths) in enumerate(series.items()):
    offsets = [p + (index - (count - 1) / 2) * bar for p in positions]
    ax.bar(offsets, list(widths), width=bar, label=label,
           color=_COLORS[index % len(_COLORS)], edgecolor='black', linewidth=0.4)
  ax.set_xticks(list(positions))
  ax.set_xticklabels(list(layers), rotation=35, ha='right', fontsize=8)
  ax.set_ylabel('output channels')
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class Curve:
  """One family of networks in `plot_accuracy_vs_flops`.

  Attributes:
    label: the legend label.
    flops: FLOPs of each network (x).
    accuracy: test accuracy of each network (y), in [0, 1].
    spread: optional error bar half-lengths (e.g. standard deviations).
    point_labels: optional text next to each point (e.g. 'ω=0.5').
  """
  label: str
  flops: Sequence[float]
  accuracy: Sequence[float]
  spread: Optional[Sequence[float]] = None
  point_labels: Optional[Sequence[str]] = None


def plot_accuracy_vs_flops(path: str, curves: Sequence[Curve],
                           title: str = 'Test accuracy vs FLOPs') -> str:
  """Writes accuracy (percent) against FLOPs (log scale) as a PNG.

  Args:
    path: the PNG file to write (replaced atomically).
    curves: the families of networks to compare.
    title: the figure title.

  Returns:
    `path`.

  Raises:
    ValueError: no curve, or a curve whose lists differ in length or which has a
      FLOP count <= 0.
  """
  if not curves:
    raise ValueError('plot_accuracy_vs_flops needs at least one curve.')
  for curve in curves:
    lengths = {len(curve.flops), len(curve.accuracy)}
    if curve.spread is not None:
      lengths.add(len(curve.spread))
    if curve.point_labels is not None:
      lengths.add(len(curve.point_labels))
    if len(lengths) != 1 or not curve.flops:
      raise ValueError(
          f'Curve {curve.label!r} needs as many FLOP counts as accuracies (and spreads / '
          f'labels). Received lengths {sorted(lengths)}.')
    if min(curve.flops) <= 0:
      raise ValueError(f'Curve {curve.label!r} has a FLOP count <= 0: {list(curve.flops)}.')
  fig = _figure(6.5, 4.5)
  ax = fig.add_subplot(1, 1, 1)
  markers = ('o', 's', '^', 'D', 'v')
  for index, curve in enumerate(curves):
    order = sorted(range(len(curve.flops)), key=lambda i: curve.flops[i])
    xs = [curve.flops[i] for i in order]
    ys = [100.0 * curve.accuracy[i] for i in order]
    errors = None if curve.spread is None else [100.0 * curve.spread[i] for i in order]
    ax.errorbar(xs, ys, yerr=errors, label=curve.label, marker=markers[index % len(markers)],
                color=_COLORS[(index + 1) % len(_COLORS)], capsize=3, linewidth=1.2)
    if curve.point_labels is not None:
      for i in order:
        ax.annotate(curve.point_labels[i], (curve.flops[i], 100.0 * curve.accuracy[i]),
                    textcoords='offset points', xytext=(4, -10 if index else 6), fontsize=7)
  ax.set_xscale('log')
  ax.margins(x=0.1)
  ax.set_xlabel('FLOPs per image (log scale)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(title)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  return _save(fig, path)
