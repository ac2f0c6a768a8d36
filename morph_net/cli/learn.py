"""`morphnet learn`: structure learning on a saved Keras model and .npz data.

Trains the model with `loss + strength * MorphNet term` (`MorphNetModel`) and
exports what it learned:

  <export-dir>/learned_structure/alive_<step>  after every epoch (MorphNetCallback)
  <export-dir>/learned_structure.json          final alive counts {layer: width}
  <export-dir>/learned_masks.json              final per-channel alive masks
  <export-dir>/trained_model.keras             the trained model
  <export-dir>/learn_summary.json              costs before/after, strength, logs

`morphnet shrink --model <export-dir>/trained_model.keras --structure
<export-dir>/learned_masks.json --transfer-weights` then extracts the reduced
network with its surviving weights; `morphnet expand` grows the counts back to
a budget.

"""

from __future__ import annotations

import argparse
import os
from typing import Dict

import numpy as np

from morph_net.cli import common
from morph_net.network_regularizers import resource_function


# ----------------------------------------------------------------------------
# Shared helpers.


# ----------------------------------------------------------------------------
# Data and loss.


def load_npz_data(path: str) -> Dict[str, np.ndarray]:
  """Reads `x`, `y` (and optional `x_val`, `y_val`) from an .npz file."""
  if not os.path.isfile(path):
    raise common.CliError(
        f'--data: no such file: {path!r}. Pass an .npz file with arrays x and y, e.g. '
        'numpy.savez("data.npz", x=images, y=labels).')
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: np.asarray(archive[key]) for key in archive.files}
  except Exception as e:  # numpy raises several types for bad archives.
    raise common.CliError(
        f'--data: cannot read {path!r} as an .npz archive: {type(e).__name__}: {e}') from e
  missing = [key for key in ('x', 'y') if key not in arrays]
  if missing:
    raise common.CliError(
        f'--data: {path!r} has no array(s) {missing}. It holds {sorted(arrays)}; save '
        'the inputs as x and the targets as y.')
  for x_key, y_key in (('x', 'y'), ('x_val', 'y_val')):
    if (x_key in arrays) != (y_key in arrays):
      raise common.CliError(f'--data: {path!r} has {x_key if x_key in arrays else y_key} '
                            f'without {y_key if x_key in arrays else x_key}.')
    if x_key in arrays and (len(arrays[x_key]) != len(arrays[y_key])
                            or len(arrays[x_key]) == 0):
      raise common.CliError(
          f'--data: {x_key} and {y_key} in {path!r} must hold the same number (> 0) of '
          f'examples. Received: {len(arrays[x_key])} and {len(arrays[y_key])}.')
  return arrays


def check_inputs_match(model, x: np.ndarray) -> None:
  """Raises CliError if the examples' shape does not fit the model's input."""
  expected = tuple(model.inputs[0].shape[1:]) if getattr(model, 'inputs', None) else None
  if len(getattr(model, 'inputs', []) or []) != 1:
    raise common.CliError(
        f'morphnet learn trains models with one input; model {model.name!r} has '
        f'{len(model.inputs or [])}. Use the Python API (MorphNetModel) instead.')
  got = tuple(x.shape[1:])
  if len(got) != len(expected) or any(e is not None and e != g
                                      for e, g in zip(expected, got)):
    raise common.CliError(
        f'--data: x has examples of shape {got}, but model {model.name!r} takes inputs '
        f'of shape {expected}.')


def _outputs_probabilities(model) -> bool:
  """True when the model's output layer applies a softmax or sigmoid."""
  import keras  # pylint: disable=g-import-not-at-top
  layer = model.layers[-1] if model.layers else None
  if isinstance(layer, keras.layers.Softmax):
    return True
  activation = getattr(layer, 'activation', None)
  name = getattr(activation, '__name__', '')
  return name in ('softmax', 'sigmoid')


def choose_loss(loss: str, model, y: np.ndarray):
  """The loss for `--loss` ('auto': cross-entropy that fits the labels)."""
  import keras  # pylint: disable=g-import-not-at-top
  if loss != 'auto':
    try:
      return keras.losses.get(loss)
    except (ValueError, TypeError) as e:
      raise common.CliError(f'--loss: unknown Keras loss {loss!r} ({e}).') from e
  from_logits = not _outputs_probabilities(model)
  units = model.outputs[0].shape[-1]
  if np.issubdtype(y.dtype, np.integer) and (y.ndim == 1 or y.shape[1:] == (1,)):
    if units is not None and (y.min() < 0 or y.max() >= units):
      raise common.CliError(
          f'--data: labels y must be class indices in [0, {units}) for a model with '
          f'{units} outputs. Received: labels from {y.min()} to {y.max()}.')
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
  if y.ndim == 2 and units == y.shape[1] and np.issubdtype(y.dtype, np.floating):
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
  raise common.CliError(
      f'--loss auto: cannot tell the loss from labels of dtype {y.dtype} and shape '
      f'{y.shape} for a model with output shape {tuple(model.outputs[0].shape)}. Pass '
      '--loss (a Keras loss name, e.g. mse).')


# ----------------------------------------------------------------------------
# The subcommand.


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'learn', help='Learn layer widths: train a saved model with a MorphNet regularizer.',
      description='Trains a saved Keras model (.keras) on data from an .npz file (arrays '
      'x and y; optional x_val and y_val for validation) with loss + strength * '
      'MorphNet regularization term, and writes the learned structure to --export-dir: '
      'learned_structure/alive_<step> every epoch, learned_structure.json (alive '
      'counts), learned_masks.json (per-channel masks), trained_model.keras and '
      'learn_summary.json.')
  parser.add_argument('--model', required=True, help='path of a saved Keras model (.keras)')
  parser.add_argument('--data', required=True,
                      help='.npz file with arrays x (inputs) and y (targets)')
  parser.add_argument('--export-dir', required=True,
                      help='directory for the learned structure files (created)')
  parser.add_argument('--regularizer', default='gamma', choices=common.REGULARIZER_CHOICES,
                      help='BatchNorm gammas (gamma) or kernel group-lasso norms '
                      '(group_lasso) measure channels. Default: gamma')
  parser.add_argument('--cost', default='flops', choices=common.COST_CHOICES,
                      help='the resource to shrink. Default: flops')
  parser.add_argument('--hardware', default=common.DEFAULT_HARDWARE,
                      help='hardware of the latency cost: one of '
                      f'{", ".join(sorted(resource_function.PEAK_COMPUTE))}, or the path '
                      'of a hardware JSON file (morphnet calibrate). Default: V100')
  parser.add_argument('--threshold', type=common.non_negative_float('--threshold'), default=1e-2,
                      help='a channel is alive iff its gamma / norm exceeds this. '
                      'Default: 0.01')
  parser.add_argument('--strength', type=common.non_negative_float('--strength'), default=None,
                      help='regularization strength. Default: recommend_strength '
                      '(1 / initial cost) times --strength-multiplier')
  parser.add_argument('--strength-multiplier', type=common.non_negative_float('--strength-multiplier'),
                      default=1.0, help='multiplies the recommended strength. Default: 1')
  parser.add_argument('--epochs', type=common.positive_int('--epochs'), default=5,
                      help='training epochs. Default: 5')
  parser.add_argument('--batch-size', type=common.positive_int('--batch-size'), default=32,
                      help='batch size. Default: 32')
  parser.add_argument('--learning-rate', type=common.positive_float('--learning-rate'), default=1e-3,
                      help='Adam learning rate. Default: 0.001')
  parser.add_argument('--loss', default='auto',
                      help='a Keras loss name, or auto: (sparse) categorical cross-entropy '
                      'chosen from the labels, from logits unless the model ends in a '
                      'softmax. Default: auto')
  parser.add_argument('--seed', type=lambda text: common._number(text, '--seed', int, 0, strict=False),
                      default=0, help='random seed (weights, data order). Default: 0')
  parser.add_argument('--quiet', action='store_true', help='no progress bars')
  common.one_line_errors(parser)
  parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
  """Runs `learn`; under TF_CONFIG naming 2+ tasks, as one worker of a
  MultiWorkerMirroredStrategy cluster whose chief alone writes --export-dir."""
  from morph_net.keras_integration import distribution  # pylint: disable=g-import-not-at-top
  strategy = distribution.strategy_from_environment()
  with strategy.scope():
    return _run(args, strategy)


def _run(args: argparse.Namespace, strategy) -> int:
  import keras  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import distribution  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import callback as callback_lib  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import layer_structure  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import shrink  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import structure_io  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import training  # pylint: disable=g-import-not-at-top

  # Everything is checked before anything is written.
  if os.path.exists(args.export_dir) and not os.path.isdir(args.export_dir):
    raise common.CliError(f'--export-dir is a file: {args.export_dir!r}. Pass a directory.')
  cls, kwargs = common.regularizer_arguments(args.regularizer, args.cost, args.threshold,
                                      args.hardware)
  model = common.load_model(args.model)
  data = load_npz_data(args.data)
  check_inputs_match(model, data['x'])
  loss = choose_loss(args.loss, model, data['y'])
  keras.utils.set_random_seed(args.seed)
  regularizer = cls.from_keras_model(model, **kwargs)
  if args.strength is None:
    recommendation = training.recommend_strength(regularizer)
    initial_cost = recommendation.initial_cost
    strength = args.strength_multiplier * recommendation.strength
  else:
    initial_cost = float(regularizer.get_cost())
    strength = args.strength
  cost_name = regularizer.cost_name

  trainer = training.MorphNetModel(model, regularizer, regularization_strength=strength)
  metrics = ['accuracy'] if 'crossentropy' in type(loss).__name__.lower() else []
  trainer.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss,
                  metrics=metrics)
  print(f'{type(regularizer).__name__}: initial {cost_name} {initial_cost:,.6g}, '
        f'strength {strength:.4g} ({"given" if args.strength is not None else "recommended"})')
  morphnet_callback = callback_lib.MorphNetCallback(regularizer, export_dir=args.export_dir)
  validation = ((data['x_val'], data['y_val']) if 'x_val' in data else None)
  history = trainer.fit(data['x'], data['y'], batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=validation, callbacks=[morphnet_callback],
                        verbose=0 if args.quiet else 'auto')

  exporter = layer_structure.LayerStructureExporter(regularizer)
  counts = exporter.alive_counts()
  totals = exporter.channel_counts()
  final_cost = float(regularizer.get_cost())
  summary = {
      'regularizer': type(regularizer).__name__, 'cost_name': cost_name,
      'initial_cost': initial_cost, 'final_cost': final_cost,
      'regularization_strength': strength, 'epochs': args.epochs,
      'learned_structure': counts, 'seed_structure': totals,
      'last_logs': {k: float(v[-1]) for k, v in history.history.items() if v},
      'exported_steps': [os.path.basename(p) for p in morphnet_callback.exported_paths],
  }
  # Only the chief writes into --export-dir (others: a temporary directory).
  with distribution.writable_directory(args.export_dir, strategy) as out_dir:
    paths = {
        'learned_structure': structure_io.save_structure(
            os.path.join(out_dir, 'learned_structure.json'), counts),
        'learned_masks': structure_io.save_structure(
            os.path.join(out_dir, 'learned_masks.json'),
            shrink.channel_masks(regularizer)),
        'trained_model': common.save_model_atomically(
            model, os.path.join(out_dir, 'trained_model.keras')),
    }
    paths['summary'] = common.write_json_atomically(
        os.path.join(out_dir, 'learn_summary.json'), summary)
    paths = {k: distribution.chief_path(v, out_dir, args.export_dir) for k, v in paths.items()}
  print(common.format_structure_table(totals, counts, ('seed', 'learned')))
  share = f' ({100.0 * final_cost / initial_cost:.1f}%)' if initial_cost else ''
  print(f'{cost_name}: {initial_cost:,.6g} -> {final_cost:,.6g}{share}')
  for name, path in paths.items():
    print(f'wrote {name}: {path}')
  return 0


