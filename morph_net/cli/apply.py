"""`morphnet shrink` and `morphnet expand`: apply a learned structure to a model.

* `shrink`: the model with the structure's widths (`shrink_model`), saved as a
  new .keras file. With `--transfer-weights` and a structure of per-channel
  masks (`learned_masks.json` written by `morphnet learn`), the surviving
  channels keep their trained weights (the constant outputs of removed channels
  folded into the next layer's bias); with alive counts the weights are fresh.
  With `--data` (an .npz of x, y as for `learn`) the transferred model's
  BatchNorm statistics are re-estimated on it (`--recalibrate-steps` batches)
  and it is fine-tuned for `--fine-tune-epochs` epochs before it is saved.
* `expand`: the largest uniform width multiplier ω whose rounded widths
  round(ω · learned) keep the model within a cost target (FLOPs, model size or
  latency on a named hardware), as in MorphNet's Algorithm 1
  (`expand_structure`). Writes the expanded model (fresh weights: retrain it)
  and a JSON file with ω, the widths and the costs.

Both check every argument before writing anything, and write their files
through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Optional, Tuple

from morph_net.cli import common
from morph_net.network_regularizers import resource_function

_TARGET = re.compile(r'^\s*([-+0-9.eE]+)\s*(x?)\s*$')


def _architecture_flops(model) -> Optional[float]:
  """FLOPs of `model`'s architecture (all channels), or None if it cannot be analysed."""
  from morph_net.keras_integration import expand  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import shrink  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  cost_fn = expand.regularizer_cost_fn(flop_regularizer.GroupLassoFlopsRegularizer,
                                       threshold=0.0)
  try:
    return cost_fn(shrink.shrink_model(model, {}))
  except (ValueError, TypeError):
    return None


def _load_structure(path: str):
  from morph_net.keras_integration import structure_io  # pylint: disable=g-import-not-at-top
  try:
    return structure_io.load_structure(path)
  except (OSError, ValueError, TypeError) as e:
    raise common.CliError(f'--structure: {e}') from e


def _widths_of(model, names) -> dict:
  widths = {}
  for name in names:
    try:
      layer = model.get_layer(name)
    except ValueError:
      continue
    width = getattr(layer, 'filters', None) or getattr(layer, 'units', None)
    if width is not None:
      widths[name] = int(width)
  return widths


# ----------------------------------------------------------------------------
# shrink


def add_shrink_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'shrink', help='Build the reduced model that a learned structure describes.',
      description='Rebuilds a saved Keras model with the widths of a structure file '
      '({layer name: alive count} JSON such as learned_structure.json or an '
      'alive_<step> file, or {layer name: [bool, ...]} masks such as '
      'learned_masks.json) and saves it as a new .keras file. Layers set to 0 '
      'vanish where a residual Add or a Concatenate can absorb them.')
  parser.add_argument('--model', required=True, help='path of a saved Keras model (.keras)')
  parser.add_argument('--structure', required=True, help='structure JSON file')
  parser.add_argument('--output', required=True, help='the reduced model (.keras) to write')
  parser.add_argument('--transfer-weights', action='store_true',
                      help='keep the trained weights of the surviving channels (needs a '
                      'structure of per-channel masks, e.g. learned_masks.json from '
                      '`morphnet learn`); otherwise the weights are fresh')
  parser.add_argument('--data', '--recalibrate-data', dest='data', default=None,
                      help='.npz with arrays x, y (as for `learn`): re-estimate the '
                      'BatchNorm statistics of the transferred model on x, and fine-tune '
                      'it on (x, y) with --fine-tune-epochs. Needs --transfer-weights')
  parser.add_argument('--recalibrate-steps', type=common.positive_int('--recalibrate-steps'),
                      default=None, help='batches of --data for the BatchNorm '
                      'statistics. Default: all of x')
  parser.add_argument('--fine-tune-epochs', type=lambda text: common._number(  # pylint: disable=protected-access
      text, '--fine-tune-epochs', int, 0, strict=False), default=0,
                      help='epochs of fine-tuning on --data after recalibration. Default: 0')
  parser.add_argument('--batch-size', type=common.positive_int('--batch-size'), default=32,
                      help='batch size of recalibration and fine-tuning. Default: 32')
  parser.add_argument('--learning-rate', type=common.positive_float('--learning-rate'),
                      default=1e-3, help='Adam learning rate of the fine-tuning. '
                      'Default: 1e-3')
  common.one_line_errors(parser)
  parser.set_defaults(run=run_shrink)


def _check_fine_tune_arguments(args: argparse.Namespace) -> None:
  if args.data is None:
    for flag, value in (('--recalibrate-steps', args.recalibrate_steps),
                        ('--fine-tune-epochs', args.fine_tune_epochs or None)):
      if value is not None:
        raise common.CliError(f'{flag} needs --data (an .npz file with arrays x and y). '
                              f'Received: {flag} {value} without --data.')
  elif not args.transfer_weights:
    raise common.CliError(
        '--data recalibrates and fine-tunes the transferred weights: add '
        '--transfer-weights (with a structure of per-channel masks).')


def _recalibrate_and_fine_tune(model, args: argparse.Namespace) -> None:
  """Re-estimates BN statistics on --data, then fine-tunes; prints the figures."""
  import keras  # pylint: disable=g-import-not-at-top
  from morph_net.cli import learn  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import batch_norm_recalibration  # pylint: disable=g-import-not-at-top
  data = learn.load_npz_data(args.data)
  learn.check_inputs_match(model, data['x'])
  loss = learn.choose_loss('auto', model, data['y'])
  counts = batch_norm_recalibration.recalibrate_batch_norm(
      model, data['x'], args.recalibrate_steps, batch_size=args.batch_size)
  print(f'recalibrated {len(counts)} BatchNormalization layer(s) on '
        f'{"all" if args.recalibrate_steps is None else args.recalibrate_steps} '
        f'batch(es) of {args.data}')
  if args.fine_tune_epochs:
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss,
                  metrics=['accuracy'])
    validation = (data['x_val'], data['y_val']) if 'x_val' in data else None
    history = model.fit(data['x'], data['y'], batch_size=args.batch_size,
                        epochs=args.fine_tune_epochs, validation_data=validation, verbose=0)
    logs = ', '.join(f'{k} {v[-1]:.4g}' for k, v in history.history.items() if v)
    print(f'fine-tuned {args.fine_tune_epochs} epoch(s): {logs}')


def run_shrink(args: argparse.Namespace) -> int:
  from morph_net.keras_integration import shrink  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import structure_io  # pylint: disable=g-import-not-at-top
  common.check_output_model_path(args.output)
  structure = _load_structure(args.structure)
  if args.transfer_weights and not structure_io.is_mask_structure(structure):
    raise common.CliError(
        f'--transfer-weights needs per-channel masks, but --structure {args.structure!r} '
        'holds alive counts. Pass learned_masks.json written by `morphnet learn`, or '
        'leave out --transfer-weights (fresh weights).')
  _check_fine_tune_arguments(args)
  model = common.load_model(args.model)
  # shrink_model names the file in its errors; they reach the user as one line.
  new_model = shrink.shrink_model(model, args.structure,
                                  transfer_weights=args.transfer_weights)
  if args.data is not None:
    _recalibrate_and_fine_tune(new_model, args)
  names = [k for k in structure if not k.endswith(structure_io.DEPTHWISE_SUFFIX)]
  before, after = _widths_of(model, names), _widths_of(new_model, names)
  with common.quiet_tensorflow_warnings():
    flops_before, flops_after = _architecture_flops(model), _architecture_flops(new_model)
  common.save_model_atomically(new_model, args.output)
  print(common.format_structure_table(before, after, ('before', 'after'),
                                     order=[n for n in names if n in before]))
  if flops_before and flops_after is not None:
    print(f'FLOPs: {flops_before:,.0f} -> {flops_after:,.0f} '
          f'({100.0 * flops_after / flops_before:.1f}%)')
  print(f'parameters: {model.count_params():,} -> {new_model.count_params():,}')
  print(f'wrote {args.output} ({"transferred" if args.transfer_weights else "fresh"} '
        'weights)')
  return 0


# ----------------------------------------------------------------------------
# expand


def parse_target(text: Optional[str], argument: str) -> Optional[Tuple[float, bool]]:
  """'1e6' -> (1e6, False); '0.5x' -> (0.5, True) (a multiple of the seed's cost)."""
  if text is None:
    return None
  match = _TARGET.match(text)
  try:
    value = float(match.group(1)) if match else float('nan')
  except ValueError:
    value = float('nan')
  if not (value == value and value not in (float('inf'), float('-inf'))):
    raise common.CliError(
        f'{argument} must be a number (e.g. 2.5e6) or a multiple of the model\'s own cost '
        f'(e.g. 0.5x). Received: {text!r}.')
  if value <= 0:
    raise common.CliError(f'{argument} must be > 0. Received: {text!r}.')
  return value, bool(match.group(2))


def add_expand_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'expand', help='Grow a learned structure uniformly to a cost target.',
      description='Finds the largest width multiplier w such that the model with widths '
      'round(w * learned width) costs at most the target (MorphNet, Algorithm 1), then '
      'writes that model (fresh weights: train it from scratch) and a JSON file with w, '
      'the widths and the seed / learned / expanded costs. The target defaults to the '
      'cost of --model itself (the paper\'s choice).')
  parser.add_argument('--model', required=True,
                      help='the seed model (.keras): topology and original widths')
  parser.add_argument('--structure', required=True,
                      help='learned structure JSON (alive counts or masks)')
  parser.add_argument('--output', required=True, help='the expanded model (.keras) to write')
  target = parser.add_mutually_exclusive_group()
  target.add_argument('--target-flops', metavar='FLOPS',
                      help='FLOP target per example, e.g. 2.5e6, or a multiple of the '
                      'model\'s FLOPs, e.g. 0.5x (implies --cost flops)')
  target.add_argument('--target-cost', metavar='COST',
                      help='target in the unit of --cost (FLOPs, weights, or latency in '
                      'ns), or a multiple of the model\'s cost, e.g. 1x')
  parser.add_argument('--cost', default=None, choices=common.COST_CHOICES,
                      help='the resource of the target. Default: flops')
  parser.add_argument('--hardware', default=common.DEFAULT_HARDWARE,
                      help='hardware of the latency cost: one of '
                      f'{", ".join(sorted(resource_function.PEAK_COMPUTE))}, or the path '
                      'of a hardware JSON file (morphnet calibrate). Default: V100')
  parser.add_argument('--regularizer', default='gamma', choices=common.REGULARIZER_CHOICES,
                      help='the network regularizer family that costs the models (gamma '
                      'needs BatchNormalization layers; group_lasso does not). '
                      'Default: gamma')
  parser.add_argument('--costs-json', default=None,
                      help='where to write the costs. Default: <output without .keras>'
                      '_costs.json')
  parser.add_argument('--input-shape', type=common.parse_input_shape, default=None,
                      help='input shape with batch first, e.g. 1,32,32,3, for a model of '
                      'unknown input size. Default: the model\'s own')
  parser.add_argument('--max-width-multiplier', type=common.positive_float(
      '--max-width-multiplier'), default=64.0, help='search bound for w. Default: 64')
  common.one_line_errors(parser)
  parser.set_defaults(run=run_expand)


def run_expand(args: argparse.Namespace) -> int:
  from morph_net.keras_integration import expand  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import shrink  # pylint: disable=g-import-not-at-top
  common.check_output_model_path(args.output)
  costs_path = args.costs_json or args.output[:-len('.keras')] + '_costs.json'
  if os.path.isdir(costs_path):
    raise common.CliError(f'--costs-json is a directory: {costs_path!r}. Pass a file name.')
  if args.target_flops is not None and args.cost not in (None, 'flops'):
    raise common.CliError(
        f'--target-flops sets a FLOP target, but --cost is {args.cost!r}. Use '
        '--target-cost with --cost, or leave --cost out.')
  cost = args.cost or 'flops'
  target = parse_target(args.target_flops if args.target_flops is not None
                        else args.target_cost,
                        '--target-flops' if args.target_flops is not None else '--target-cost')
  cls, kwargs = common.regularizer_arguments(args.regularizer, cost, 0.0, args.hardware)
  structure = _load_structure(args.structure)
  model = common.load_model(args.model)
  input_shape = common.check_input_shape(model, args.input_shape)
  cost_fn = expand.regularizer_cost_fn(cls, input_shape=input_shape, **kwargs)
  with common.quiet_tensorflow_warnings():
    seed_cost = cost_fn(shrink.shrink_model(model, {}))
    if target is None:
      target_cost = seed_cost
    else:
      target_cost = target[0] * seed_cost if target[1] else target[0]
    result = expand.expand_structure(model, args.structure, target_cost, cost_fn,
                                     max_width_multiplier=args.max_width_multiplier)
    expanded = shrink.shrink_model(model, result.widths)
    cost_name = cls.from_keras_model(expanded, input_shape=input_shape,
                                     **kwargs).cost_name
  record = {'cost': cost, 'cost_name': cost_name, 'regularizer': cls.__name__,
            'hardware': args.hardware if cost == 'latency' else None,
            'learned_structure': expand.learned_counts(structure)}
  record.update(result.as_dict())
  common.save_model_atomically(expanded, args.output)
  common.write_json_atomically(costs_path, record)
  names = list(result.widths)
  print(common.format_structure_table(record['learned_structure'], result.widths,
                                     ('learned', 'expanded'), order=names))
  print(f'width multiplier {result.width_multiplier:.4g}; {cost_name}: seed '
        f'{result.seed_cost:,.6g}, learned {result.shrunk_cost:,.6g}, expanded '
        f'{result.expanded_cost:,.6g} <= target {result.target_cost:,.6g} '
        f'(one step wider: {result.next_cost:,.6g})')
  print(f'wrote {args.output} (fresh weights) and {costs_path}')
  return 0


def add_parsers(subparsers) -> None:
  """Registers `shrink` and `expand`."""
  add_shrink_parser(subparsers)
  add_expand_parser(subparsers)
