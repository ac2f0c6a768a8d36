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
from typing import Dict, Optional

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


def load_npy_data(path: str, labels: Optional[str]) -> Dict[str, np.ndarray]:
  """Reads inputs from an .npy file and targets from the `--labels` .npy file."""
  if labels is None:
    raise common.CliError(
        f'--data {path!r} is an .npy file of inputs: pass the targets with --labels '
        'y.npy (or save both in one .npz as x and y).')
  arrays = {}
  for key, file in (('x', path), ('y', labels)):
    option = '--data' if key == 'x' else '--labels'
    if not os.path.isfile(file):
      raise common.CliError(f'{option}: no such file: {file!r}.')
    try:
      arrays[key] = np.asarray(np.load(file, allow_pickle=False))
    except Exception as e:  # numpy raises several types for bad files.
      raise common.CliError(
          f'{option}: cannot read {file!r} as an .npy array: {type(e).__name__}: {e}') from e
  if len(arrays['x']) != len(arrays['y']) or len(arrays['x']) == 0:
    raise common.CliError(
        f'--data and --labels must hold the same number (> 0) of examples. Received: '
        f'{len(arrays["x"])} in {path!r} and {len(arrays["y"])} in {labels!r}.')
  return arrays


def load_image_folder(path: str, model) -> Dict[str, np.ndarray]:
  """Reads `<path>/<class name>/<image>` with keras.utils.image_dataset_from_directory.

  Images are resized to the model's input size and read with as many channels
  as it takes (1: grayscale, 3: rgb, 4: rgba); pixel values stay in [0, 255];
  labels are class indices in the alphabetical order of the folder names.
  """
  import keras  # pylint: disable=g-import-not-at-top
  inputs = getattr(model, 'inputs', None) or []
  shape = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else ()
  modes = {1: 'grayscale', 3: 'rgb', 4: 'rgba'}
  if len(shape) != 3 or shape[0] is None or shape[1] is None or shape[2] not in modes:
    raise common.CliError(
        f'--data {path!r} is an image folder, which needs a model taking images of a '
        f'fixed size with 1, 3 or 4 channels. Received: model input shape {shape}.')
  try:
    dataset = keras.utils.image_dataset_from_directory(
        path, labels='inferred', label_mode='int', color_mode=modes[shape[2]],
        image_size=shape[:2], batch_size=None, shuffle=False, verbose=False)
  except (ValueError, OSError) as e:
    raise common.CliError(f'--data: cannot read images from folder {path!r}: {e}') from e
  xs, ys = [], []
  for image, label in dataset:
    xs.append(np.asarray(image, np.float32))
    ys.append(int(label))
  if not xs:
    raise common.CliError(f'--data: no images in folder {path!r}.')
  return {'x': np.stack(xs), 'y': np.asarray(ys, np.int32)}


def load_data(args: argparse.Namespace, model) -> Dict[str, np.ndarray]:
  """The arrays of `--data`: an .npz, an .npy (with --labels) or an image folder."""
  if os.path.isdir(args.data):
    data = load_image_folder(args.data, model)
  elif args.data.endswith('.npy'):
    return load_npy_data(args.data, args.labels)
  else:
    data = load_npz_data(args.data)
  if args.labels is not None:
    common.warn_unused('--labels', f'--data {args.data!r} holds the labels')
  return data


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
        f'of shape {expected}. Pass data that fits the model (or --input-shape for a '
        'model of unknown input size).')


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


def parse_learn_target(text: Optional[str]):
  """'0.5x' -> (0.5, True): a fraction of the initial cost; '2e6' -> (2e6, False)."""
  from morph_net.cli import apply  # pylint: disable=g-import-not-at-top
  return apply.parse_target(text, '--target')


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser(
      'learn', help='Learn layer widths: train a saved model with a MorphNet regularizer.',
      description='Trains a saved Keras model (.keras) with loss + strength * MorphNet '
      'regularization term, and writes the learned structure to --export-dir: '
      'learned_structure/alive_<step> every epoch, learned_structure.json (alive '
      'counts), learned_masks.json (per-channel masks), trained_model.keras and '
      'learn_summary.json. --data is an .npz file (arrays x and y; optional x_val and '
      'y_val for validation), an .npy file of inputs with --labels, or a folder of '
      'images in one sub-folder per class. With --target the strength adapts during '
      'training until the cost meets the target, and the exported structure is within '
      'it (completed from the learned gammas / norms if training stops above it).')
  parser.add_argument('--model', required=True, help='path of a saved Keras model (.keras)')
  parser.add_argument('--data', required=True,
                      help='.npz file with arrays x (inputs) and y (targets), an .npy file '
                      'of inputs (with --labels), or an image folder <dir>/<class>/<image>')
  parser.add_argument('--labels', default=None,
                      help='.npy file of targets, for an .npy --data')
  parser.add_argument('--export-dir', required=True,
                      help='directory for the learned structure files (created)')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace the learned_structure/ files of an earlier run in '
                      '--export-dir (otherwise that is an error)')
  parser.add_argument('--input-shape', type=common.parse_input_shape, default=None,
                      help='input shape with batch first, e.g. 1,32,32,3, for a model of '
                      'unknown input size. Default: from the data')
  parser.add_argument('--regularizer', default='gamma', choices=common.REGULARIZER_CHOICES,
                      help='BatchNorm gammas (gamma) or kernel group-lasso norms '
                      '(group_lasso) measure channels. Default: gamma')
  parser.add_argument('--cost', default='flops', choices=common.COST_CHOICES,
                      help='the resource to shrink. Default: flops')
  parser.add_argument('--hardware', default=None,
                      help='hardware of the latency cost (--cost latency): one of '
                      f'{", ".join(sorted(resource_function.PEAK_COMPUTE))}, or the path '
                      'of a hardware JSON file (morphnet calibrate). Default: V100')
  parser.add_argument('--target', default=None, metavar='COST',
                      help='train to this cost: a number (e.g. 2.5e6 FLOPs) or a fraction '
                      'of the initial cost (e.g. 0.5x). The strength adapts (dual ascent)')
  parser.add_argument('--cost-neutral', action='store_true',
                      help='with --target: also expand the learned structure back to the '
                      'initial cost (expanded_structure.json, expanded_model.keras with '
                      'fresh weights), the MorphNet paper\'s loop')
  parser.add_argument('--threshold', type=common.non_negative_float('--threshold'), default=1e-2,
                      help='a channel is alive iff its gamma / norm exceeds this. '
                      'Default: 0.01')
  parser.add_argument('--strength', type=common.non_negative_float('--strength'), default=None,
                      help='regularization strength (the initial one with --target). '
                      'Default: recommend_strength (1 / initial cost) times '
                      '--strength-multiplier')
  parser.add_argument('--strength-multiplier', type=common.non_negative_float('--strength-multiplier'),
                      default=None, help='multiplies the recommended strength. Default: 1')
  parser.add_argument('--epochs', type=common.positive_int('--epochs'), default=5,
                      help='training epochs. Default: 5')
  parser.add_argument('--batch-size', type=common.positive_int('--batch-size'), default=32,
                      help='batch size. Default: 32')
  parser.add_argument('--learning-rate', type=common.positive_float('--learning-rate'), default=1e-3,
                      help='Adam learning rate. Default: 0.001')
  parser.add_argument('--validation-split', type=_fraction, default=None,
                      help='hold out this fraction of the examples (the last ones) for '
                      'validation, e.g. 0.2 (unless the .npz has x_val and y_val)')
  parser.add_argument('--loss', default='auto',
                      help='a Keras loss name, or auto: (sparse) categorical cross-entropy '
                      'chosen from the labels, from logits unless the model ends in a '
                      'softmax. Default: auto')
  parser.add_argument('--seed', type=lambda text: common._number(text, '--seed', int, 0, strict=False),
                      default=0, help='random seed (weights, data order). Default: 0')
  parser.add_argument('--quiet', action='store_true', help='no progress bars')
  common.one_line_errors(parser)
  parser.set_defaults(run=run)


def _fraction(text: str) -> float:
  value = common._number(text, '--validation-split', float, 0.0, strict=True)
  if value >= 1.0:
    raise argparse.ArgumentTypeError(
        f'--validation-split must be in (0, 1). Received: {text!r}')
  return value


def _check_export_dir(args) -> None:
  from morph_net.keras_integration import callback as callback_lib  # pylint: disable=g-import-not-at-top
  if os.path.exists(args.export_dir) and not os.path.isdir(args.export_dir):
    raise common.CliError(f'--export-dir is a file: {args.export_dir!r}. Pass a directory.')
  last = callback_lib.last_exported_step(args.export_dir)
  if last is not None and not args.overwrite:
    raise common.CliError(
        f'--export-dir {args.export_dir!r} holds the learned structure of an earlier run '
        f'(up to alive_{last}); its step numbering would be continued. Pass --overwrite '
        'to replace those files, or another --export-dir.')


def _clear_earlier_run(export_dir: str) -> None:
  directory = os.path.join(export_dir, 'learned_structure')
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith('alive_'):
      os.remove(os.path.join(directory, name))


def _warn_unused_flags(args) -> None:
  if args.hardware is not None and args.cost != 'latency':
    common.warn_unused('--hardware', f'it sets the latency hardware, but --cost is '
                       f'{args.cost}')
  if args.strength is not None and args.strength_multiplier is not None:
    common.warn_unused('--strength-multiplier', 'it multiplies the recommended strength, '
                       'but --strength is given')
  if args.cost_neutral and args.target is None:
    common.warn_unused('--cost-neutral', 'it expands back after shrinking to --target, '
                       'which is not given')


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
  _check_export_dir(args)
  _warn_unused_flags(args)
  target = parse_learn_target(args.target)
  hardware = args.hardware or common.DEFAULT_HARDWARE
  cls, kwargs = common.regularizer_arguments(args.regularizer, args.cost, args.threshold,
                                             hardware)
  model = common.load_model(args.model)
  input_shape = common.check_input_shape(model, args.input_shape)
  data = load_data(args, model)
  check_inputs_match(model, data['x'])
  if input_shape is not None and tuple(data['x'].shape[1:]) != input_shape[1:]:
    raise common.CliError(
        f'--input-shape {",".join(map(str, input_shape))} does not match the data: '
        f'examples of shape {tuple(data["x"].shape[1:])} in {args.data!r}.')
  if input_shape is None:  # taken from the data (batch 1)
    input_shape = (1,) + tuple(data['x'].shape[1:])
  loss = choose_loss(args.loss, model, data['y'])
  validation = ((data['x_val'], data['y_val']) if 'x_val' in data else None)
  if validation is not None and args.validation_split is not None:
    common.warn_unused('--validation-split', f'{args.data!r} holds x_val and y_val')
  keras.utils.set_random_seed(args.seed)
  regularizer = cls.from_keras_model(model, input_shape=input_shape, **kwargs)
  multiplier = 1.0 if args.strength_multiplier is None else args.strength_multiplier
  if args.strength is None:
    recommendation = training.recommend_strength(regularizer)
    initial_cost = recommendation.initial_cost
    strength = multiplier * recommendation.strength
    origin = ('recommended, 1 / initial cost' if multiplier == 1.0 else
              f'recommended 1 / initial cost x {multiplier:g} (--strength-multiplier)')
  else:
    initial_cost = float(regularizer.get_cost())
    strength = args.strength
    origin = 'given'
  cost_name = regularizer.cost_name
  target_cost = None
  if target is not None:
    target_cost = target[0] * initial_cost if target[1] else target[0]

  trainer = training.MorphNetModel(model, regularizer, regularization_strength=strength,
                                   target_cost=target_cost)
  metrics = ['accuracy'] if 'crossentropy' in type(loss).__name__.lower() else []
  trainer.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss,
                  metrics=metrics)
  print(f'{type(regularizer).__name__}: initial {cost_name} {initial_cost:,.6g}, '
        f'strength {strength:.4g} ({origin})'
        + (f', target {target_cost:,.6g} (the strength adapts)' if target_cost else ''))
  if args.overwrite and distribution.is_chief(strategy):
    _clear_earlier_run(args.export_dir)
  morphnet_callback = callback_lib.MorphNetCallback(regularizer, export_dir=args.export_dir)
  fit_kwargs = {}
  if validation is None and args.validation_split is not None:
    fit_kwargs['validation_split'] = args.validation_split
  history = trainer.fit(data['x'], data['y'], batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=validation, callbacks=[morphnet_callback],
                        verbose=0 if args.quiet else 'auto', **fit_kwargs)

  exporter = layer_structure.LayerStructureExporter(regularizer)
  completion = morphnet_callback.completion
  counts = exporter.alive_counts() if completion is None else dict(completion.counts)
  masks = shrink.channel_masks(regularizer) if completion is None else completion.masks
  totals = exporter.channel_counts()
  trained_cost = float(regularizer.get_cost())
  final_cost = trained_cost if completion is None else completion.cost
  last_logs = {k: float(v[-1]) for k, v in history.history.items() if v}
  summary = {
      'regularizer': type(regularizer).__name__, 'cost_name': cost_name,
      'initial_cost': initial_cost, 'final_cost': final_cost,
      'trained_cost': trained_cost,
      'regularization_strength': strength,
      'strength_origin': origin, 'epochs': args.epochs,
      'input_shape': list(input_shape),
      'learned_structure': counts, 'seed_structure': totals,
      'last_logs': last_logs,
      'exported_steps': [os.path.basename(p) for p in morphnet_callback.exported_paths],
  }
  if completion is not None:
    summary['budget'] = completion.as_dict()
    summary['final_strength'] = trainer.regularization_strength
  # Only the chief writes into --export-dir (others: a temporary directory).
  with distribution.writable_directory(args.export_dir, strategy) as out_dir:
    paths = {
        'learned_structure': structure_io.save_structure(
            os.path.join(out_dir, 'learned_structure.json'), counts),
        'learned_masks': structure_io.save_structure(
            os.path.join(out_dir, 'learned_masks.json'), masks),
        'trained_model': common.save_model_atomically(
            model, os.path.join(out_dir, 'trained_model.keras')),
    }
    if args.cost_neutral and target_cost is not None:
      paths.update(_expand_back(model, cls, kwargs, input_shape, counts, initial_cost,
                                out_dir, summary))
    paths['summary'] = common.write_json_atomically(
        os.path.join(out_dir, 'learn_summary.json'), summary)
    paths = {k: distribution.chief_path(v, out_dir, args.export_dir) for k, v in paths.items()}
  order = common.model_order(model, set(totals) | set(counts))
  print(common.format_structure_table(totals, counts, ('seed', 'learned'), order=order))
  share = f' ({100.0 * final_cost / initial_cost:.1f}%)' if initial_cost else ''
  print(f'{cost_name}: {initial_cost:,.6g} -> {final_cost:,.6g}{share}')
  if completion is not None:
    print(completion.describe(cost_name))
  if 'val_accuracy' in last_logs:
    print(f'final validation accuracy: {last_logs["val_accuracy"]:.4f}')
  elif 'val_loss' in last_logs:
    print(f'final validation loss: {last_logs["val_loss"]:.4g}')
  for name, path in paths.items():
    print(f'wrote {name}: {path}')
  return 0


def _expand_back(model, cls, kwargs, input_shape, counts, initial_cost, export_dir,
                 summary) -> Dict[str, str]:
  """--cost-neutral: the learned structure expanded back to the initial cost."""
  from morph_net.keras_integration import expand  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import shrink  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import structure_io  # pylint: disable=g-import-not-at-top
  cost_kwargs = {key: (0.0 if key in ('gamma_threshold', 'threshold') else value)
                 for key, value in kwargs.items()}
  cost_fn = expand.regularizer_cost_fn(cls, input_shape=input_shape, **cost_kwargs)
  with common.quiet_tensorflow_warnings():
    result = expand.expand_structure(model, counts, initial_cost, cost_fn)
    expanded = shrink.shrink_model(model, result.widths)
  summary['expansion'] = result.as_dict()
  print(f'cost-neutral: width multiplier {result.width_multiplier:.4g}, expanded cost '
        f'{result.expanded_cost:,.6g} <= initial {initial_cost:,.6g}')
  return {
      'expanded_structure': structure_io.save_structure(
          os.path.join(export_dir, 'expanded_structure.json'), result.widths),
      'expanded_model': common.save_model_atomically(
          expanded, os.path.join(export_dir, 'expanded_model.keras')),
  }
