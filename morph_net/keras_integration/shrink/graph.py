"""The layer graph of a functional / Sequential model and how each layer maps channels.

Every call node gets a *kind* saying how its output channels relate to its
input channels (see the constants below); `output_width_layers` walks back
from the model outputs through the kinds that pass channels on.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import keras
from absl import logging

from morph_net.keras_integration.shrink import custom
from morph_net.keras_integration.shrink import kinds
from morph_net.keras_integration.shrink import operations
from morph_net.keras_integration.shrink import reshape
from morph_net.probabilistic_gating import activation_gating

L = keras.layers

# Layers whose output width is set by the structure (`filters` / `units`).
WIDTH_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
                L.Conv3DTranspose, L.SeparableConv1D, L.SeparableConv2D, L.Dense)
DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
SEPARABLE_LAYERS = (L.SeparableConv1D, L.SeparableConv2D)
TRANSPOSE_LAYERS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
ELEMENTWISE_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Layers known to keep their input's channels (per-channel or channel-free).
FOLLOW_LAYERS = tuple(getattr(L, name) for name in (
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

# The kinds, re-exported (see `kinds`).
WIDTH, GROUPED, DEPTHWISE, FLATTEN = kinds.WIDTH, kinds.GROUPED, kinds.DEPTHWISE, kinds.FLATTEN
RESHAPE, CONCAT, SPLIT, MERGE = kinds.RESHAPE, kinds.CONCAT, kinds.SPLIT, kinds.MERGE
FOLLOW, NESTED, CUSTOM, FIXED = kinds.FOLLOW, kinds.NESTED, kinds.CUSTOM, kinds.FIXED
PASS_KINDS = kinds.PASS_KINDS


def functional_of(model) -> Any:
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


def nodes(functional) -> List[Any]:
  """Call nodes of the functional graph in topological order."""
  nodes = []
  for depth in sorted(functional._nodes_by_depth, reverse=True):
    for node in functional._nodes_by_depth[depth]:
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


def last_dim(tensor) -> Optional[int]:
  shape = tuple(tensor.shape)
  return None if not shape else shape[-1]


def channels_last(layer) -> bool:
  return getattr(layer, 'data_format', 'channels_last') != 'channels_first'


def kind_of(layer, node) -> str:
  """How `layer` (a Layer or Operation, at `node`) maps input to output channels."""
  inputs = node.arguments.keras_tensors
  outputs = node.outputs
  if custom.rebuilder_of(layer) is not None:
    return CUSTOM
  if not isinstance(layer, keras.layers.Layer):
    return operations.kind_of_operation(layer, node)
  if is_nested_model(layer):
    return NESTED
  if not channels_last(layer):
    return FIXED
  if isinstance(layer, WIDTH_LAYERS):
    return GROUPED if (getattr(layer, 'groups', 1) or 1) > 1 else WIDTH
  if isinstance(layer, DEPTHWISE_LAYERS):
    return DEPTHWISE
  if isinstance(layer, L.Flatten):
    return FLATTEN
  if isinstance(layer, L.Reshape):
    return reshape.kind_of_reshape(node)
  if isinstance(layer, L.Concatenate):
    rank = len(outputs[0].shape)
    return CONCAT if layer.axis in (-1, rank - 1) else MERGE
  if isinstance(layer, ELEMENTWISE_MERGES):
    return MERGE
  if isinstance(layer, L.BatchNormalization):
    rank = len(outputs[0].shape)
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    return FOLLOW if axis in (-1, rank - 1, (-1,), (rank - 1,)) else FIXED
  if isinstance(layer, FOLLOW_LAYERS):
    return FOLLOW
  if isinstance(layer, activation_gating.LogisticSigmoidGating):
    # One gate (mask logit) per channel: follows its input like a BN.
    rank = len(outputs[0].shape)
    return FOLLOW if layer.axis in (-1, rank - 1) else FIXED
  if (not isinstance(layer, keras.Model) and not layer.weights and len(inputs) == 1
      and len(outputs) == 1 and last_dim(inputs[0]) == last_dim(outputs[0])
      and last_dim(inputs[0]) is not None):
    logging.log_first_n(
        logging.INFO, 'Layer %r (%s) has no weights and keeps its channel count: '
        'treated as channel-preserving.', 20, layer.name, type(layer).__name__)
    return FOLLOW
  return FIXED


def is_nested_model(layer) -> bool:
  """Whether `layer` is a functional or (built) Sequential model used as a layer."""
  if not isinstance(layer, keras.Model):
    return False
  if isinstance(layer, keras.Sequential):
    return getattr(layer, '_functional', None) is not None
  return hasattr(layer, '_nodes_by_depth')


def old_width(layer) -> int:
  return int(layer.units if isinstance(layer, L.Dense) else layer.filters)


def layer_kinds(node_list) -> Dict[int, str]:
  """id(layer) -> kind, for the nodes given and (recursively) nested models."""
  kinds = {}
  for node in node_list:
    layer = node.operation
    if id(layer) in kinds:
      continue
    kinds[id(layer)] = kind_of(layer, node)
    if kinds[id(layer)] == NESTED:
      kinds.update(layer_kinds(nodes(functional_of(layer))))
  return kinds


def all_layers(functional) -> List[Any]:
  """Layers of `functional` and of its nested models (depth first), not ops."""
  layers = []
  for layer in functional.layers:
    layers.append(layer)
    if is_nested_model(layer):
      layers.extend(all_layers(functional_of(layer)))
  return layers


def output_width_layers(functional, kinds) -> set:
  """Width layers whose output channels are the outputs of `functional`."""
  found, seen = set(), set()
  # (tensor, {id(inner input tensor): outer tensor} of the enclosing nested calls)
  stack = [(t, {}) for t in functional.outputs]
  while stack:
    tensor, outer = stack.pop()
    if id(tensor) in seen:
      continue
    seen.add(id(tensor))
    if id(tensor) in outer:
      stack.append((outer[id(tensor)], outer))
      continue
    history = getattr(tensor, '_keras_history', None)
    layer = None if history is None else history.operation
    kind = None if layer is None else kinds.get(id(layer))
    if kind in (WIDTH, GROUPED):
      found.add(layer.name)
    elif kind in PASS_KINDS or kind == NESTED:
      node = layer._inbound_nodes[history.node_index]
      arguments = list(node.arguments.keras_tensors)
      if kind == NESTED:
        inner = functional_of(layer)
        mapping = dict(outer)
        mapping.update({id(t): a for t, a in zip(inner.inputs, arguments)})
        stack.append((inner.outputs[history.tensor_index], mapping))
      else:
        stack.extend((t, outer) for t in arguments)
  return found
