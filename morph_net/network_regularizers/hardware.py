"""Hardware descriptions for the latency regularizers: register, save, load.

The latency of an op is a roofline (`resource_function.latency_function`):

  latency(op) = max(FLOPs(op) / (peak_compute * efficiency[op.type]),
                    bytes(op) / memory_bandwidth)

in nanoseconds with GFLOP/s and GB/s. The original hard-codes the datasheet
figures of six accelerators (`resource_function.PEAK_COMPUTE` and
`MEMORY_BANDWIDTH`: K80, P4, T4, P100, V100, TPUv2, plus the two simulated
`FLOP_LATENCY` / `MEMORY_LATENCY` entries); those tables are unchanged and
still looked up by name. This module adds a `Hardware` description that
users register under their own name, pass directly as `hardware=`, or save
and load as a small JSON file (e.g. the one `morphnet calibrate` writes).

`op_efficiency` maps FLOP op types (`Conv2D`, `DepthwiseConv2dNative`,
`MatMul`, `Conv2DBackpropInput`, `Conv3D`) to the fraction of
`peak_compute` that op type reaches, in (0, 1]; a FLOP op type that is not
listed runs at `peak_compute` (efficiency 1). Only the compute term is
scaled; the memory term always uses `memory_bandwidth`.

Example:
  from morph_net.network_regularizers import hardware, latency_regularizer

  hardware.register(hardware.Hardware(
      name='my_cpu', peak_compute=120.0, memory_bandwidth=15.0,
      op_efficiency={'DepthwiseConv2dNative': 0.1}))
  reg = latency_regularizer.GammaLatencyRegularizer(
      [logits.op], gamma_threshold=1e-3, hardware='my_cpu')
  # or: hardware=hardware.load('my_cpu.json'), or hardware='my_cpu.json'
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any, Dict, List, Mapping, Optional, Union

from morph_net.network_regularizers import cost_calculator

FORMAT = 'morph_net.hardware'
VERSION = 1

# Op types whose compute term `op_efficiency` may scale.
EFFICIENCY_OP_TYPES = tuple(cost_calculator.FLOP_OPS)

_FIELDS = ('name', 'peak_compute', 'memory_bandwidth', 'op_efficiency',
           'description', 'measurements')
_FILE_FIELDS = ('format', 'version') + _FIELDS


@dataclasses.dataclass(frozen=True)
class Hardware:
  """A hardware for the latency cost: roofline figures and per-op efficiencies.

  Args:
    name: The name, e.g. `'my_cpu'`; the latency regularizers report their
      cost as `name + ' Latency'`.
    peak_compute: Peak compute, in GFLOP/s (> 0, finite).
    memory_bandwidth: Memory bandwidth, in GB/s (> 0, finite).
    op_efficiency: Optional `{op type: fraction of peak_compute}` for the
      FLOP op types (`EFFICIENCY_OP_TYPES`), each in (0, 1]. Op types not
      listed run at `peak_compute`.
    description: Optional free text (where the figures come from).
    measurements: Optional JSON-serialisable record of how the figures were
      measured (written by `morphnet calibrate`); not used by the cost.

  Raises:
    TypeError: a field has the wrong type.
    ValueError: a field has a bad value (the message names the field and the
      value received).
  """

  name: str
  peak_compute: float
  memory_bandwidth: float
  op_efficiency: Mapping[str, float] = dataclasses.field(default_factory=dict)
  description: str = ''
  measurements: Optional[Mapping[str, Any]] = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name.strip():
      raise (TypeError if not isinstance(self.name, str) else ValueError)(
          'Hardware name must be a non-empty string. '
          f'Received: name={self.name!r}.')
    for field in ('peak_compute', 'memory_bandwidth'):
      object.__setattr__(self, field, _positive_number(
          getattr(self, field), field,
          'GFLOP/s' if field == 'peak_compute' else 'GB/s'))
    efficiency = self.op_efficiency if self.op_efficiency is not None else {}
    if not isinstance(efficiency, Mapping):
      raise TypeError(
          'op_efficiency must be a mapping {op type: fraction of peak_compute}. '
          f'Received: op_efficiency={efficiency!r}.')
    checked = {}
    for op_type, value in efficiency.items():
      if op_type not in EFFICIENCY_OP_TYPES:
        raise ValueError(
            f'op_efficiency keys must be FLOP op types, one of '
            f'{list(EFFICIENCY_OP_TYPES)}. Received: op_efficiency key '
            f'{op_type!r}. Other op types are memory bound in the roofline and '
            'use memory_bandwidth.')
      field = f'op_efficiency[{op_type!r}]'
      value = _positive_number(value, field, 'a fraction of peak_compute')
      if value > 1.0:
        raise ValueError(
            f'{field} must be in (0, 1]: the fraction of peak_compute this op '
            f'type reaches. Received: {field}={value!r}. Raise peak_compute '
            'instead.')
      checked[op_type] = value
    object.__setattr__(self, 'op_efficiency', checked)  # a copy: picklable
    if not isinstance(self.description, str):
      raise TypeError('description must be a string. '
                      f'Received: description={self.description!r}.')
    if self.measurements is not None:
      if not isinstance(self.measurements, Mapping):
        raise TypeError('measurements must be a mapping or None. '
                        f'Received: measurements={self.measurements!r}.')
      try:
        json.dumps(self.measurements, allow_nan=False)
      except (TypeError, ValueError) as e:
        raise ValueError(
            'measurements must be JSON-serialisable (finite numbers, strings, '
            f'lists, dicts): {e}. Received: measurements={self.measurements!r}.'
        ) from e

  def efficiency(self, op_type: str) -> float:
    """The fraction of `peak_compute` reached by `op_type` (1.0 if not listed)."""
    return self.op_efficiency.get(op_type, 1.0)

  def effective_peak_compute(self, op_type: str) -> float:
    """`peak_compute * efficiency(op_type)`, in GFLOP/s."""
    return self.peak_compute * self.efficiency(op_type)

  def to_dict(self) -> Dict[str, Any]:
    """The JSON content of this description (see `save`)."""
    content = {
        'format': FORMAT,
        'version': VERSION,
        'name': self.name,
        'peak_compute': self.peak_compute,
        'memory_bandwidth': self.memory_bandwidth,
        'op_efficiency': dict(sorted(self.op_efficiency.items())),
    }
    if self.description:
      content['description'] = self.description
    if self.measurements is not None:
      content['measurements'] = self.measurements
    return content

  @classmethod
  def from_dict(cls, content: Mapping[str, Any], *, source: str = 'dict') -> 'Hardware':
    """Builds a description from `to_dict()` content, rejecting unknown fields.

    Args:
      content: The mapping, e.g. parsed JSON.
      source: Where it comes from, for error messages.

    Raises:
      TypeError / ValueError: a field is missing, unknown or invalid.
    """
    if not isinstance(content, Mapping):
      raise TypeError(f'A hardware description ({source}) must be a JSON object. '
                      f'Received: {type(content).__name__}.')
    unknown = sorted(set(content) - set(_FILE_FIELDS))
    if unknown:
      raise ValueError(
          f'Unknown field(s) {unknown} in the hardware description ({source}). '
          f'Accepted fields: {list(_FILE_FIELDS)}.')
    if 'format' in content and content['format'] != FORMAT:
      raise ValueError(
          f'The hardware description ({source}) has format={content["format"]!r}; '
          f'expected {FORMAT!r}.')
    if 'version' in content and content['version'] != VERSION:
      raise ValueError(
          f'The hardware description ({source}) has version={content["version"]!r}; '
          f'this morph_net reads version {VERSION}.')
    missing = [f for f in ('name', 'peak_compute', 'memory_bandwidth')
               if f not in content]
    if missing:
      raise ValueError(
          f'The hardware description ({source}) lacks the field(s) {missing}. '
          'Required: name, peak_compute (GFLOP/s), memory_bandwidth (GB/s).')
    return cls(**{f: content[f] for f in _FIELDS if f in content})


def _positive_number(value, field: str, unit: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f'{field} must be a number ({unit}). '
                    f'Received: {field}={value!r}.')
  value = float(value)
  if not math.isfinite(value) or value <= 0:
    raise ValueError(f'{field} must be a finite number > 0 ({unit}). '
                     f'Received: {field}={value!r}.')
  return value


# User-registered descriptions, by name.
_REGISTRY: Dict[str, Hardware] = {}


def _datasheet_tables():
  # Imported here: resource_function imports this module lazily, and the
  # tables must be read at call time (the original lets users edit them).
  from morph_net.network_regularizers import resource_function  # pylint: disable=g-import-not-at-top
  return resource_function.PEAK_COMPUTE, resource_function.MEMORY_BANDWIDTH


def register(hardware: Hardware, *, overwrite: bool = False) -> Hardware:
  """Registers `hardware` under `hardware.name` for `hardware=<name>`.

  Args:
    hardware: The description.
    overwrite: Replace a description registered earlier under that name.
      Defaults to False. The datasheet entries of
      `resource_function.PEAK_COMPUTE` can never be replaced.

  Returns:
    `hardware`.

  Raises:
    TypeError: `hardware` is not a `Hardware`.
    ValueError: the name is a datasheet entry, or already registered and
      `overwrite` is False.
  """
  if not isinstance(hardware, Hardware):
    raise TypeError('register() takes a Hardware description (or use '
                    'hardware.load(path) first). '
                    f'Received: hardware={hardware!r}.')
  peak_table, _ = _datasheet_tables()
  if hardware.name in peak_table:
    raise ValueError(
        f'{hardware.name!r} is a datasheet entry of '
        'resource_function.PEAK_COMPUTE, whose figures are fixed. Register '
        f'your description under another name. Received: name={hardware.name!r}.')
  if hardware.name in _REGISTRY and not overwrite and _REGISTRY[hardware.name] != hardware:
    raise ValueError(
        f'A different hardware is already registered as {hardware.name!r}. Pass '
        f'overwrite=True to replace it. Received: name={hardware.name!r}.')
  _REGISTRY[hardware.name] = hardware
  return hardware


def unregister(name: str) -> None:
  """Removes a user-registered description.

  Raises:
    ValueError: `name` is not registered (datasheet entries cannot be removed).
  """
  if name not in _REGISTRY:
    raise ValueError(f'No user-registered hardware is named {name!r}. Registered: '
                     f'{sorted(_REGISTRY)}. Received: name={name!r}.')
  del _REGISTRY[name]


def registered_names() -> List[str]:
  """Datasheet names (table order) followed by user-registered names (sorted)."""
  peak_table, _ = _datasheet_tables()
  return list(peak_table) + sorted(n for n in _REGISTRY if n not in peak_table)


def get(name: str) -> Hardware:
  """The description registered as `name`, or the datasheet entry `name`.

  Raises:
    ValueError: `name` is unknown (the message lists the known names).
  """
  peak_table, bandwidth_table = _datasheet_tables()
  if isinstance(name, str) and name in _REGISTRY:
    return _REGISTRY[name]
  if isinstance(name, str) and name in peak_table and name in bandwidth_table:
    return Hardware(name=name, peak_compute=peak_table[name],
                    memory_bandwidth=bandwidth_table[name],
                    description='datasheet entry of the original MorphNet')
  raise ValueError(_unknown_message(name))


def _unknown_message(hardware) -> str:
  # Keeps the original's message first ('Hardware %s must be in %s').
  return (f'Hardware {hardware} must be in {registered_names()}. '
          f'Received: hardware={hardware!r}. Pass a registered name, a '
          'morph_net.network_regularizers.hardware.Hardware, or the path of a '
          'hardware JSON file (e.g. written by `morphnet calibrate`); register '
          'your own with hardware.register(Hardware(...)).')


HardwareLike = Union[str, os.PathLike, Hardware]


def resolve(hardware: HardwareLike) -> Hardware:
  """The `Hardware` meant by `hardware=` of the latency regularizers.

  Args:
    hardware: A `Hardware`; a registered or datasheet name (e.g. `'V100'`);
      or the path of a hardware JSON file (a string ending in `.json`, or an
      `os.PathLike`).

  Returns:
    The `Hardware`.

  Raises:
    ValueError: an unknown name, or a bad file (the message says which).
  """
  if isinstance(hardware, Hardware):
    return hardware
  if isinstance(hardware, os.PathLike) or (
      isinstance(hardware, str) and hardware.endswith('.json')
      and hardware not in _REGISTRY):
    return load(hardware)
  return get(hardware)


def save(hardware: Hardware, path: Union[str, os.PathLike]) -> str:
  """Writes `hardware` as JSON to `path`, atomically (temporary file + rename).

  Returns:
    The path written.

  Raises:
    TypeError: `hardware` is not a `Hardware`.
    OSError: the directory cannot be written.
  """
  if not isinstance(hardware, Hardware):
    raise TypeError(f'save() takes a Hardware description. Received: hardware={hardware!r}.')
  from morph_net.tools import structure_exporter  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  structure_exporter.write_file_atomically(
      os.path.join(directory, os.path.basename(path)),
      json.dumps(hardware.to_dict(), indent=2, allow_nan=False) + '\n')
  return path


def load(path: Union[str, os.PathLike]) -> Hardware:
  """Reads a hardware JSON file written by `save` (or by hand).

  Raises:
    ValueError: the file is missing, not JSON, or not a valid description
      (the message names the file and the field).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(
        f'No hardware JSON file at {path!r}. Pass a registered name '
        f'({registered_names()}) or the path of an existing file, e.g. one '
        f'written by `morphnet calibrate`. Received: hardware={path!r}.')
  try:
    with open(path, encoding='utf-8') as f:
      content = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'The hardware file {path!r} is not valid JSON: {e}.') from e
  try:
    return Hardware.from_dict(content, source=path)
  except TypeError as e:
    raise ValueError(f'Bad hardware file {path!r}: {e}') from e
  except ValueError as e:
    if path in str(e):
      raise
    raise ValueError(f'Bad hardware file {path!r}: {e}') from e
