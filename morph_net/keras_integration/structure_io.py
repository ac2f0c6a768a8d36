"""Reads, checks and writes learned structures (`{layer name: width}` JSON).

A structure maps Keras layer names to what MorphNet learned for them:

* an alive count (an `int` >= 0): the width (filters / units) the layer gets,
  e.g. the `learned_structure/alive_<step>` files written by
  `MorphNetCallback` / `LayerStructureExporter`;
* or a per-channel alive mask (a 1-D sequence of booleans, one per channel of
  the layer in the original model): which channels survive. Masks are what
  weight transfer needs (`shrink_model(..., transfer_weights=True)`).

One structure holds either counts or masks, not both. Keys ending in
`/depthwise` name the depthwise part of a `DepthwiseConv2D` /
`SeparableConv2D` layer (see `shrink`). Checks against a model (unknown layer
names, layers whose width cannot be set) live in `shrink`, which knows the
layer kinds; this module checks the file and the value types.

Errors name the file (or say "structure dict") and the problem: a missing or
unreadable file is an `OSError`, a corrupted / truncated file or a bad value in
a file a `ValueError`; a bad value in a Python dict a `TypeError` (wrong type)
or `ValueError` (negative count).
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Dict, Mapping, Union

import numpy as np

from morph_net.tools import structure_exporter

DEPTHWISE_SUFFIX = '/depthwise'

# A count, or a boolean mask over the layer's original channels.
Width = Union[int, np.ndarray]
Structure = Dict[str, Width]
StructureSource = Union[str, 'os.PathLike[str]', Mapping[str, Any]]


def describe_source(source: Any) -> str:
  """Words naming a structure source in error messages."""
  if isinstance(source, (str, os.PathLike)):
    return f'structure file {os.fspath(source)!r}'
  return 'structure dict'


def is_mask_structure(structure: Mapping[str, Width]) -> bool:
  """True when the (validated) structure holds masks rather than counts."""
  return any(isinstance(v, np.ndarray) for v in structure.values())


def load_structure(source: StructureSource) -> Structure:
  """Reads a structure from a JSON file or checks a dict.

  Args:
    source: a path to a JSON file holding one object `{layer name: value}`, or
      a mapping. Values are alive counts (int >= 0; a float with an integral
      value such as `12.0` is accepted) or per-channel alive masks (lists /
      1-D arrays of booleans or 0/1).

  Returns:
    A new dict: layer name -> `int` count, or layer name -> 1-D `bool`
    `np.ndarray` mask.

  Raises:
    OSError: the file cannot be read (the message names it).
    ValueError: the file is empty, is not valid JSON (e.g. truncated), does not
      hold a JSON object, or holds a bad value; a count is negative; counts
      and masks are mixed.
    TypeError: `source` is neither a path nor a mapping, or a dict holds a key
      or value of the wrong type.
  """
  if isinstance(source, (str, os.PathLike)):
    origin = describe_source(source)
    raw = _read_json_file(os.fspath(source), origin)
    # Bad content of a file is a bad value (of the file), hence ValueError.
    return _check_entries(raw, origin, type_error=ValueError)
  if isinstance(source, Mapping):
    return _check_entries(source, describe_source(source), type_error=TypeError)
  raise TypeError(
      'A structure must be a path to a JSON file or a dict {layer name: width}. '
      f'Received: structure of type {type(source).__name__}.')


def save_structure(path: Union[str, 'os.PathLike[str]'], structure: Mapping[str, Any]) -> str:
  """Writes `structure` as JSON (sorted keys, indent 2) atomically.

  Masks are written as lists of booleans. The parent directory is created.

  Args:
    path: the file to write.
    structure: counts or masks (checked with `load_structure` first).

  Returns:
    The path written, as a string.
  """
  checked = load_structure(structure)
  serializable = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in checked.items()}
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  structure_exporter.write_file_atomically(
      path, structure_exporter.format_structure(serializable))
  return path


def _read_json_file(path: str, origin: str) -> Any:
  try:
    with open(path, 'r', encoding='utf-8') as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(
        f'Cannot read the {origin}: no such file. Pass the path of a file '
        'written by MorphNetCallback / LayerStructureExporter (e.g. '
        '<export_dir>/learned_structure/alive_<step>) or a dict.') from None
  except IsADirectoryError:
    raise IsADirectoryError(
        f'Cannot read the {origin}: it is a directory. Pass one of the '
        'alive_<step> files inside it.') from None
  except UnicodeDecodeError as e:
    raise ValueError(
        f'The {origin} is not a UTF-8 text file ({e.reason} at byte {e.start}): '
        'it is not a structure written by MorphNet.') from None
  except OSError as e:
    raise OSError(f'Cannot read the {origin}: {e.strerror or e}.') from e
  if not text.strip():
    raise ValueError(
        f'The {origin} is empty. It may have been truncated; export the '
        'structure again.')
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(
        f'The {origin} is not valid JSON ({e.msg} at line {e.lineno}, column '
        f'{e.colno}); it may be truncated or corrupted. A structure file holds '
        'one JSON object such as {"conv1": 13, "conv2": 64}.') from None


def _check_entries(raw: Any, origin: str, type_error: type) -> Structure:
  if not isinstance(raw, Mapping):
    raise type_error(
        f'The {origin} must hold a JSON object {{layer name: width}}. '
        f'Received: a {_json_type(raw)}.')
  result: Structure = {}
  kinds = set()
  for key, value in raw.items():
    if not isinstance(key, str) or not key:
      raise type_error(
          f'Layer names in the {origin} must be non-empty strings. '
          f'Received: key {key!r}.')
    if _is_sequence(value):
      result[key] = _check_mask(key, value, origin, type_error)
      kinds.add('mask')
    else:
      result[key] = _check_count(key, value, origin, type_error)
      kinds.add('count')
  if len(kinds) > 1:
    raise ValueError(
        f'The {origin} mixes alive counts and per-channel masks. Use counts '
        '(ints) for every layer, or masks (lists of booleans) for every layer.')
  return result


def _is_sequence(value: Any) -> bool:
  return isinstance(value, (list, tuple, np.ndarray))


def _check_count(key: str, value: Any, origin: str, type_error: type) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    raise type_error(
        f'The width of layer {key!r} in the {origin} must be an integer alive '
        f'count or a list of booleans. Received: {value!r} '
        f'({_json_type(value)}).')
  if not isinstance(value, numbers.Integral):
    if not float(value).is_integer():
      raise type_error(
          f'The width of layer {key!r} in the {origin} must be a whole number. '
          f'Received: {value!r}.')
  count = int(value)
  if count < 0:
    raise ValueError(
        f'The width of layer {key!r} in the {origin} must be >= 0. '
        f'Received: {value!r}.')
  return count


def _check_mask(key: str, value: Any, origin: str, type_error: type) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != 1:
    raise type_error(
        f'The mask of layer {key!r} in the {origin} must be a flat list of '
        f'booleans. Received: an array of shape {array.shape}.')
  if array.dtype == np.bool_:
    return array.copy()
  if array.size and (array.dtype.kind not in 'iu' or not np.isin(array, (0, 1)).all()):
    raise type_error(
        f'The mask of layer {key!r} in the {origin} must hold booleans (or 0/1). '
        f'Received: {list(value)[:8]!r}{"..." if len(array) > 8 else ""}.')
  return array.astype(bool)


def _json_type(value: Any) -> str:
  if isinstance(value, Mapping):
    return 'JSON object'
  if isinstance(value, (list, tuple)):
    return 'JSON array'
  if isinstance(value, str):
    return 'string'
  if isinstance(value, (bool, np.bool_)):
    return 'boolean'
  if value is None:
    return 'null'
  if isinstance(value, numbers.Number):
    return 'number'
  return type(value).__name__
