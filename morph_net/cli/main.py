"""Entry point of the `morphnet` command: `morphnet <subcommand> --help`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import morph_net


def build_parser() -> argparse.ArgumentParser:
  from morph_net.cli import apply, calibrate, demo, learn, report  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog='morphnet',
      description='MorphNet for TensorFlow 2 / Keras 3: learn layer widths under '
      'a FLOP, model-size or latency budget.')
  parser.add_argument('--version', action='version', version=f'morphnet {morph_net.__version__}')
  subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
  subparsers.required = True
  report.add_parser(subparsers)
  learn.add_parser(subparsers)
  apply.add_parsers(subparsers)  # shrink, expand
  demo.add_parser(subparsers)
  calibrate.add_parser(subparsers)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  parser = build_parser()
  args = parser.parse_args(argv)
  from morph_net.cli import common  # pylint: disable=g-import-not-at-top
  try:
    return args.run(args)
  except (common.CliError, ValueError, TypeError, OSError) as e:
    print(f'morphnet {args.command}: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':  # pragma: no cover
  sys.exit(main())
