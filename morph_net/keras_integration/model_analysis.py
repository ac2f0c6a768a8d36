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
  """
  for reserved in ('output_boundary', 'input_boundary'):
    if reserved in kwargs:
      raise TypeError(
          f'from_keras_model takes layer names, not ops: use '
          f'{"output_layers" if reserved == "output_boundary" else "input_layers"}'
          f'=[...] instead of {reserved}=. Received: {reserved}={kwargs[reserved]!r}.')
  _check_batch_norm_layers(model)
  traced = tracing.trace_model(model, input_shape, output_layers=output_layers,
                               input_layers=input_layers)
  input_boundary = tracing.input_boundary_ops(traced, input_layers)
  regularizer = cls(traced.output_ops, *args, input_boundary=input_boundary, **kwargs)
  regularizer._traced_model = traced
  _check_sources_found(cls, regularizer, model)
  return regularizer


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
