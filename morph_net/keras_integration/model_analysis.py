"""Builds any MorphNet network regularizer from a Keras 3 model in one call.

Reached through the classmethod every network regularizer inherits:

  reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)
  reg = GroupLassoLatencyRegularizer.from_keras_model(
      model, threshold=1e-2, hardware='V100', input_shape=(1, 64, 64, 3),
      output_layers=['pool'], input_layers=['stem_relu'])

The model is traced once (`tracing.trace_model`); the regularizer is then built
with its faithful graph constructor on the traced output ops, and keeps the
trace (`reg.traced_model`) to name layers in exported structures.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import keras
from absl import logging

from morph_net.framework import errors
from morph_net.framework import function_call_op_handler
from morph_net.keras_integration import distribution
from morph_net.keras_integration import tracing


def _check_batch_norm_layers(model) -> None:
  """Warns about BatchNormalization layers MorphNet cannot regularize."""
  for layer in tracing._all_layers(model):
    if not isinstance(layer, keras.layers.BatchNormalization):
      continue
    if not layer.scale:
      logging.warning(
          'BatchNormalization layer %r has scale=False: it has no gamma, so '
          'Gamma regularizers cannot regularize the channels it normalizes; they '
          'are costed as always alive. Use scale=True (the default) or a '
          'GroupLasso regularizer.', layer.name)
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    rank = None
    try:
      rank = len(layer.input.shape)
    except (AttributeError, ValueError):
      pass
    if axis is None or (rank is not None and axis not in (-1, rank - 1)):
      logging.warning(
          'BatchNormalization layer %r normalizes axis %r, not the last axis: '
          'MorphNet analyses channels-last networks only, so this layer is not a '
          'gamma source.', layer.name, layer.axis)


def build_network_regularizer(cls, model, *args,
                              input_shape=None,
                              output_layers: Optional[Sequence[str]] = None,
                              input_layers: Optional[Sequence[str]] = None,
                              **kwargs):
  """Traces `model` and returns `cls(output_ops, *args, input_boundary=..., **kwargs)`.

  Args:
    cls: a NetworkRegularizer class (e.g. GammaFlopsRegularizer).
    model: a Keras 3 model (functional, Sequential or subclassed).
    *args: the class's arguments after `output_boundary`
      (e.g. `gamma_threshold`).
    input_shape: concrete input shape(s), batch first (None batch -> 1).
    output_layers: names of layers to start crawling from (default: outputs).
    input_layers: names of layers not to cross (and not to regularize).
    **kwargs: the class's keyword arguments (not `output_boundary` /
      `input_boundary`, which come from the layers).

  Raises:
    ValueError: the model cannot be traced, or (Gamma regularizers) it has no
      BatchNormalization layer that MorphNet can regularize.
    UnsupportedOpError: a layer of the analysed part traces into an op that
      MorphNet cannot analyse, e.g. a Conv2D with `groups > 1` (a nested
      function call); the message names the layer (`UnsupportedLayerError`).
  """
  for reserved in ('output_boundary', 'input_boundary'):
    if reserved in kwargs:
      raise TypeError(
          f'from_keras_model takes layer names, not ops: use '
          f'{"output_layers" if reserved == "output_boundary" else "input_layers"}'
          f'=[...] instead of {reserved}=. Received: {reserved}={kwargs[reserved]!r}.')
  distribution.check_supported_strategy(distribution.current_strategy(model))
  _check_batch_norm_layers(model)
  traced = tracing.trace_model(model, input_shape, output_layers=output_layers,
                               input_layers=input_layers)
  input_boundary = tracing.input_boundary_ops(traced, input_layers)
  _check_analysed_part(traced, input_layers, input_boundary)
  try:
    regularizer = cls(traced.output_ops, *args, input_boundary=input_boundary, **kwargs)
  except errors.UnsupportedOpError as e:
    raise _layer_error(traced, e.op_name, e.op_type, str(e)) from None
  regularizer._traced_model = traced
  _check_sources_found(cls, regularizer, model)
  return regularizer


class UnsupportedLayerError(errors.UnsupportedOpError):
  """A Keras layer traced into an op MorphNet cannot analyse.

  Attributes:
    layer_name: the layer's name (None if the op could not be mapped).
    op_name, op_type: the op, as in `UnsupportedOpError`.
  """

  def __init__(self, message: str, layer_name: Optional[str], op_name: str,
               op_type: str):
    # The message is complete: skip UnsupportedOpError's own formatting.
    ValueError.__init__(self, message)
    self.layer_name = layer_name
    self.op_name = op_name
    self.op_type = op_type


def _check_analysed_part(traced, input_layers, input_boundary) -> None:
  """Checks the ops between the output and the input boundary.

  Raises:
    UnsupportedLayerError: a function-call op (e.g. a nested tf.function in
      a custom layer) is in the analysed part: it hides its convolution, whose FLOPs would
      silently be missing from the cost even where no grouping reaches it.
    ValueError: the output boundary lies within the input boundary (nothing
      to analyse), or an input layer is not upstream of the output boundary
      (the analysis would silently run past it, up to the model inputs).
  """
  stop = set(input_boundary or ())
  if all(op in stop for op in traced.output_ops):
    raise ValueError(
        'Nothing to analyse: every op of the output boundary is also in the '
        'input boundary. Received: output_layers and input_layers naming the '
        f'same layers (input_layers={list(input_layers or [])!r}). Name input '
        'layers upstream of (before) the output layers.')
  to_visit = list(traced.output_ops)
  seen = set(to_visit)
  while to_visit:
    op = to_visit.pop()
    if op in stop:
      continue
    if op.type in function_call_op_handler.FUNCTION_CALL_OP_TYPES:
      raise _layer_error(traced, op.name, op.type, None)
    for tensor in op.inputs:
      if tensor.op not in seen:
        seen.add(tensor.op)
        to_visit.append(tensor.op)
  unreached = [name for name in input_layers or ()
               if not any(op in seen for op in traced.layer_output_ops[name])]
  if unreached:
    raise ValueError(
        f'input_layers {unreached} are not upstream of the output boundary '
        f'(the model outputs or output_layers), so they would stop nothing. '
        f'Received: input_layers={list(input_layers)!r}. Name layers that '
        'the outputs depend on, before the output layers.')


def _layer_error(traced, op_name: str, op_type: str,
                 original: Optional[str]) -> UnsupportedLayerError:
  """An UnsupportedLayerError naming the Keras layer that created the op."""
  try:
    op = traced.graph.get_operation_by_name(op_name)
  except (KeyError, ValueError):
    op = None
  layer = traced.layer_of(op) if op is not None else None
  if layer is None:
    where = f'An op of model {traced.model.name!r}'
    layer_name = None
  else:
    layer_name = layer.name
    groups = getattr(layer, 'groups', 1) or 1
    detail = f' with groups={groups}' if groups > 1 else ''
    where = f'Layer {layer.name!r} ({type(layer).__name__}{detail})'
  if op_type in function_call_op_handler.FUNCTION_CALL_OP_TYPES:
    message = (
        f'{where} cannot be analysed: it runs as a nested function call '
        f'(op {op_name!r} of type {op_type!r}) whose convolutions MorphNet '
        'cannot see, so its FLOPs and channels would be lost (e.g. a nested '
        'tf.function in a custom layer; grouped convolutions are traced as '
        'plain Conv2D ops). Call the ops directly instead of through a nested '
        'tf.function, or leave the layer outside the analysed part with '
        'input_layers=[...] / output_layers=[...].')
  else:
    message = f'{where} cannot be analysed. {original}'
  return UnsupportedLayerError(message, layer_name, op_name, op_type)


def _check_sources_found(cls, regularizer, model) -> None:
  manager = regularizer.op_regularizer_manager
  if manager is None or manager.ops:
    return
  family = cls.__name__
  hint = ''
  if family.startswith('Gamma'):
    hint = (' Gamma regularizers need BatchNormalization layers with scale=True '
            'after the layers to prune; for a model without them use the '
            f'GroupLasso counterpart ({family.replace("Gamma", "GroupLasso", 1)}).')
  if family.startswith('LogisticSigmoid'):
    hint = (' LogisticSigmoid regularizers need LogisticSigmoidGating layers '
            '(morph_net.probabilistic_gating.activation_gating) after the layers '
            'to prune.')
  raise ValueError(
      f'{family} found no op to regularize in model {model.name!r}: no source op '
      f'(batch norm gamma, convolution or dense kernel) is reachable from the '
      f'output boundary.{hint}')


def signature_of(cls) -> inspect.Signature:
  """The constructor signature of `cls` (used in docs and errors)."""
  return inspect.signature(cls.__init__)
