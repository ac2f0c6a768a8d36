"""`morphnet report`: per-layer FLOPs, weights and latency of a Keras model."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import List, Optional, Sequence

from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import resource_function

REGULARIZERS = {
    'gamma': (flop_regularizer.GammaFlopsRegularizer, 'gamma_threshold'),
    'group_lasso': (flop_regularizer.GroupLassoFlopsRegularizer, 'threshold'),
}


@dataclasses.dataclass
class LayerCost:
  layer: str
  op_type: str
  alive: int
  channels: int
  flops: float
  weights: float
  latency: float


@dataclasses.dataclass
class CostReport:
  model: str
  hardware: str
  rows: List[LayerCost]
  total_flops: float
  total_weights: float
  total_latency: float

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def format_table(self) -> str:
    header = (f'{"layer":<28} {"op":<22} {"width":>11} {"FLOPs":>14} '
              f'{"weights":>12} {self.hardware + " ns":>14}')
    lines = [f'MorphNet cost report for {self.model!r} (per example; latency on '
             f'{self.hardware}, batch 1)', header, '-' * len(header)]
    for r in self.rows:
      width = f'{r.alive}/{r.channels}'
      lines.append(f'{r.layer:<28.28} {r.op_type:<22} {width:>11} {r.flops:>14,.0f} '
                   f'{r.weights:>12,.0f} {r.latency:>14,.1f}')
    lines.append('-' * len(header))
    lines.append(f'{"total":<28} {"":<22} {"":>11} {self.total_flops:>14,.0f} '
                 f'{self.total_weights:>12,.0f} {self.total_latency:>14,.1f}')
    lines.append('FLOPs and weights count convolutions and dense layers (MorphNet\'s '
                 'cost model); latency also counts memory traffic of element-wise ops.')
    return '\n'.join(lines)


def cost_report(model, *, input_shape=None, hardware='V100',
                regularizer: str = 'gamma', threshold: float = 1e-2) -> CostReport:
  """Computes the per-layer cost report of a Keras model.

  Widths are the channels alive under `regularizer` with `threshold` (for a
  freshly initialised model, all of them).
  """
  if regularizer not in REGULARIZERS:
    raise ValueError(f'regularizer must be one of {sorted(REGULARIZERS)}. '
                     f'Received: regularizer={regularizer!r}.')
  latency_fn = resource_function.latency_function_factory(hardware, 1)
  cls, threshold_arg = REGULARIZERS[regularizer]
  reg = cls.from_keras_model(model, input_shape=input_shape, **{threshold_arg: threshold})
  manager = reg.op_regularizer_manager
  traced = reg.traced_model
  size_calc = cost_calculator.CostCalculator(manager, resource_function.model_size_function)
  latency_calc = cost_calculator.CostCalculator(manager, latency_fn)
  rows = []
  position = {op: i for i, op in enumerate(traced.graph.get_operations())}
  flop_ops = [op for op in manager.ops if op.type in cost_calculator.FLOP_OPS]
  for op in sorted(flop_ops, key=position.get):  # graph (topological) order
    channels = int(op.outputs[0].shape[-1])
    op_reg = manager.get_regularizer(op)
    alive = channels if op_reg is None else int(sum(
        bool(a) for a in op_reg.alive_vector.numpy()))
    rows.append(LayerCost(
        layer=traced.layer_name_of(op) or op.name, op_type=op.type, alive=alive,
        channels=channels, flops=float(reg.get_cost([op])),
        weights=float(size_calc.get_cost([op])),
        latency=float(latency_calc.get_cost([op]))))
  return CostReport(
      model=model.name, hardware=latency_fn.hardware.name, rows=rows,
      total_flops=float(reg.get_cost()), total_weights=float(size_calc.get_cost()),
      total_latency=float(latency_calc.get_cost()))


def parse_shape(text: Optional[str]):
  """'1,32,32,3' -> (1, 32, 32, 3); None stays None."""
  if text is None:
    return None
  try:
    return tuple(int(part) for part in text.replace('x', ',').split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'--input-shape must be comma-separated integers, e.g. 1,32,32,3. '
        f'Received: {text!r}.') from None


def _hardware_argument(text: str):
  from morph_net.cli import common  # pylint: disable=g-import-not-at-top
  try:
    return common.check_hardware(text)
  except common.CliError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'report', help='Per-layer FLOPs, weights and latency of a Keras model.',
      description='Prints the MorphNet cost of every convolution and dense layer '
      'of a saved Keras model (.keras), or of the embedded example CNN when no '
      'model is given.')
  parser.add_argument('--model', help='path of a saved Keras model (.keras). '
                      'Default: the embedded example CNN (morph_net.examples).')
  parser.add_argument('--input-shape', type=parse_shape, default=None,
                      help='input shape with batch first, e.g. 1,224,224,3 '
                      '(default: the model\'s own input shape, batch 1)')
  parser.add_argument('--hardware', default='V100', type=_hardware_argument,
                      help='hardware for the latency column: one of '
                      f'{", ".join(sorted(resource_function.PEAK_COMPUTE))}, or the path '
                      'of a hardware JSON file (morphnet calibrate). Default: V100')
  parser.add_argument('--regularizer', default='gamma', choices=sorted(REGULARIZERS),
                      help='which channels count as alive: BN gammas (gamma) or '
                      'kernel norms (group_lasso). Default: gamma')
  parser.add_argument('--threshold', type=float, default=1e-2,
                      help='alive threshold (default: 0.01)')
  parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
  parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  from morph_net.cli import common  # pylint: disable=g-import-not-at-top
  model = common.load_model(args.model)
  report = cost_report(model, input_shape=args.input_shape, hardware=args.hardware,
                       regularizer=args.regularizer, threshold=args.threshold)
  print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:  # pragma: no cover
  from morph_net.cli import main as cli_main  # pylint: disable=g-import-not-at-top
  return cli_main.main(['report'] + list(argv or []))
