"""`morphnet demo`: MorphNet on handwritten digits, tables and plots (see examples/demo.py)."""

from __future__ import annotations

import argparse
import importlib

from morph_net.cli import common


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'demo', help='Run MorphNet on a small CNN and scikit-learn\'s digits; print and plot.',
      description='Trains a small CNN (residual Add, Concatenate, BatchNorm after every '
      'conv) on scikit-learn\'s bundled 8x8 digits with the FLOP regularizer, exports the '
      'learned widths, shrinks the network, expands it back to the seed\'s FLOPs, and '
      'compares MorphNet networks with uniform width-multiplier networks at matched FLOPs '
      '(all retrained from scratch). Prints every layer\'s seed / learned / expanded '
      'width, the FLOPs and the test accuracies; writes learned_structure.json, '
      'expanded_structure.json, widths.png, accuracy_vs_flops.png and demo_results.json. '
      'About 5 minutes on 2 CPU cores; --quick takes seconds. Needs the demo extra: '
      'pip install \'morph_net[demo]\'.')
  parser.add_argument('--quick', action='store_true',
                      help='a tiny run (width 8, 256 images, 1-2 epochs) to check the set-up')
  parser.add_argument('--dataset', choices=('digits', 'fashion_mnist'), default='digits',
                      help='digits: scikit-learn\'s bundled 8x8 digits (default, nearly '
                      'saturated); fashion_mnist: 28x28 Fashion-MNIST from local files (apt-get '
                      'install -y dataset-fashion-mnist, or --data-dir), width 16, 12,000 '
                      'training images, about 25 minutes on 2 CPU cores')
  parser.add_argument('--data-dir', default=None,
                      help='directory with the Fashion-MNIST IDX .gz files (default: '
                      '$MORPH_NET_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist)')
  parser.add_argument('--output-dir', default='morphnet_demo',
                      help='where the files go (created). Default: ./morphnet_demo')
  common.one_line_errors(parser)
  parser.set_defaults(run=run)


def check_dependencies() -> None:
  """Raises CliError naming the install command if scikit-learn or matplotlib is missing."""
  missing = []
  for module, package in (('sklearn', 'scikit-learn'), ('matplotlib', 'matplotlib')):
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(package)
  if missing:
    raise common.CliError(
        f'the demo needs {" and ".join(missing)}, which {"is" if len(missing) == 1 else "are"} '
        "not installed. Run: pip install 'morph_net[demo]' (from a checkout: pip install "
        "-e '.[demo]').")


def run(args: argparse.Namespace) -> int:
  check_dependencies()
  from morph_net.examples import demo  # pylint: disable=g-import-not-at-top
  demo.check_output_dir(args.output_dir)
  config = demo.config_for(args.dataset, quick=args.quick, data_dir=args.data_dir)
  if config.dataset == 'fashion_mnist':
    from morph_net.examples import fashion_mnist  # pylint: disable=g-import-not-at-top
    if not fashion_mnist.is_available(config.data_dir):
      raise common.CliError(
          f'Fashion-MNIST is not in {fashion_mnist.resolve_dir(config.data_dir)}. '
          f'{fashion_mnist.INSTALL_HINT}')
  result = demo.run_demo(config, output_dir=args.output_dir)
  print()
  print(demo.format_report(result))
  return 0
