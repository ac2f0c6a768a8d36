"""`morphnet calibrate`: measure this machine's roofline figures into a JSON file.

The file describes a hardware for the latency regularizers (peak compute,
memory bandwidth, per-op-type efficiencies; see docs/hardware.md) and is used
as `--hardware PATH.json` by the other subcommands, or in Python as
`hardware='PATH.json'` / `hardware=hardware.load('PATH.json')`.
"""

from __future__ import annotations

import argparse

from morph_net.cli import common


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'calibrate', help='Measure this machine\'s compute and memory figures for the '
      'latency cost; write a hardware JSON file.',
      description='Times TensorFlow microbenchmarks (dense and depthwise 3x3 convolutions, '
      'matrix products, element-wise copies) at several sizes, after warm-up, in '
      'interleaved rounds, and keeps medians. Writes the effective peak compute '
      '(GFLOP/s), per-op-type efficiencies and memory bandwidth (GB/s) as a hardware '
      'JSON file for --hardware, and prints what it measured. Under a minute on 2 CPU '
      'cores; --quick takes seconds. Runs on the GPU when TensorFlow sees one.')
  parser.add_argument('--output', default='hardware.json',
                      help='the JSON file to write (atomically). Default: ./hardware.json')
  parser.add_argument('--name', default=None,
                      help='the hardware name (reported as "<name> Latency"). '
                      'Default: calibrated_<machine>_<cpu|gpu>')
  parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'gpu'),
                      help='where to measure. Default: auto (the GPU if present)')
  parser.add_argument('--quick', action='store_true',
                      help='few small sizes and rounds: a smoke run of a few seconds')
  parser.add_argument('--repeats', type=common.positive_int('--repeats'), default=None,
                      help='timed rounds per kernel (median kept). Default: 21 (5 with '
                      '--quick)')
  parser.add_argument('--threads', type=common.positive_int('--threads'), default=None,
                      help='TensorFlow intra-op threads. Default: TensorFlow\'s choice')
  common.one_line_errors(parser)
  parser.set_defaults(run=run)


def _device(choice: str) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import hardware_calibration  # pylint: disable=g-import-not-at-top
  if choice == 'auto':
    return hardware_calibration.default_device()
  if choice == 'gpu' and not tf.config.list_physical_devices('GPU'):
    raise common.CliError('--device gpu: TensorFlow sees no GPU on this machine. '
                          'Received: --device gpu. Use --device cpu or auto.')
  return '/GPU:0' if choice == 'gpu' else '/CPU:0'


def run(args: argparse.Namespace) -> int:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import hardware  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import hardware_calibration  # pylint: disable=g-import-not-at-top
  if not args.output.endswith('.json'):
    raise common.CliError('--output must be a file name ending in .json (so that '
                          f'--hardware recognises it). Received: {args.output!r}.')
  if args.threads is not None:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  result = hardware_calibration.calibrate(
      name=args.name, device=_device(args.device), quick=args.quick,
      repeats=args.repeats, log=print)
  print(result.format_table())
  hardware.save(result.hardware, args.output)
  print(f'wrote {args.output} ({result.hardware.name!r}); use it with '
        f'--hardware {args.output}, or hardware={args.output!r} in Python.')
  return 0
