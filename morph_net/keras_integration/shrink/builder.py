"""The rebuild: walks the old graph and builds the new one, layer by layer."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np
from absl import logging

from morph_net.keras_integration import structure_io
from morph_net.keras_integration.shrink import channels as channels_lib
from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink import planning
from morph_net.keras_integration.shrink import structure as structure_lib
from morph_net.keras_integration.shrink import transfer

L = keras.layers


@dataclasses.dataclass
class _Vanished:
  """A tensor removed because a width layer before it got width 0."""
  origins: Tuple[str, ...]


@dataclasses.dataclass
class RebuildResult:
  """What `rebuild` produced.

  Attributes:
    model: the new model.
    widths: new width of every width layer kept (layer name -> width).
    vanished_layers: layers not built because they got width 0 or were fed
      only by vanished layers.
    removed_merges: Add / Concatenate layers dropped because at most one input
      was left.
  """
  model: keras.Model
  widths: Dict[str, int]
  vanished_layers: List[str]
  removed_merges: List[str]


def rebuild(model: keras.Model, structure: structure_lib.StructureLike, *,
            transfer_weights: bool = False,
            name: Optional[str] = None) -> RebuildResult:
  """`shrink_model`, also reporting the new widths and the removed layers.

  Args and Raises: as `shrink_model`.

  Returns:
    A RebuildResult.
  """
  functional = graph.functional_of(model)
  nodes = graph.nodes(functional)
  kinds = graph.layer_kinds(nodes)
  entries, origin = structure_lib.resolve(model, structure)
  widths = structure_lib.check(model, functional, entries, origin, kinds)
  mask_mode = structure_io.is_mask_structure(entries)
  if transfer_weights and not mask_mode:
    raise ValueError(
        'transfer_weights=True needs per-channel masks (which channels survive), '
        f'but the {origin} holds alive counts only. Pass the trained network '
        'regularizer (or a {layer name: bool mask} dict) as the structure, or use '
        'transfer_weights=False.')
  final_masks = planning.plan_masks(functional, nodes, kinds, widths) if mask_mode else {}
  builder = _Builder(model, functional, kinds, widths, final_masks, mask_mode, origin)
  new_model = builder.build(name or model.name)
  if transfer_weights:
    for layer_id, (old_layer, new_layer) in builder.layer_pairs.items():
      in_mask, out_mask = builder.layer_masks[layer_id]
      transfer.transfer_layer(old_layer, new_layer, in_mask, out_mask)
  return RebuildResult(model=new_model, widths=builder.new_widths,
                       vanished_layers=builder.vanished_layers,
                       removed_merges=builder.removed_merges)


class _Builder:
  """Walks the old graph and builds the new one (see the module doc)."""

  def __init__(self, model, functional, kinds, widths, final_masks, mask_mode, origin):
    self._model = model
    self._functional = functional
    self._kinds = kinds
    self._widths = widths
    self._final_masks = final_masks
    self._mask_mode = mask_mode
    self._origin = origin
    self._values: Dict[int, Any] = {}      # id(old tensor) -> new tensor | _Vanished
    self._channels: Dict[int, channels_lib.Channels] = {}  # id(old tensor) -> descriptor
    self.layer_pairs: Dict[int, Tuple[Any, Any]] = {}
    self.layer_masks: Dict[int, Tuple[channels_lib.Channels, channels_lib.Channels]] = {}
    self.new_widths: Dict[str, int] = {}
    self.vanished_layers: List[str] = []
    self.removed_merges: List[str] = []

  def build(self, name: str) -> keras.Model:
    is_sequential = isinstance(self._model, keras.Sequential)
    new_inputs = []
    for tensor in self._functional.inputs:
      input_layer = tensor._keras_history.operation
      if is_sequential:
        new_input = L.InputLayer(batch_shape=tuple(tensor.shape), dtype=tensor.dtype,
                                 name=input_layer.name)
        value = new_input.output
        self._sequential_input = new_input
      else:
        value = keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype,
                            name=input_layer.name)
      new_inputs.append(value)
      self._values[id(tensor)] = value
      self._channels[id(tensor)] = channels_lib.full(graph.last_dim(tensor), self._mask_mode)
    for node in graph.nodes(self._functional):
      self._visit(node)
    outputs = []
    for tensor in self._functional.outputs:
      value = self._values.get(id(tensor))
      if isinstance(value, _Vanished):
        raise ValueError(
            f'Layer(s) {list(value.origins)} would get width 0, but nothing can '
            f'absorb their removal: their output reaches the model output '
            f'{tensor._keras_history.operation.name!r} through a plain chain. Only '
            'a residual branch (an input of Add) or an input of a channel '
            f'Concatenate may vanish. Check the {self._origin}.')
      outputs.append(value)
    if is_sequential:
      new_layers = [self.layer_pairs[id(layer)][1] for layer in self._model.layers
                    if id(layer) in self.layer_pairs]
      return keras.Sequential([self._sequential_input] + new_layers, name=name)
    return keras.Model(
        keras.tree.pack_sequence_as(self._functional._inputs_struct, new_inputs),
        keras.tree.pack_sequence_as(self._functional._outputs_struct, outputs),
        name=name)

  # -- per node ---------------------------------------------------------------

  def _visit(self, node) -> None:
    layer = node.operation
    kind = self._kinds[id(layer)]
    old_inputs = list(node.arguments.keras_tensors)
    values = [self._values[id(t)] for t in old_inputs]
    vanished = [v for v in values if isinstance(v, _Vanished)]
    if vanished:
      self._visit_with_vanished(node, layer, kind, old_inputs, values, vanished)
      return
    in_channels = [self._channels[id(t)] for t in old_inputs]
    out_channels = self._output_channels(node, layer, kind, old_inputs, in_channels)
    if kind == graph.WIDTH and channels_lib.width_of(out_channels[0]) == 0:
      self._vanish(node, (layer.name,))
      return
    new_layer = self._new_layer(layer, kind, out_channels)
    args, kwargs = node.arguments.fill_in(self._values)
    outputs = keras.tree.flatten(new_layer(*args, **kwargs))
    self._record(node, layer, new_layer, in_channels, out_channels, outputs)

  def _visit_with_vanished(self, node, layer, kind, old_inputs, values, vanished):
    origins = tuple(dict.fromkeys(o for v in vanished for o in v.origins))
    absorbs = (kind == graph.CONCAT) or (kind == graph.MERGE and isinstance(layer, L.Add))
    if not absorbs:
      if len(old_inputs) == 1 and len(node.outputs) == 1:
        self._vanish(node, origins)
        return
      raise ValueError(
          f'Layer(s) {list(origins)} would get width 0, but their output reaches '
          f'layer {layer.name!r} ({type(layer).__name__}), which cannot drop an '
          'input. Only a residual branch (an input of Add) or an input of a channel '
          f'Concatenate may vanish. Check the {self._origin}.')
    survivors = [(t, v) for t, v in zip(old_inputs, values) if not isinstance(v, _Vanished)]
    if not survivors:
      self._vanish(node, origins)
      return
    out_tensor = node.outputs[0]
    if kind == graph.CONCAT:
      parts = [self._channels[id(t)] if not isinstance(v, _Vanished)
               else channels_lib.empty(graph.last_dim(t), self._mask_mode)
               for t, v in zip(old_inputs, values)]
      out_channels = (np.concatenate(parts) if self._mask_mode
                      else sum(channels_lib.width_of(p) for p in parts))
    else:
      out_channels = self._merge_channels(
          layer, [t for t, _ in survivors], [self._channels[id(t)] for t, _ in survivors],
          graph.last_dim(out_tensor))
    logging.info('Layer(s) %s vanished: %s %r keeps %d of its %d inputs.',
                 list(origins), type(layer).__name__, layer.name, len(survivors),
                 len(old_inputs))
    if len(survivors) == 1:
      self._values[id(out_tensor)] = survivors[0][1]
      self._channels[id(out_tensor)] = out_channels
      self.removed_merges.append(layer.name)
      return
    new_layer = self._new_layer(layer, kind, [out_channels])
    outputs = keras.tree.flatten(new_layer([v for _, v in survivors]))
    in_channels = [self._channels[id(t)] for t, _ in survivors]
    self._record(node, layer, new_layer, in_channels, [out_channels], outputs)

  def _vanish(self, node, origins) -> None:
    for tensor in node.outputs:
      self._values[id(tensor)] = _Vanished(origins)
    if node.operation.name not in self.vanished_layers:
      self.vanished_layers.append(node.operation.name)

  def _record(self, node, layer, new_layer, in_channels, out_channels, outputs):
    for old, new, channels in zip(node.outputs, outputs, out_channels):
      expected = channels_lib.width_of(channels)
      if graph.last_dim(new) != expected:
        raise ValueError(
            f'Layer {layer.name!r} ({type(layer).__name__}) produced {graph.last_dim(new)} '
            f'channels where {expected} were expected; it cannot be resized this way.')
      self._values[id(old)] = new
      self._channels[id(old)] = channels
    if id(layer) not in self.layer_masks:
      self.layer_masks[id(layer)] = (in_channels[0] if in_channels else None,
                                     out_channels[0])

  # -- channel rules ----------------------------------------------------------

  def _output_channels(self, node, layer, kind, old_inputs, in_channels) -> List[channels_lib.Channels]:
    outputs = node.outputs
    if kind == graph.WIDTH:
      if id(layer) in self._final_masks:
        out = self._final_masks[id(layer)]
      else:
        out = self._widths.get(layer.name, graph.old_width(layer))
        if isinstance(out, np.ndarray):  # Mask mode without a plan cannot happen.
          out = channels_lib.width_of(out)
      groups = getattr(layer, 'groups', 1) or 1
      if groups != 1 and not (channels_lib.unchanged(in_channels[0], graph.last_dim(old_inputs[0]))
                              and channels_lib.unchanged(out, graph.old_width(layer))):
        raise ValueError(
            f'Layer {layer.name!r} is a grouped convolution (groups={groups}); '
            'changing its input or output width is not supported. Leave it out of '
            f'the {self._origin} and keep the layers before it unchanged.')
      return [out]
    if kind == graph.DEPTHWISE:
      channels = in_channels[0]
      m = int(layer.depth_multiplier)
      return [np.repeat(channels, m) if isinstance(channels, np.ndarray) else channels * m]
    if kind == graph.FLATTEN:
      channels = in_channels[0]
      if channels_lib.unchanged(channels, graph.last_dim(old_inputs[0])):
        return [channels_lib.full(graph.last_dim(outputs[0]), self._mask_mode)]
      spatial = channels_lib.spatial_positions(old_inputs[0])
      if spatial is None:
        self._cannot_adapt(layer, old_inputs, in_channels, 'its input has unknown '
                           'spatial dimensions')
      return [np.tile(channels, spatial) if isinstance(channels, np.ndarray)
              else channels * spatial]
    if kind == graph.CONCAT:
      if self._mask_mode:
        return [np.concatenate(in_channels)]
      return [sum(channels_lib.width_of(c) for c in in_channels)]
    if kind == graph.MERGE:
      return [self._merge_channels(layer, old_inputs, in_channels, graph.last_dim(outputs[0]))]
    if kind == graph.FOLLOW:
      return [in_channels[0]]
    # graph.FIXED: the layer must see what it saw before.
    for tensor, channels in zip(old_inputs, in_channels):
      if not channels_lib.unchanged(channels, graph.last_dim(tensor)):
        self._cannot_adapt(layer, old_inputs, in_channels, 'its config fixes its shapes '
                           'or it is not a layer whose channels MorphNet can follow')
    return [channels_lib.full(graph.last_dim(t), self._mask_mode) for t in outputs]

  def _merge_channels(self, layer, old_inputs, in_channels, out_width) -> channels_lib.Channels:
    # Inputs of width 1 broadcast over the others: they do not constrain channels.
    main = [(t, c) for t, c in zip(old_inputs, in_channels)
            if graph.last_dim(t) == out_width] or list(zip(old_inputs, in_channels))
    first = main[0][1]
    for _, channels in main[1:]:
      same = (np.array_equal(first, channels) if self._mask_mode
              else channels_lib.width_of(first) == channels_lib.width_of(channels))
      if not same:
        widths = [channels_lib.describe(c) for _, c in main]
        raise ValueError(
            f'{type(layer).__name__} layer {layer.name!r} merges inputs that would '
            f'get different widths {widths}; its inputs must keep the same channels '
            '(they form one group). Give the layers feeding it the same width in the '
            f'{self._origin}.')
    return first

  def _cannot_adapt(self, layer, old_inputs, in_channels, reason):
    before = [graph.last_dim(t) for t in old_inputs]
    after = [channels_lib.width_of(c) for c in in_channels]
    raise ValueError(
        f'Layer {layer.name!r} ({type(layer).__name__}) cannot follow a change of its '
        f'input width from {before} to {after}: {reason}. Keep the layers feeding '
        f'it at their original width (leave them out of the {self._origin}), or '
        'replace it (e.g. Reshape by GlobalAveragePooling2D or Flatten).')

  # -- layers -----------------------------------------------------------------

  def _new_layer(self, layer, kind, out_channels):
    if id(layer) in self.layer_pairs:
      return self.layer_pairs[id(layer)][1]
    if isinstance(layer, keras.Model):
      new_layer = keras.models.clone_model(layer)
    else:
      config = layer.get_config()
      if kind == graph.WIDTH:
        width = channels_lib.width_of(out_channels[0])
        config['units' if isinstance(layer, L.Dense) else 'filters'] = width
        self.new_widths[layer.name] = width
      try:
        new_layer = type(layer).from_config(config)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(
            f'Cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its '
            f'config: {e}. Layers must implement get_config/from_config.') from e
    self.layer_pairs[id(layer)] = (layer, new_layer)
    return new_layer

