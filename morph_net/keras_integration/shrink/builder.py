"""The rebuild: walks the old graph and builds the new one, layer by layer."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np
from absl import logging

from morph_net.keras_integration import constant_folding
from morph_net.keras_integration import structure_io
from morph_net.keras_integration.shrink import channels as channels_lib
from morph_net.keras_integration.shrink import custom
from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink import grouped
from morph_net.keras_integration.shrink import operations
from morph_net.keras_integration.shrink import planning
from morph_net.keras_integration.shrink import reshape
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
  kinds = graph.layer_kinds(graph.nodes(functional))
  entries, origin = structure_lib.resolve(model, structure)
  widths = structure_lib.check(model, functional, entries, origin, kinds)
  mask_mode = structure_io.is_mask_structure(entries)
  if transfer_weights and not mask_mode:
    raise ValueError(
        'transfer_weights=True needs per-channel masks (which channels survive), '
        f'but the {origin} holds alive counts only. Pass the trained network '
        'regularizer (or a {layer name: bool mask} dict) as the structure, or use '
        'transfer_weights=False.')
  final_masks = planning.plan_masks(functional, kinds, widths, origin) if mask_mode else {}
  builder = _Builder(kinds, widths, final_masks, mask_mode, origin)
  inputs = [channels_lib.full(graph.last_dim(t), mask_mode) for t in functional.inputs]
  new_model, _ = builder.build(model, inputs, name or model.name)
  if transfer_weights:
    for layer_id, (old_layer, new_layer) in builder.layer_pairs.items():
      kind = kinds.get(layer_id)
      if kind == graph.NESTED:
        continue  # Its layers are transferred one by one.
      if kind == graph.CUSTOM:
        builder.transfer_custom(old_layer, new_layer)
        continue
      in_mask, out_mask = builder.layer_masks[layer_id]
      transfer.transfer_layer(old_layer, new_layer, in_mask, out_mask)
    # The removed channels' constant outputs (BN beta through the activation)
    # go into their consumers' biases, so the shrunk model keeps predicting.
    constant_folding.fold_removed_constants(model, new_model, final_masks)
  return RebuildResult(model=new_model, widths=builder.new_widths,
                       vanished_layers=builder.vanished_layers,
                       removed_merges=builder.removed_merges)


class _Builder:
  """Walks the old graph and builds the new one (see the module doc)."""

  def __init__(self, kinds, widths, final_masks, mask_mode, origin):
    self._kinds = kinds
    self._widths = widths
    self._final_masks = final_masks
    self._mask_mode = mask_mode
    self._origin = origin
    self._values: Dict[int, Any] = {}      # id(old tensor) -> new tensor | _Vanished
    self._channels: Dict[int, channels_lib.Channels] = {}  # id(old tensor) -> descriptor
    self._nested: Dict[int, Tuple[List[Any], List[Any]]] = {}  # in / out channels
    self._contexts: Dict[int, custom.RebuildContext] = {}
    self.layer_pairs: Dict[int, Tuple[Any, Any]] = {}
    self.layer_masks: Dict[int, Tuple[Any, Any]] = {}
    self.new_widths: Dict[str, int] = {}
    self.vanished_layers: List[str] = []
    self.removed_merges: List[str] = []

  def build(self, model, input_channels, name: str):
    """Rebuilds `model` (top level or nested) on inputs with `input_channels`.

    Returns:
      (new model, channel descriptors of its outputs).
    """
    functional = graph.functional_of(model)
    is_sequential = isinstance(model, keras.Sequential)
    new_inputs = []
    for tensor, channels in zip(functional.inputs, input_channels):
      input_layer = tensor._keras_history.operation
      shape = tuple(tensor.shape)
      if shape:
        shape = shape[:-1] + (channels_lib.width_of(channels),)
      if is_sequential:
        new_input = L.InputLayer(batch_shape=shape, dtype=tensor.dtype,
                                 name=input_layer.name)
        value = new_input.output
        sequential_input = new_input
      else:
        value = keras.Input(batch_shape=shape, dtype=tensor.dtype, name=input_layer.name)
      new_inputs.append(value)
      self._values[id(tensor)] = value
      self._channels[id(tensor)] = channels
    for node in graph.nodes(functional):
      self._visit(node)
    outputs = []
    for tensor in functional.outputs:
      value = self._values.get(id(tensor))
      if isinstance(value, _Vanished):
        raise ValueError(
            f'Layer(s) {list(value.origins)} would get width 0, but nothing can '
            f'absorb their removal: their output reaches the output of model '
            f'{model.name!r} ({tensor._keras_history.operation.name!r}) through a '
            'plain chain. Only a residual branch (an input of Add) or an input of a '
            f'channel Concatenate may vanish. Check the {self._origin}.')
      outputs.append(value)
    out_channels = [self._channels[id(t)] for t in functional.outputs]
    if is_sequential:
      new_layers = [self.layer_pairs[id(layer)][1] for layer in model.layers
                    if id(layer) in self.layer_pairs]
      return keras.Sequential([sequential_input] + new_layers, name=name), out_channels
    new_model = keras.Model(
        keras.tree.pack_sequence_as(functional._inputs_struct, new_inputs),
        keras.tree.pack_sequence_as(functional._outputs_struct, outputs),
        name=name)
    return new_model, out_channels

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
    if kind == graph.NESTED:
      self._visit_nested(node, layer, in_channels)
      return
    if kind == graph.CUSTOM:
      self._visit_custom(node, layer, in_channels)
      return
    out_channels = self._output_channels(node, layer, kind, old_inputs, in_channels)
    if kind in (graph.WIDTH, graph.GROUPED) and channels_lib.width_of(out_channels[0]) == 0:
      self._vanish(node, (layer.name,))
      return
    new_layer = self._new_layer(node, layer, kind, in_channels, out_channels)
    args, kwargs = node.arguments.fill_in(self._values)
    outputs = keras.tree.flatten(new_layer(*args, **kwargs))
    self._record(node, layer, new_layer, in_channels, out_channels, outputs)

  def _visit_nested(self, node, layer, in_channels) -> None:
    if id(layer) in self._nested:
      first_in, out_channels = self._nested[id(layer)]
      if not all(_same(a, b) for a, b in zip(first_in, in_channels)):
        raise ValueError(
            f'Nested model {layer.name!r} is called more than once, on inputs that '
            f'would get different channels ({[channels_lib.describe(c) for c in first_in]} '
            f'vs {[channels_lib.describe(c) for c in in_channels]}); one rebuilt model '
            f'cannot serve both. Give the layers feeding it the same widths in the '
            f'{self._origin}.')
      new_model = self.layer_pairs[id(layer)][1]
    else:
      new_model, out_channels = self.build(layer, in_channels, layer.name)
      self._nested[id(layer)] = (in_channels, out_channels)
      self.layer_pairs[id(layer)] = (layer, new_model)
    args, kwargs = node.arguments.fill_in(self._values)
    outputs = keras.tree.flatten(new_model(*args, **kwargs))
    self._record(node, layer, new_model, in_channels, out_channels, outputs)

  def _visit_custom(self, node, layer, in_channels) -> None:
    rebuilder = custom.rebuilder_of(layer)
    if id(layer) in self._contexts:
      context = self._contexts[id(layer)]
      if not all(_same(a, b) for a, b in zip(context.input_channels, in_channels)):
        raise ValueError(
            f'Layer {layer.name!r} ({type(layer).__name__}) is called more than once on '
            'inputs that would get different channels; one rebuilt layer cannot serve '
            f'both. Check the {self._origin}.')
      new_layer = self.layer_pairs[id(layer)][1]
      out_channels = context.output_channels
    else:
      entries = dict(self._widths)
      context = custom.RebuildContext(layer=layer, input_channels=list(in_channels),
                                      mask_mode=self._mask_mode, entries=entries)
      try:
        new_layer, out_channels = rebuilder.rebuild_fn(layer, context)
      except (ValueError, TypeError) as e:
        raise ValueError(
            f'The rebuild function registered for layer {layer.name!r} '
            f'({type(layer).__name__}) failed: {e}') from e
      out_channels = list(out_channels)
      context.output_channels = out_channels
      self._contexts[id(layer)] = context
      self.layer_pairs[id(layer)] = (layer, new_layer)
    args, kwargs = node.arguments.fill_in(self._values)
    outputs = keras.tree.flatten(new_layer(*args, **kwargs))
    self._record(node, layer, new_layer, in_channels, out_channels, outputs)

  def transfer_custom(self, old_layer, new_layer) -> None:
    context = self._contexts[id(old_layer)]
    rebuilder = custom.rebuilder_of(old_layer)
    if rebuilder.transfer_fn is not None:
      rebuilder.transfer_fn(old_layer, new_layer, context)
      return
    old_shapes = [tuple(w.shape) for w in old_layer.weights]
    new_shapes = [tuple(w.shape) for w in new_layer.weights]
    if old_shapes != new_shapes:
      raise ValueError(
          f'Cannot transfer the weights of layer {old_layer.name!r} '
          f'({type(old_layer).__name__}): its widths changed and its registered '
          'rebuilder has no transfer_fn. Pass transfer_fn=... to '
          'register_layer_rebuilder, or use transfer_weights=False.')
    new_layer.set_weights(old_layer.get_weights())

  def _visit_with_vanished(self, node, layer, kind, old_inputs, values, vanished):
    origins = tuple(dict.fromkeys(o for v in vanished for o in v.origins))
    absorbs = (kind == graph.CONCAT) or (kind == graph.MERGE and _is_add(layer))
    if not absorbs:
      if len(old_inputs) == 1 and len(node.outputs) == 1 and kind != graph.NESTED:
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
    in_channels = [self._channels[id(t)] for t, _ in survivors]
    new_layer = self._new_layer(node, layer, kind, in_channels, [out_channels])
    survivor_values = [v for _, v in survivors]
    if isinstance(layer, keras.layers.Layer):
      outputs = keras.tree.flatten(new_layer(survivor_values))
    else:  # ops.add(a, b) / ops.concatenate([...]) on the survivors.
      outputs = keras.tree.flatten(
          new_layer(survivor_values) if kind == graph.CONCAT else new_layer(*survivor_values))
    self._record(node, layer, new_layer, in_channels, [out_channels], outputs)

  def _vanish(self, node, origins) -> None:
    for tensor in node.outputs:
      self._values[id(tensor)] = _Vanished(origins)
    if node.operation.name not in self.vanished_layers:
      self.vanished_layers.append(node.operation.name)

  def _record(self, node, layer, new_layer, in_channels, out_channels, outputs):
    if len(outputs) != len(node.outputs):
      raise ValueError(
          f'Layer {layer.name!r} ({type(layer).__name__}) was rebuilt with '
          f'{len(outputs)} outputs instead of {len(node.outputs)}.')
    for old, new, channels in zip(node.outputs, outputs, out_channels):
      expected = channels_lib.width_of(channels)
      if graph.last_dim(new) != expected:
        raise ValueError(
            f'Layer {layer.name!r} ({type(layer).__name__}) produced '
            f'{graph.last_dim(new)} channels where {expected} were expected; it cannot '
            'be resized this way.')
      self._values[id(old)] = new
      self._channels[id(old)] = channels
    if id(layer) not in self.layer_masks:
      self.layer_masks[id(layer)] = (in_channels[0] if in_channels else None,
                                     out_channels[0])

  # -- channel rules ----------------------------------------------------------

  def _own_channels(self, layer) -> channels_lib.Channels:
    if id(layer) in self._final_masks:
      return self._final_masks[id(layer)]
    out = self._widths.get(layer.name, graph.old_width(layer))
    if isinstance(out, np.ndarray):  # Mask mode without a plan cannot happen.
      out = channels_lib.width_of(out)
    return out

  def _output_channels(self, node, layer, kind, old_inputs, in_channels):
    outputs = node.outputs
    if kind == graph.WIDTH:
      return [self._own_channels(layer)]
    if kind == graph.GROUPED:
      return [self._grouped_channels(layer, old_inputs, in_channels)]
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
    if kind == graph.SPLIT:
      return self._split_channels(layer, old_inputs, in_channels, outputs)
    if kind == graph.MERGE:
      return [self._merge_channels(layer, old_inputs, in_channels,
                                   graph.last_dim(outputs[0]))]
    if kind in (graph.FOLLOW, graph.RESHAPE):
      return [in_channels[0]]
    # FIXED: the layer must see what it saw before.
    for tensor, channels in zip(old_inputs, in_channels):
      if not channels_lib.unchanged(channels, graph.last_dim(tensor)):
        inner = [inner.name for inner in custom.inner_layers(layer)
                 if isinstance(inner, graph.WIDTH_LAYERS + graph.DEPTHWISE_LAYERS)]
        if inner:
          raise ValueError(
              f'Layer {layer.name!r} ({type(layer).__name__}) holds width layers '
              f'{inner[:5]} and its input width changes from '
              f'{[graph.last_dim(t) for t in old_inputs]} to '
              f'{[channels_lib.width_of(c) for c in in_channels]}: shrink_model does '
              f'not know how its config maps to them. {custom.hook_hint(layer)}')
        self._cannot_adapt(layer, old_inputs, in_channels, 'its config fixes its shapes '
                           'or it is not a layer whose channels MorphNet can follow')
    return [channels_lib.full(graph.last_dim(t), self._mask_mode) for t in outputs]

  def _grouped_channels(self, layer, old_inputs, in_channels):
    in_old = graph.last_dim(old_inputs[0])
    in_width = channels_lib.width_of(in_channels[0])
    g = grouped.groups_of(layer)
    if grouped.is_depthwise_like(layer, in_old):
      b = graph.old_width(layer) // g
      channels = in_channels[0]
      if self._mask_mode:
        own = self._own_channels(layer)
        tied = np.repeat(channels, b)
        if not np.array_equal(own, tied):
          raise ValueError(
              f'Grouped convolution {layer.name!r} has groups={g} equal to its input '
              'channels (a depthwise convolution): its output channels k*'
              f'{b}..k*{b}+{b - 1} live or die with input channel k, but the planned '
              f'masks disagree. Received: output mask {own.astype(int).tolist()}, input '
              f'mask {channels.astype(int).tolist()}.')
        return tied
      return in_width * b
    grouped.check_width(layer, in_width, 'input', self._origin)
    out = self._own_channels(layer)
    grouped.check_width(layer, channels_lib.width_of(out), 'output', self._origin)
    if self._mask_mode:
      grouped.check_mask(layer, np.asarray(out), self._origin)
      grouped.check_mask(layer, np.asarray(in_channels[0]), self._origin)
    return out

  def _split_channels(self, layer, old_inputs, in_channels, outputs):
    sizes = [graph.last_dim(t) for t in outputs]
    channels = in_channels[0]
    if isinstance(channels, np.ndarray):
      parts = np.split(channels, np.cumsum(sizes)[:-1])
    elif channels_lib.unchanged(channels, graph.last_dim(old_inputs[0])):
      parts = list(sizes)
    elif len(set(sizes)) == 1 and channels % len(sizes) == 0:
      parts = [channels // len(sizes)] * len(sizes)
    else:
      self._cannot_adapt(layer, old_inputs, in_channels,
                         'with alive counts, the new width of each slice is unknown (pass '
                         'per-channel masks)')
    empty = [i for i, p in enumerate(parts) if channels_lib.width_of(p) == 0]
    if empty:
      raise ValueError(
          f'Split {layer.name!r} ({type(layer).__name__}) would produce empty outputs '
          f'{empty}: every channel of those slices is removed. Keep at least one '
          f'channel of each slice in the {self._origin}.')
    return parts

  def _merge_channels(self, layer, old_inputs, in_channels, out_width):
    # Inputs of width 1 broadcast over the others: they do not constrain channels.
    main = [(t, c) for t, c in zip(old_inputs, in_channels)
            if graph.last_dim(t) == out_width] or list(zip(old_inputs, in_channels))
    first = main[0][1]
    for _, channels in main[1:]:
      if not _same(first, channels):
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

  def _new_layer(self, node, layer, kind, in_channels, out_channels):
    if id(layer) in self.layer_pairs:
      return self.layer_pairs[id(layer)][1]
    if not isinstance(layer, keras.layers.Layer):
      new_layer = operations.new_operation(layer, kind, out_channels)
    else:
      config = layer.get_config()
      if kind == graph.WIDTH:
        width = channels_lib.width_of(out_channels[0])
        config['units' if isinstance(layer, L.Dense) else 'filters'] = width
        self.new_widths[layer.name] = width
      elif kind == graph.GROUPED:
        in_width = channels_lib.width_of(in_channels[0])
        width = channels_lib.width_of(out_channels[0])
        depthwise_like = grouped.is_depthwise_like(
            layer, graph.last_dim(node.arguments.keras_tensors[0]))
        config = grouped.new_config(layer, config, in_width, width, depthwise_like)
        self.new_widths[layer.name] = width
      elif isinstance(layer, L.Reshape) and kind in (graph.RESHAPE, graph.FLATTEN):
        config['target_shape'] = reshape.new_target_shape(
            node, kind, channels_lib.width_of(out_channels[0]))
      try:
        new_layer = type(layer).from_config(config)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(
            f'Cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its '
            f'config: {e}. Layers must implement get_config/from_config.') from e
    self.layer_pairs[id(layer)] = (layer, new_layer)
    return new_layer


def _is_add(layer) -> bool:
  return isinstance(layer, L.Add) or (
      not isinstance(layer, keras.layers.Layer) and type(layer).__name__ == 'Add')


def _same(a, b) -> bool:
  if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
    return a.shape == b.shape and np.array_equal(a, b)
  return channels_lib.width_of(a) == channels_lib.width_of(b)
