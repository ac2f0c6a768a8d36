"""Structure resolution (dict, JSON file or regularizer) and checks against a model."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np
from absl import logging

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import structure_io
from morph_net.keras_integration.shrink import channels as channels_lib
from morph_net.keras_integration.shrink import custom
from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink import grouped

StructureLike = Union[str, 'os.PathLike[str]', Mapping[str, Any],
                      generic_regularizers.NetworkRegularizer]


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

def resolve(model, structure) -> Tuple[Dict[str, Any], str]:
  if isinstance(structure, generic_regularizers.NetworkRegularizer):
    return structure_io.load_structure(channel_masks(structure)), (
        f'structure of {type(structure).__name__}')
  if isinstance(structure, (str, os.PathLike, Mapping)):
    return structure_io.load_structure(structure), structure_io.describe_source(structure)
  raise TypeError(
      'structure must be a dict {layer name: width or mask}, the path of a '
      'structure JSON file, or a network regularizer built with '
      f'from_keras_model. Received: structure of type {type(structure).__name__}.')

def check(model, functional, structure, origin, kinds) -> Dict[str, Any]:
  """Checks keys and mask lengths; returns the width entries (no depthwise keys).

  Keys may name layers of nested functional / Sequential models, and inner
  layers of custom layers whose class has a registered rebuild function
  (`custom.register_layer_rebuilder`); an inner layer of any other custom
  layer is an error naming that layer and the hook.
  """
  all_layers = graph.all_layers(functional)
  layers = {layer.name: layer for layer in all_layers}
  owners = {}
  for layer in all_layers:
    if graph.is_nested_model(layer):
      continue
    for inner in custom.inner_layers(layer):
      owners.setdefault(inner.name, layer)
  pinned = graph.output_width_layers(functional, kinds)
  unknown, widths = [], {}
  for key, value in structure.items():
    if key not in layers and key in owners:
      owner = owners[key]
      inner = next(x for x in custom.inner_layers(owner) if x.name == key)
      if custom.rebuilder_of(owner) is None and not (
          isinstance(inner, graph.WIDTH_LAYERS)
          and channels_lib.unchanged(value, graph.old_width(inner))):
        raise ValueError(
            f'The {origin} sets a width for layer {key!r}, which is inside layer '
            f'{owner.name!r} ({type(owner).__name__}), a custom layer: shrink_model '
            f'does not know how its config maps to its sublayers. '
            f'{custom.hook_hint(owner)}')
      if custom.rebuilder_of(owner) is not None:
        widths[key] = value
      continue
    if key.endswith(structure_io.DEPTHWISE_SUFFIX) and key not in layers:
      base = key[:-len(structure_io.DEPTHWISE_SUFFIX)]
      layer = layers.get(base)
      if layer is None:
        if base in owners:
          continue  # The depthwise part of an inner layer: follows its input.
        unknown.append(key)
      elif not isinstance(layer, graph.DEPTHWISE_LAYERS + graph.SEPARABLE_LAYERS):
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
    kind = kinds.get(id(layer))
    if kind not in (graph.WIDTH, graph.GROUPED):
      hint = ''
      if isinstance(layer, graph.DEPTHWISE_LAYERS):
        hint = (' Its width is C_in * depth_multiplier and follows its input; key '
                f'{key + structure_io.DEPTHWISE_SUFFIX!r} is accepted (and ignored).')
      elif not graph.channels_last(layer):
        hint = ' Only channels_last layers can be resized.'
      raise ValueError(
          f'The {origin} sets a width for layer {key!r}, a {type(layer).__name__}, '
          'whose output width cannot be set: only Conv*, Conv*Transpose, '
          f'SeparableConv* (filters) and Dense (units) layers take widths.{hint}')
    if isinstance(value, np.ndarray) and len(value) != graph.old_width(layer):
      raise ValueError(
          f'The mask of layer {key!r} in the {origin} has {len(value)} entries, but '
          f'the layer has {graph.old_width(layer)} channels. Masks must come from the '
          'same model.')
    if kind == graph.GROUPED:
      in_width = tuple(layer._inbound_nodes[0].arguments.keras_tensors[0].shape)[-1]
      if not grouped.is_depthwise_like(layer, in_width):
        if isinstance(value, np.ndarray):
          grouped.check_mask(layer, value, origin)
        else:
          grouped.check_width(layer, int(value), 'output', origin)
    if key in pinned:
      if not channels_lib.unchanged(value, graph.old_width(layer)):
        logging.warning(
            'Layer %r produces the output of model %r: its width stays %d (the %s '
            'gives %d).', key, model.name, graph.old_width(layer), origin,
            channels_lib.width_of(value))
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
  if any('/' in k for k in unknown):
    message += (' Keys must be Keras layer names (export with key_by="layer"), not '
                'graph op names.')
  return message
