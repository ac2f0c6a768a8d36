"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import model_size_regularizer
from morph_net.network_regularizers import hardware as hardware_lib


class CliError(Exception):
  """An error the CLI reports as one line, exit status 2."""


def load_model(path: Optional[str]):
  """Loads a saved Keras model, or builds the embedded example CNN for None."""
  import keras  # pylint: disable=g-import-not-at-top
  if path is None:
    from morph_net.examples import models  # pylint: disable=g-import-not-at-top
    return models.small_cnn()
  if not os.path.exists(path):
    raise CliError(f'--model: no such file: {path!r}. Pass a model saved with '
                   'model.save("name.keras").')
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for bad files.
    raise CliError(f'--model: cannot load a Keras model from {path!r}: '
                   f'{type(e).__name__}: {e}') from e


# (regularizer family, cost) -> (class, name of its alive-threshold argument).
REGULARIZER_CLASSES = {
    ('gamma', 'flops'): (flop_regularizer.GammaFlopsRegularizer, 'gamma_threshold'),
    ('group_lasso', 'flops'): (flop_regularizer.GroupLassoFlopsRegularizer, 'threshold'),
    ('gamma', 'model_size'): (model_size_regularizer.GammaModelSizeRegularizer,
                              'gamma_threshold'),
    ('group_lasso', 'model_size'): (model_size_regularizer.GroupLassoModelSizeRegularizer,
                                    'threshold'),
    ('gamma', 'latency'): (latency_regularizer.GammaLatencyRegularizer, 'gamma_threshold'),
    ('group_lasso', 'latency'): (latency_regularizer.GroupLassoLatencyRegularizer,
                                 'threshold'),
}


REGULARIZER_CHOICES = ('gamma', 'group_lasso')


COST_CHOICES = ('flops', 'model_size', 'latency')


DEFAULT_HARDWARE = 'V100'


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Makes argparse report a bad argument of `parser` on one line, exit status 2."""

  def error(message: str):
    print(f'{parser.prog}: error: {message}. See {parser.prog} --help.', file=sys.stderr)
    sys.exit(2)

  parser.error = error
  return parser


def _number(text: str, name: str, kind: type, minimum: float, strict: bool):
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'{name} must be {"an integer" if kind is int else "a number"}. '
        f'Received: {text!r}') from None
  if not math.isfinite(value) or value < minimum or (strict and value == minimum):
    relation = '>' if strict else '>='
    raise argparse.ArgumentTypeError(
        f'{name} must be {relation} {minimum:g}. Received: {text!r}')
  return value


def positive_int(name: str):
  """An argparse type: an integer >= 1."""
  return lambda text: _number(text, name, int, 1, strict=False)


def non_negative_float(name: str):
  """An argparse type: a finite number >= 0."""
  return lambda text: _number(text, name, float, 0.0, strict=False)


def positive_float(name: str):
  """An argparse type: a finite number > 0."""
  return lambda text: _number(text, name, float, 0.0, strict=True)


@contextlib.contextmanager
def quiet_tensorflow_warnings() -> Iterator[None]:
  """Hides TensorFlow's Python warnings (e.g. tf.function retracing notes).

  Costing many candidate models (expand) traces one function per model, which
  TensorFlow reports as excessive retracing; it is expected here.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  logger = tf.get_logger()
  previous = logger.level
  logger.setLevel('ERROR')
  try:
    yield
  finally:
    logger.setLevel(previous)


def check_hardware(hardware: str):
  """The `Hardware` named by --hardware (a name or a JSON file), else raises CliError."""
  try:
    return hardware_lib.resolve(hardware)
  except (TypeError, ValueError) as e:
    detail = f' ({e})' if str(hardware).endswith('.json') else ''
    raise CliError(
        f'--hardware must be one of {hardware_lib.registered_names()} or the path '
        'of a hardware JSON file (`morphnet calibrate` writes one). '
        f'Received: {hardware!r}{detail}.') from e


def regularizer_arguments(regularizer: str, cost: str, threshold: float,
                          hardware: str) -> Tuple[type, Dict[str, Any]]:
  """The network regularizer class and its keyword arguments for a choice."""
  if (regularizer, cost) not in REGULARIZER_CLASSES:
    raise CliError(
        f'--regularizer must be one of {list(REGULARIZER_CHOICES)} and --cost one of '
        f'{list(COST_CHOICES)}. Received: {regularizer!r}, {cost!r}.')
  cls, threshold_argument = REGULARIZER_CLASSES[(regularizer, cost)]
  kwargs: Dict[str, Any] = {threshold_argument: threshold}
  if cost == 'latency':
    kwargs['hardware'] = check_hardware(hardware)
  return cls, kwargs


def check_output_model_path(path: str, argument: str = '--output') -> str:
  """Checks that `path` can receive a .keras model; returns it."""
  if not path.endswith('.keras'):
    raise CliError(
        f'{argument} must be a file name ending in .keras (the Keras 3 format). '
        f'Received: {path!r}.')
  if os.path.isdir(path):
    raise CliError(f'{argument} is a directory: {path!r}. Pass a file name.')
  return path


def save_model_atomically(model, path: str) -> str:
  """Saves `model` to `path` (.keras) through a temporary file and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, f'.{os.path.basename(path)}.tmp-{os.getpid()}.keras')
  try:
    model.save(temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return path


def write_json_atomically(path: str, content: Any) -> str:
  """Writes `content` as indented JSON through a temporary file and a rename."""
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  structure_exporter.write_file_atomically(
      path, json.dumps(content, indent=2, sort_keys=True, default=_json_default))
  return path


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def format_structure_table(before: Dict[str, int], after: Dict[str, int],
                           headers: Tuple[str, str], order: Optional[list] = None) -> str:
  """A two-column table of widths per layer."""
  names = order or sorted(set(before) | set(after))
  width = max([len('layer')] + [len(n) for n in names])
  lines = [f'{"layer":<{width}} {headers[0]:>10} {headers[1]:>10}']
  for name in names:
    lines.append(f'{name:<{width}} {before.get(name, "-")!s:>10} {after.get(name, "-")!s:>10}')
  return '\n'.join(lines)


def parse_input_shape(text: Optional[str]) -> Optional[Tuple[int, ...]]:
  """'1,32,32,3' -> (1, 32, 32, 3) (batch first, every size >= 1); None stays None."""
  if text is None:
    return None
  try:
    shape = tuple(int(part) for part in text.replace('x', ',').split(','))
  except ValueError:
    shape = ()
  if len(shape) < 2 or any(size < 1 for size in shape):
    raise argparse.ArgumentTypeError(
        '--input-shape must be comma-separated integers >= 1, batch first, e.g. '
        f'1,32,32,3. Received: {text!r}')
  return shape


def check_input_shape(model, shape: Optional[Tuple[int, ...]],
                      source: str = '--input-shape') -> Optional[Tuple[int, ...]]:
  """Raises CliError if `shape` (batch first) does not fit the model's input."""
  if shape is None:
    return None
  inputs = getattr(model, 'inputs', None) or []
  if len(inputs) != 1:
    raise CliError(f'{source}: model {model.name!r} has {len(inputs)} inputs; one input '
                   'shape cannot describe them.')
  expected = tuple(inputs[0].shape[1:])
  got = tuple(shape[1:])
  if len(got) != len(expected) or any(e is not None and e != g
                                      for e, g in zip(expected, got)):
    raise CliError(
        f'{source} gives examples of shape {got}, but model {model.name!r} takes inputs '
        f'of shape {expected} (None: any size). Received: {source}='
        f'{",".join(map(str, shape))}.')
  return tuple(shape)


def warn_unused(flag: str, reason: str) -> None:
  """Prints a one-line warning naming a flag that does not apply."""
  print(f'morphnet: warning: {flag} is ignored: {reason}.', file=sys.stderr)


def model_order(model, names) -> list:
  """`names` (structure keys) in the order of the model's layers."""
  position = {layer.name: index for index, layer in enumerate(model.layers)}

  def key(name):
    base = name.split('/')[0]
    return (position.get(base, len(position)), name.endswith('/depthwise') is False, name)

  return sorted(names, key=key)
