"""The learned structure of a Keras model, keyed by layer name.

`StructureExporter` keys alive counts by op name, as the original. Keras users
think in layers, so this module renames each exported op to the Keras layer
that owns it (exactly, through the weight variable the op reads). A layer with
two exported ops (SeparableConv2D: depthwise + pointwise) gets the pointwise
count under its name and the depthwise count under `<layer>/depthwise`.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import tensorflow as tf

from morph_net.tools import structure_exporter

KEY_BY_CHOICES = ('layer', 'op')


class LayerStructureExporter:
  """Exports alive counts of a Keras-analysed regularizer under layer names.

  Args:
    network_regularizer: a regularizer built with `from_keras_model` (it carries
      the traced model); with `key_by='op'` any regularizer works.
    key_by: `'layer'` (Keras layer names) or `'op'` (graph op names).
    include_matmul_and_depthwise: also export Dense (`MatMul`) and depthwise
      layers. Defaults to True: Keras users usually want every layer's width.
  """

  def __init__(self, network_regularizer, *, key_by: str = 'layer',
               include_matmul_and_depthwise: bool = True):
    if key_by not in KEY_BY_CHOICES:
      raise ValueError(
          f'key_by must be one of {KEY_BY_CHOICES}. Received: key_by={key_by!r}.')
    manager = network_regularizer.op_regularizer_manager
    traced = getattr(network_regularizer, 'traced_model', None)
    if key_by == 'layer' and traced is None:
      raise ValueError(
          "key_by='layer' needs a regularizer built with from_keras_model(...), "
          f'which records the layer of every op. Received: '
          f'{type(network_regularizer).__name__} built from graph ops; use '
          "key_by='op'.")
    self._exporter = structure_exporter.StructureExporter(
        manager, include_matmul_and_depthwise=include_matmul_and_depthwise)
    self._regularizers = dict(self._exporter.regularizers)  # op name -> reg
    self._keys = self._make_keys(traced, key_by)

  def _make_keys(self, traced, key_by) -> Dict[str, str]:
    if key_by == 'op':
      return {name: name for name in self._regularizers}
    keys = {}
    used = set()
    for op_name in sorted(self._regularizers):
      op = traced.graph.get_operation_by_name(op_name)
      layer = traced.layer_name_of(op) or op_name
      key = f'{layer}/depthwise' if op.type == 'DepthwiseConv2dNative' else layer
      if key in used:
        key = f'{layer}/{op.name.split("/")[-1]}'
      used.add(key)
      keys[op_name] = key
    return keys

  @property
  def op_names(self) -> Dict[str, str]:
    """Export key -> op name."""
    return {key: op_name for op_name, key in self._keys.items()}

  def alive_counts(self) -> Dict[str, int]:
    """Alive channels per key, evaluated eagerly from the current variables.

    Raises:
      ValueError: a regularization value (gamma, kernel norm) is NaN or
        infinite; the message names the layers (nothing is exported then).
    """
    structure_exporter.check_finite_regularization(
        {self._keys[name]: reg for name, reg in self._regularizers.items()})
    return {self._keys[name]: int(tf.reduce_sum(tf.cast(reg.alive_vector, tf.int32)))
            for name, reg in self._regularizers.items()}

  def channel_counts(self) -> Dict[str, int]:
    """Total channels per key (the seed widths)."""
    return {self._keys[name]: int(reg.alive_vector.shape[0])
            for name, reg in self._regularizers.items()}

  def save(self, base_dir: str, step: int,
           alive_counts: Optional[Dict[str, int]] = None) -> str:
    """Writes `<base_dir>/learned_structure/alive_<step>` atomically; returns its path."""
    counts = self.alive_counts() if alive_counts is None else alive_counts
    directory = os.path.join(base_dir, 'learned_structure')
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      raise OSError(
          f'Cannot create the learned-structure directory {directory!r}: {e}. '
          'Pass an export_dir that is a writable directory.') from e
    path = os.path.join(directory, f'{structure_exporter.ALIVE_FILENAME}_{int(step)}')
    structure_exporter.write_file_atomically(path, structure_exporter.format_structure(counts))
    return path
