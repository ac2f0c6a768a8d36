"""Builds the Keras model that a learned structure describes.

`shrink_model(model, structure)` rebuilds a functional or Sequential model layer
by layer, keeping its topology and layer names, with each *width layer* set to
the width the structure gives it:

  Conv1D/2D/3D, Conv1D/2D/3DTranspose, SeparableConv1D/2D -> `filters`
  (for a separable conv: its pointwise part), Dense -> `units`.

Every other layer is rebuilt from its config and adapts to its input:
BatchNormalization, activations, pooling, padding, dropout, ... keep their
input width; DepthwiseConv1D/2D (and the depthwise part of a separable conv)
outputs `C_in * depth_multiplier` channels: its depth multiplier is kept and its
width follows its input, so a `<layer>/depthwise` key of a structure is
accepted and ignored; Concatenate (channel axis) sums its inputs; Flatten
multiplies by the number of spatial positions. Layers whose config fixes a
shape (Reshape, Permute, nested models, unknown layers holding weights) must
see an unchanged input width, else a ValueError names them. Width layers not
in the structure keep their width, and so do the width layers that produce the
model's outputs (e.g. the classifier: `output_width_layers`).

Structures (see `structure_io`): a `{layer name: alive count}` dict or JSON
file (as exported by `MorphNetCallback`), a `{layer name: bool mask}` dict, or
a trained network regularizer built with `from_keras_model`, whose per-channel
alive masks are read (`channel_masks`).

Topology morphing (the paper's rules; the original `configurable_ops` rules for
vanished layers): a width layer given width 0 vanishes, and so does everything
fed only by it. A vanished input of a residual `Add` is dropped (`Add` of
[skip, dead branch] -> skip; the `Add` layer disappears when one input is
left); a vanished input of a channel `Concatenate` is dropped likewise. A
vanished tensor that reaches any other layer with several inputs, or a model
output, is an error naming the layer(s) set to 0: in a plain chain width 0
would disconnect the network.

Masks: with per-channel masks the channels of inputs of an element-wise merge
(`Add`, `Multiply`, ... which must have equal widths) are unified: a channel is
kept when any of the merged tensors keeps it (OR), as MorphNet's grouping
does. With counts, merged widths must already be equal.

Weight transfer (`transfer_weights=True`, masks needed): each kept layer gets
the old weights of its surviving channels: kernels are sliced along their
output axis by the layer's own mask and along their input axis by the mask of
its input (masks are propagated through the graph: per-channel layers keep
them, Concatenate concatenates them, depthwise repeats each input channel
`depth_multiplier` times, Flatten tiles them over the spatial positions);
biases and BatchNormalization parameters / statistics are sliced by the output
mask. If the removed channels contribute exactly nothing (e.g. BN gamma and
beta 0 followed by ReLU), the reduced model computes the same outputs as the
original in inference mode.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import keras
import numpy as np
from absl import logging

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import constant_folding
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import structure_io
from morph_net.probabilistic_gating import activation_gating

L = keras.layers

# Layers whose output width is set by the structure (`filters` / `units`).
WIDTH_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
                L.Conv3DTranspose, L.SeparableConv1D, L.SeparableConv2D, L.Dense)
DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE_LAYERS = (L.SeparableConv1D, L.SeparableConv2D)
_TRANSPOSE_LAYERS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_ELEMENTWISE_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Layers known to keep their input's channels (per-channel or channel-free).
_FOLLOW_LAYERS = tuple(getattr(L, name) for name in (
    'BatchNormalization', 'LayerNormalization', 'UnitNormalization', 'Activation', 'ReLU',
    'LeakyReLU', 'PReLU', 'ELU', 'Softmax', 'Dropout', 'SpatialDropout1D',
    'SpatialDropout2D', 'SpatialDropout3D', 'GaussianNoise', 'GaussianDropout',
    'AlphaDropout', 'ActivityRegularization', 'Identity', 'Masking', 'MaxPooling1D',
    'MaxPooling2D', 'MaxPooling3D', 'AveragePooling1D', 'AveragePooling2D',
    'AveragePooling3D', 'GlobalAveragePooling1D', 'GlobalAveragePooling2D',
    'GlobalAveragePooling3D', 'GlobalMaxPooling1D', 'GlobalMaxPooling2D',
    'GlobalMaxPooling3D', 'ZeroPadding1D', 'ZeroPadding2D', 'ZeroPadding3D',
    'Cropping1D', 'Cropping2D', 'Cropping3D', 'UpSampling1D', 'UpSampling2D',
    'UpSampling3D') if hasattr(L, name))

# Layer kinds (how the output channels relate to the input channels).
_WIDTH = 'width'            # output width from the structure
_DEPTHWISE = 'depthwise'    # C_in * depth_multiplier
_FLATTEN = 'flatten'        # C_in * spatial positions
_CONCAT = 'concat'          # channel concatenation
_MERGE = 'merge'            # element-wise merge: inputs share channels
_FOLLOW = 'follow'          # same channels as the input
_FIXED = 'fixed'            # needs an unchanged input; output unchanged

StructureLike = Union[str, 'os.PathLike[str]', Mapping[str, Any],
                      generic_regularizers.NetworkRegularizer]
# A channel descriptor: a bool mask over the original channels, or a width.
_Channels = Union[np.ndarray, int]


def channel_masks(network_regularizer: generic_regularizers.NetworkRegularizer
                  ) -> Dict[str, np.ndarray]:
  """Per-channel alive masks of a trained regularizer, keyed by layer name.

  Args:
    network_regularizer: a regularizer built with `from_keras_model`. Its alive
      vectors are evaluated now (eagerly) from the current variables.

  Returns:
    `{layer name: bool array}` with the keys of `LayerStructureExporter`
    (depthwise parts under `<layer>/depthwise`).

  Raises:
    ValueError: the regularizer was not built with `from_keras_model`.
  """
  traced = getattr(network_regularizer, 'traced_model', None)
  if traced is None:
    raise ValueError(
        'Per-channel masks by layer name need a regularizer built with '
        f'from_keras_model(...). Received: {type(network_regularizer).__name__} '
        'built from graph ops.')
  exporter = layer_structure.LayerStructureExporter(network_regularizer)
  manager = network_regularizer.op_regularizer_manager
  masks = {}
  for key, op_name in exporter.op_names.items():
    op = traced.graph.get_operation_by_name(op_name)
    regularizer = manager.get_regularizer(op)
    masks[key] = np.asarray(regularizer.alive_vector).astype(bool).reshape(-1)
  return masks


def shrink_model(model: keras.Model, structure: StructureLike, *,
                 transfer_weights: bool = False,
                 name: Optional[str] = None) -> keras.Model:
  """Rebuilds `model` with the widths of `structure` (see the module doc).

  Example:
    reduced = shrink_model(model, 'train_dir/learned_structure/alive_1000')
    pruned = shrink_model(model, regularizer, transfer_weights=True)

  Args:
    model: a functional or Sequential Keras model (channels-last).
    structure: a `{layer name: alive count}` or `{layer name: bool mask}`
      dict, the path of such a JSON file, or a network regularizer built with
      `from_keras_model` on `model` (its alive masks are used). Width layers
      absent from it keep their width; counts may also exceed the original
      widths (this is how `expand` widens a model).
    transfer_weights: copy the surviving channels' weights into the new model.
      Needs masks (a regularizer or a mask dict). Defaults to False: the new
      model has freshly initialized weights.
    name: name of the new model. Defaults to `model.name`.

  Returns:
    A new, built Keras model of the same class (functional or Sequential), with
    the same layer names except for removed layers.

  Raises:
    TypeError: `model` is not a functional/Sequential Keras model, or the
      structure has a wrong type.
    ValueError: the structure names a layer that is not in the model or whose
      width cannot be set, a mask has the wrong length, a layer set to width 0
      cannot be removed (plain chain), widths of an element-wise merge differ,
      a layer cannot adapt to its new input width, or `transfer_weights` is
      requested without masks.
    OSError: a structure file cannot be read.
  """
  return rebuild(model, structure, transfer_weights=transfer_weights, name=name).model


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


class _UnionFind:
  """Channel classes: channels that must live or die together."""

  def __init__(self):
    self._parent: List[int] = []
    self._alive: List[bool] = []

  def fresh(self, alive: np.ndarray) -> np.ndarray:
    start = len(self._parent)
    self._parent.extend(range(start, start + len(alive)))
    self._alive.extend(bool(a) for a in alive)
    return np.arange(start, start + len(alive))

  def find(self, i: int) -> int:
    root = i
    while self._parent[root] != root:
      root = self._parent[root]
    while self._parent[i] != root:
      self._parent[i], i = root, self._parent[i]
    return root

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self._parent[rb] = ra
      self._alive[ra] = self._alive[ra] or self._alive[rb]

  def alive(self, ids: np.ndarray) -> np.ndarray:
    return np.array([self._alive[self.find(int(i))] for i in ids], dtype=bool)


# ----------------------------------------------------------------------------
# Graph access.


def _functional_of(model) -> Any:
  """The Functional graph of `model` (a Sequential's inner functional)."""
  if not isinstance(model, keras.Model):
    raise TypeError(
        'shrink_model needs a Keras functional or Sequential model. Received: '
        f'{type(model).__name__}.')
  if isinstance(model, keras.Sequential):
    functional = getattr(model, '_functional', None)
    if functional is None:
      raise ValueError(
          f'Sequential model {model.name!r} is not built: it has no input shape, '
          'so its layers cannot be rebuilt. Start it with keras.Input(shape) or '
          'call model.build(input_shape) first.')
    return functional
  if not hasattr(model, '_nodes_by_depth'):
    raise TypeError(
        f'shrink_model needs a functional or Sequential model; {model.name!r} is a '
        f'subclassed model ({type(model).__name__}), whose layer graph is not '
        'known. Rebuild it with the new widths in its own code (alive counts are in '
        'the structure).')
  return model


def _nodes(functional) -> List[Any]:
  """Call nodes of the functional graph in topological order."""
  nodes = []
  for depth in sorted(functional._nodes_by_depth, reverse=True):
    for node in functional._nodes_by_depth[depth]:
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


def _last_dim(tensor) -> Optional[int]:
  shape = tuple(tensor.shape)
  return None if not shape else shape[-1]


def _channels_last(layer) -> bool:
  return getattr(layer, 'data_format', 'channels_last') != 'channels_first'


def _kind(layer, node) -> str:
  """How `layer` (at `node`) maps input channels to output channels."""
  inputs = node.arguments.keras_tensors
  outputs = node.outputs
  if not _channels_last(layer):
    return _FIXED
  if isinstance(layer, WIDTH_LAYERS):
    return _WIDTH
  if isinstance(layer, DEPTHWISE_LAYERS):
    return _DEPTHWISE
  if isinstance(layer, L.Flatten):
    return _FLATTEN
  if isinstance(layer, L.Concatenate):
    rank = len(outputs[0].shape)
    return _CONCAT if layer.axis in (-1, rank - 1) else _MERGE
  if isinstance(layer, _ELEMENTWISE_MERGES):
    return _MERGE
  if isinstance(layer, L.BatchNormalization):
    rank = len(outputs[0].shape)
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    return _FOLLOW if axis in (-1, rank - 1, (-1,), (rank - 1,)) else _FIXED
  if isinstance(layer, _FOLLOW_LAYERS):
    return _FOLLOW
  if isinstance(layer, activation_gating.LogisticSigmoidGating):
    # One gate (mask logit) per channel: follows its input like a BN.
    rank = len(outputs[0].shape)
    return _FOLLOW if layer.axis in (-1, rank - 1) else _FIXED
  if (not isinstance(layer, keras.Model) and not layer.weights and len(inputs) == 1
      and len(outputs) == 1 and _last_dim(inputs[0]) == _last_dim(outputs[0])
      and _last_dim(inputs[0]) is not None):
    logging.log_first_n(
        logging.INFO, 'Layer %r (%s) has no weights and keeps its channel count: '
        'treated as channel-preserving.', 20, layer.name, type(layer).__name__)
    return _FOLLOW
  return _FIXED


def _old_width(layer) -> int:
  return int(layer.units if isinstance(layer, L.Dense) else layer.filters)


# ----------------------------------------------------------------------------
# Structure resolution and checks.


def _resolve_structure(model, structure) -> Tuple[Dict[str, Any], str]:
  if isinstance(structure, generic_regularizers.NetworkRegularizer):
    return structure_io.load_structure(channel_masks(structure)), (
        f'structure of {type(structure).__name__}')
  if isinstance(structure, (str, os.PathLike, Mapping)):
    return structure_io.load_structure(structure), structure_io.describe_source(structure)
  raise TypeError(
      'structure must be a dict {layer name: width or mask}, the path of a '
      'structure JSON file, or a network regularizer built with '
      f'from_keras_model. Received: structure of type {type(structure).__name__}.')


def output_width_layers(model: keras.Model) -> List[str]:
  """Names of the width layers whose channels are the model's output channels.

  Their width is the model's output size (e.g. the classes of a classifier), so
  `shrink_model` keeps it (a structure entry for them is ignored with a
  warning; GroupLasso regularizers export the classifier too) and `expand`
  does not scale it. Found by walking back from the outputs through layers
  that keep, merge or concatenate channels.
  """
  functional = _functional_of(model)
  return sorted(_output_width_layers(functional, _layer_kinds(_nodes(functional))))


def _layer_kinds(nodes) -> Dict[int, str]:
  kinds = {}
  for node in nodes:
    kinds.setdefault(id(node.operation), _kind(node.operation, node))
  return kinds


def _output_width_layers(functional, kinds) -> set:
  found, seen = set(), set()
  stack = list(functional.outputs)
  while stack:
    tensor = stack.pop()
    if id(tensor) in seen:
      continue
    seen.add(id(tensor))
    history = getattr(tensor, '_keras_history', None)
    layer = None if history is None else history.operation
    kind = None if layer is None else kinds.get(id(layer))
    if kind == _WIDTH:
      found.add(layer.name)
    elif kind in (_FOLLOW, _MERGE, _CONCAT, _DEPTHWISE):
      node = layer._inbound_nodes[history.node_index]
      stack.extend(node.arguments.keras_tensors)
  return found


def _check_structure(model, functional, structure, origin, kinds) -> Dict[str, Any]:
  """Checks keys and mask lengths; returns the width entries (no depthwise keys)."""
  layers = {layer.name: layer for layer in functional.layers}
  pinned = _output_width_layers(functional, kinds)
  unknown, widths = [], {}
  for key, value in structure.items():
    if key.endswith(structure_io.DEPTHWISE_SUFFIX) and key not in layers:
      base = key[:-len(structure_io.DEPTHWISE_SUFFIX)]
      layer = layers.get(base)
      if layer is None:
        unknown.append(key)
      elif not isinstance(layer, DEPTHWISE_LAYERS + _SEPARABLE_LAYERS):
        raise ValueError(
            f'The {origin} has key {key!r}, but layer {base!r} is a '
            f'{type(layer).__name__}, which has no depthwise part. Only '
            'DepthwiseConv1D/2D and SeparableConv1D/2D layers have '
            f'"<name>{structure_io.DEPTHWISE_SUFFIX}" keys.')
      continue  # A depthwise width follows its input: nothing to set.
    layer = layers.get(key)
    if layer is None:
      unknown.append(key)
      continue
    if kinds.get(id(layer)) != _WIDTH:
      hint = ''
      if isinstance(layer, DEPTHWISE_LAYERS):
        hint = (' Its width is C_in * depth_multiplier and follows its input; key '
                f'{key + structure_io.DEPTHWISE_SUFFIX!r} is accepted (and ignored).')
      elif not _channels_last(layer):
        hint = ' Only channels_last layers can be resized.'
      raise ValueError(
          f'The {origin} sets a width for layer {key!r}, a {type(layer).__name__}, '
          'whose output width cannot be set: only Conv*, Conv*Transpose, '
          f'SeparableConv* (filters) and Dense (units) layers take widths.{hint}')
    if isinstance(value, np.ndarray) and len(value) != _old_width(layer):
      raise ValueError(
          f'The mask of layer {key!r} in the {origin} has {len(value)} entries, but '
          f'the layer has {_old_width(layer)} channels. Masks must come from the '
          'same model.')
    if key in pinned:
      if not _unchanged(value, _old_width(layer)):
        logging.warning(
            'Layer %r produces the output of model %r: its width stays %d (the %s '
            'gives %d).', key, model.name, _old_width(layer), origin, _width_of(value))
      continue
    widths[key] = value
  if unknown:
    raise ValueError(_unknown_layers_message(model, functional, unknown, origin))
  return widths


def _unknown_layers_message(model, functional, unknown, origin) -> str:
  names = [layer.name for layer in functional.layers]
  message = (f'The {origin} names {len(unknown)} layer(s) that are not in model '
             f'{model.name!r}: {sorted(unknown)[:10]}. Layers of the model: '
             f'{names[:30]}{" ..." if len(names) > 30 else ""}.')
  nested = {}
  for layer in functional.layers:
    if isinstance(layer, keras.Model):
      for inner in layer._flatten_layers(include_self=False, recursive=True):
        nested[inner.name] = layer.name
  inside = [k for k in unknown if k in nested]
  if inside:
    message += (f' {inside[:5]} are layers of nested model(s) '
                f'{sorted({nested[k] for k in inside})}: resizing layers inside a nested '
                'model is not supported; flatten the model first.')
  elif any('/' in k for k in unknown):
    message += (' Keys must be Keras layer names (export with key_by="layer"), not '
                'graph op names.')
  return message


# ----------------------------------------------------------------------------
# Mask planning (union of channels that must live or die together).


def _plan_masks(functional, nodes, kinds, masks) -> Dict[int, np.ndarray]:
  """Final alive mask of every width layer (id(layer) -> mask), with OR grouping."""
  uf = _UnionFind()
  ids: Dict[int, np.ndarray] = {}
  for tensor in functional.inputs:
    ids[id(tensor)] = uf.fresh(np.ones(_last_dim(tensor) or 0, dtype=bool))
  layer_ids: Dict[int, np.ndarray] = {}
  for node in nodes:
    layer = node.operation
    kind = kinds[id(layer)]
    inputs = [ids[id(t)] for t in node.arguments.keras_tensors]
    outputs = node.outputs
    width = _last_dim(outputs[0]) or 0
    out = None
    if kind == _WIDTH:
      if id(layer) not in layer_ids:
        alive = masks.get(layer.name)
        layer_ids[id(layer)] = uf.fresh(
            np.ones(width, dtype=bool) if alive is None else alive)
      out = layer_ids[id(layer)]
    elif kind == _DEPTHWISE:
      out = np.repeat(inputs[0], layer.depth_multiplier)
    elif kind == _FLATTEN:
      spatial = _spatial_positions(node.arguments.keras_tensors[0])
      if spatial is not None:
        out = np.tile(inputs[0], spatial)
    elif kind == _CONCAT:
      out = np.concatenate(inputs)
    elif kind == _MERGE:
      main = [x for x in inputs if len(x) == width]
      for other in main[1:]:
        for a, b in zip(main[0], other):
          uf.union(int(a), int(b))
      out = main[0] if main else None
    elif kind == _FOLLOW and inputs and len(inputs[0]) == width:
      out = inputs[0]
    if out is None or len(out) != width or len(outputs) > 1:
      for tensor in outputs:
        ids[id(tensor)] = uf.fresh(np.ones(_last_dim(tensor) or 0, dtype=bool))
    else:
      ids[id(outputs[0])] = out
  return {key: uf.alive(value) for key, value in layer_ids.items()}


def _spatial_positions(tensor) -> Optional[int]:
  dims = tuple(tensor.shape)[1:-1]
  if any(d is None for d in dims):
    return None
  return int(math.prod(dims))


# ----------------------------------------------------------------------------
# Channel descriptors: masks (bool arrays over the original channels) or widths.


def _width_of(channels: _Channels) -> int:
  if isinstance(channels, np.ndarray):
    return int(np.count_nonzero(channels))
  return int(channels)


def _unchanged(channels: _Channels, old_width: Optional[int]) -> bool:
  if isinstance(channels, np.ndarray):
    return len(channels) == old_width and bool(channels.all())
  return channels == old_width


def _full(width: Optional[int], mask_mode: bool) -> _Channels:
  width = width or 0
  return np.ones(width, dtype=bool) if mask_mode else width


def _empty(width: Optional[int], mask_mode: bool) -> _Channels:
  return np.zeros(width or 0, dtype=bool) if mask_mode else 0


def _describe(channels: _Channels) -> str:
  return str(_width_of(channels))


# ----------------------------------------------------------------------------
# The rebuild.


def rebuild(model: keras.Model, structure: StructureLike, *, transfer_weights: bool = False,
            name: Optional[str] = None) -> RebuildResult:
  """`shrink_model`, also reporting the new widths and the removed layers.

  Args and Raises: as `shrink_model`.

  Returns:
    A RebuildResult.
  """
  functional = _functional_of(model)
  nodes = _nodes(functional)
  kinds = _layer_kinds(nodes)
  entries, origin = _resolve_structure(model, structure)
  widths = _check_structure(model, functional, entries, origin, kinds)
  mask_mode = structure_io.is_mask_structure(entries)
  if transfer_weights and not mask_mode:
    raise ValueError(
        'transfer_weights=True needs per-channel masks (which channels survive), '
        f'but the {origin} holds alive counts only. Pass the trained network '
        'regularizer (or a {layer name: bool mask} dict) as the structure, or use '
        'transfer_weights=False.')
  final_masks = _plan_masks(functional, nodes, kinds, widths) if mask_mode else {}
  builder = _Builder(model, functional, kinds, widths, final_masks, mask_mode, origin)
  new_model = builder.build(name or model.name)
  if transfer_weights:
    for layer_id, (old_layer, new_layer) in builder.layer_pairs.items():
      in_mask, out_mask = builder.layer_masks[layer_id]
      _transfer_layer(old_layer, new_layer, in_mask, out_mask)
    constant_folding.fold_removed_constants(model, new_model, final_masks)
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
    self._channels: Dict[int, _Channels] = {}  # id(old tensor) -> descriptor
    self.layer_pairs: Dict[int, Tuple[Any, Any]] = {}
    self.layer_masks: Dict[int, Tuple[_Channels, _Channels]] = {}
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
      self._channels[id(tensor)] = _full(_last_dim(tensor), self._mask_mode)
    for node in _nodes(self._functional):
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
    if kind == _WIDTH and _width_of(out_channels[0]) == 0:
      self._vanish(node, (layer.name,))
      return
    new_layer = self._new_layer(layer, kind, out_channels)
    args, kwargs = node.arguments.fill_in(self._values)
    outputs = keras.tree.flatten(new_layer(*args, **kwargs))
    self._record(node, layer, new_layer, in_channels, out_channels, outputs)

  def _visit_with_vanished(self, node, layer, kind, old_inputs, values, vanished):
    origins = tuple(dict.fromkeys(o for v in vanished for o in v.origins))
    absorbs = (kind == _CONCAT) or (kind == _MERGE and isinstance(layer, L.Add))
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
    if kind == _CONCAT:
      parts = [self._channels[id(t)] if not isinstance(v, _Vanished)
               else _empty(_last_dim(t), self._mask_mode)
               for t, v in zip(old_inputs, values)]
      out_channels = (np.concatenate(parts) if self._mask_mode
                      else sum(_width_of(p) for p in parts))
    else:
      out_channels = self._merge_channels(
          layer, [t for t, _ in survivors], [self._channels[id(t)] for t, _ in survivors],
          _last_dim(out_tensor))
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
      expected = _width_of(channels)
      if _last_dim(new) != expected:
        raise ValueError(
            f'Layer {layer.name!r} ({type(layer).__name__}) produced {_last_dim(new)} '
            f'channels where {expected} were expected; it cannot be resized this way.')
      self._values[id(old)] = new
      self._channels[id(old)] = channels
    if id(layer) not in self.layer_masks:
      self.layer_masks[id(layer)] = (in_channels[0] if in_channels else None,
                                     out_channels[0])

  # -- channel rules ----------------------------------------------------------

  def _output_channels(self, node, layer, kind, old_inputs, in_channels) -> List[_Channels]:
    outputs = node.outputs
    if kind == _WIDTH:
      if id(layer) in self._final_masks:
        out = self._final_masks[id(layer)]
      else:
        out = self._widths.get(layer.name, _old_width(layer))
        if isinstance(out, np.ndarray):  # Mask mode without a plan cannot happen.
          out = _width_of(out)
      groups = getattr(layer, 'groups', 1) or 1
      if groups != 1 and not (_unchanged(in_channels[0], _last_dim(old_inputs[0]))
                              and _unchanged(out, _old_width(layer))):
        raise ValueError(
            f'Layer {layer.name!r} is a grouped convolution (groups={groups}); '
            'changing its input or output width is not supported. Leave it out of '
            f'the {self._origin} and keep the layers before it unchanged.')
      return [out]
    if kind == _DEPTHWISE:
      channels = in_channels[0]
      m = int(layer.depth_multiplier)
      return [np.repeat(channels, m) if isinstance(channels, np.ndarray) else channels * m]
    if kind == _FLATTEN:
      channels = in_channels[0]
      if _unchanged(channels, _last_dim(old_inputs[0])):
        return [_full(_last_dim(outputs[0]), self._mask_mode)]
      spatial = _spatial_positions(old_inputs[0])
      if spatial is None:
        self._cannot_adapt(layer, old_inputs, in_channels, 'its input has unknown '
                           'spatial dimensions')
      return [np.tile(channels, spatial) if isinstance(channels, np.ndarray)
              else channels * spatial]
    if kind == _CONCAT:
      if self._mask_mode:
        return [np.concatenate(in_channels)]
      return [sum(_width_of(c) for c in in_channels)]
    if kind == _MERGE:
      return [self._merge_channels(layer, old_inputs, in_channels, _last_dim(outputs[0]))]
    if kind == _FOLLOW:
      return [in_channels[0]]
    # _FIXED: the layer must see what it saw before.
    for tensor, channels in zip(old_inputs, in_channels):
      if not _unchanged(channels, _last_dim(tensor)):
        self._cannot_adapt(layer, old_inputs, in_channels, 'its config fixes its shapes '
                           'or it is not a layer whose channels MorphNet can follow')
    return [_full(_last_dim(t), self._mask_mode) for t in outputs]

  def _merge_channels(self, layer, old_inputs, in_channels, out_width) -> _Channels:
    # Inputs of width 1 broadcast over the others: they do not constrain channels.
    main = [(t, c) for t, c in zip(old_inputs, in_channels)
            if _last_dim(t) == out_width] or list(zip(old_inputs, in_channels))
    first = main[0][1]
    for _, channels in main[1:]:
      same = (np.array_equal(first, channels) if self._mask_mode
              else _width_of(first) == _width_of(channels))
      if not same:
        widths = [_describe(c) for _, c in main]
        raise ValueError(
            f'{type(layer).__name__} layer {layer.name!r} merges inputs that would '
            f'get different widths {widths}; its inputs must keep the same channels '
            '(they form one group). Give the layers feeding it the same width in the '
            f'{self._origin}.')
    return first

  def _cannot_adapt(self, layer, old_inputs, in_channels, reason):
    before = [_last_dim(t) for t in old_inputs]
    after = [_width_of(c) for c in in_channels]
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
      if kind == _WIDTH:
        width = _width_of(out_channels[0])
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


# ----------------------------------------------------------------------------
# Weight transfer.


def _transfer_layer(old_layer, new_layer, in_mask, out_mask) -> None:
  """Copies the surviving channels' weights of `old_layer` into `new_layer`."""
  old_values = [np.asarray(v) for v in old_layer.get_weights()]
  if not old_values:
    return
  new_shapes = [tuple(w.shape) for w in new_layer.weights]
  names = [w.name.split('/')[-1] for w in old_layer.weights]
  if in_mask is not None and not isinstance(in_mask, np.ndarray):
    in_mask = None
  values = []
  for name, value, shape in zip(names, old_values, new_shapes):
    sliced = _slice_weight(old_layer, name, value, in_mask, out_mask)
    if tuple(sliced.shape) != shape:
      raise ValueError(
          f'Cannot transfer weight {name!r} of layer {old_layer.name!r} '
          f'({type(old_layer).__name__}): the surviving channels give shape '
          f'{tuple(sliced.shape)}, the new layer expects {shape}.')
    values.append(sliced)
  new_layer.set_weights(values)


def _slice_weight(layer, name, value, in_mask, out_mask) -> np.ndarray:
  if isinstance(layer, _SEPARABLE_LAYERS):
    m = int(layer.depth_multiplier)
    if name == 'depthwise_kernel':
      return _take(value, -2, in_mask)
    if name == 'pointwise_kernel':
      mid = None if in_mask is None else np.repeat(in_mask, m)
      return _take(_take(value, -2, mid), -1, out_mask)
    return _take(value, -1, out_mask)
  if isinstance(layer, DEPTHWISE_LAYERS):
    if name == 'kernel':
      return _take(value, -2, in_mask)
    if in_mask is None:
      return value
    m = int(layer.depth_multiplier)
    return value.reshape(-1, m)[in_mask].reshape(-1)
  if isinstance(layer, _TRANSPOSE_LAYERS):
    if name == 'kernel':  # (*k, out, in)
      return _take(_take(value, -2, out_mask), -1, in_mask)
    return _take(value, -1, out_mask)
  if isinstance(layer, WIDTH_LAYERS):
    if name == 'kernel':  # (*k, in, out) or (in, out)
      return _take(_take(value, -2, in_mask), -1, out_mask)
    return _take(value, -1, out_mask)
  # Per-channel layers (BatchNormalization, PReLU, ...): last axis = channels.
  if (isinstance(out_mask, np.ndarray) and value.ndim >= 1
      and value.shape[-1] == len(out_mask)):
    return value[..., out_mask]
  return value


def _take(value: np.ndarray, axis: int, mask) -> np.ndarray:
  if mask is None or not isinstance(mask, np.ndarray):
    return value
  if value.shape[axis] != len(mask):
    return value  # Shape checked by the caller against the new layer.
  return np.compress(mask, value, axis=axis)
