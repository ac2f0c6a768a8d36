"""Coverage suite (issue 11): analysis, costs and shrink on today's model zoo.

For every model of `coverage_models` (all of keras.applications, the CNN
backbones of keras-hub, hand-written U-Net / Conv1D / MLP / pointwise-Dense /
CSP / grouped-conv models):

  1. FLOPs and model size of the fresh model (every channel alive) equal the
     independent per-layer count of `cost_count` (layer configs and shapes);
  2. a seeded random dead-channel pattern is set (`kill_channels`): Gamma
     models get gamma = beta = 0 on dead BatchNormalization channels;
     models without gammas (GroupLasso) get zero kernel columns and biases on
     dead channels of convolutions that feed only convolutions. The pattern
     of a tensor of width C repeats a per-width random base of period 8, so
     channels tied by residual Adds (same width) and the positions tied by
     grouped convolutions (group sizes multiple of 8) die together;
  3. (models whose custom layers cannot express learned widths, by design:
     `Case.shrink_rejected`) shrink_model raises a ValueError naming the layer
     and `register_layer_rebuilder`; for every other model:
     `get_cost()` (FLOPs and model size) equals the independent count of the
     reduced network, the model `shrink_model(..., transfer_weights=True)`
     builds; its outputs equal the original's (inference mode, rel 1e-4); its
     parameter count drops; each kept width layer has as many channels as its
     exported alive mask says. The channels of the model's outputs (a
     backbone's feature map, between its last width layers and its outputs)
     are never killed: shrink_model keeps the output shape.

Marked slow: `python -m pytest -q -m slow tests/keras_integration/coverage_test.py`.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest

from morph_net.keras_integration import shrink
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import model_size_regularizer
from tests.keras_integration import cost_count
from tests.keras_integration import coverage_models

L = keras.layers
PERIOD = 8
DEAD_FRACTION = 0.35
GAMMA_THRESHOLD = 0.1
LASSO_THRESHOLD = 1e-3
_PASS_THROUGH = (L.BatchNormalization, L.Activation, L.ReLU, L.MaxPooling1D, L.MaxPooling2D,
                 L.ZeroPadding1D, L.ZeroPadding2D, L.Dropout, L.Flatten)
_PLAIN_WIDTH = (L.Conv1D, L.Conv2D, L.Dense)


def _layers(model):
  seen = set()
  for layer in model._flatten_layers(include_self=False, recursive=True):
    if id(layer) not in seen:
      seen.add(id(layer))
      yield layer


def _gamma_bns(model):
  return [layer for layer in _layers(model)
          if isinstance(layer, L.BatchNormalization) and layer.scale and layer.built]


def uses_gamma(model) -> bool:
  return bool(_gamma_bns(model))


def regularizers(model, input_shape, gamma: bool):
  shape = (1,) + tuple(input_shape)
  if gamma:
    return (flop_regularizer.GammaFlopsRegularizer.from_keras_model(
        model, gamma_threshold=GAMMA_THRESHOLD, input_shape=shape),
            model_size_regularizer.GammaModelSizeRegularizer.from_keras_model(
                model, gamma_threshold=GAMMA_THRESHOLD, input_shape=shape))
  return (flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(
      model, threshold=LASSO_THRESHOLD, input_shape=shape),
          model_size_regularizer.GroupLassoModelSizeRegularizer.from_keras_model(
              model, threshold=LASSO_THRESHOLD, input_shape=shape))


class _Pattern:
  """Dead channels of a tensor of width C: a per-width random base of period 8."""

  def __init__(self, seed: int):
    self._seed = seed
    self._bases = {}

  def dead(self, width: int) -> np.ndarray:
    if width not in self._bases:
      rng = np.random.default_rng([self._seed, width])
      base = rng.random(PERIOD) < DEAD_FRACTION
      base[rng.integers(PERIOD)] = False  # at least one alive channel per period
      self._bases[width] = base
    return np.resize(self._bases[width], width)


def _feeds_only_convolutions(layer) -> bool:
  """Whether every path from `layer` reaches a plain conv/dense through
  per-channel layers that map 0 to 0 (so a zero channel stays zero)."""
  stack, seen = [layer], set()
  while stack:
    current = stack.pop()
    outbound = [node.operation for node in current._outbound_nodes]
    if not outbound:
      return False
    for nxt in outbound:
      if id(nxt) in seen:
        continue
      seen.add(id(nxt))
      if isinstance(nxt, _PLAIN_WIDTH) and (getattr(nxt, 'groups', 1) or 1) == 1:
        continue
      if isinstance(nxt, _PASS_THROUGH):
        stack.append(nxt)
        continue
      return False
  return True


def _output_channel_layers(model) -> set:
  """Names of the layers between the last width layers and the model outputs.

  Their channels are the model's output channels, which shrink_model keeps (a
  backbone's feature map keeps its shape), so they are never killed.
  """
  names, seen = set(), set()
  stack = list(model.outputs)
  while stack:
    tensor = stack.pop()
    history = getattr(tensor, '_keras_history', None)
    if history is None or id(tensor) in seen:
      continue
    seen.add(id(tensor))
    layer = history.operation
    names.add(layer.name)
    if isinstance(layer, _PLAIN_WIDTH + (L.SeparableConv1D, L.SeparableConv2D,
                                        L.Conv2DTranspose, keras.Model)):
      continue
    node = layer._inbound_nodes[history.node_index]
    stack.extend(node.arguments.keras_tensors)
  return names


def kill_channels(model, seed: int, gamma: bool) -> None:
  """Sets the seeded dead-channel pattern (see the module doc)."""
  pattern = _Pattern(seed)
  rng = np.random.default_rng(seed)
  pinned = set(shrink.output_width_layers(model)) | _output_channel_layers(model)
  for layer in _layers(model):
    if not isinstance(layer, L.BatchNormalization) or not layer.built:
      continue  # (BNs inside custom layers record no call node: not required.)
    c = int(layer.moving_mean.shape[0])
    dead = pattern.dead(c) & (layer.name not in pinned)
    layer.moving_mean.assign(rng.normal(scale=0.1, size=c).astype('float32'))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype('float32'))
    if layer.scale:
      gamma_values = rng.uniform(0.5, 1.5, c)
      layer.gamma.assign(np.where(dead & gamma, 0.0, gamma_values).astype('float32'))
    if layer.center:
      beta = rng.uniform(-0.2, 0.2, c)
      layer.beta.assign(np.where(dead, 0.0, beta).astype('float32'))
    if not gamma:  # GroupLasso: a zero input channel must stay zero after the BN.
      mean = np.asarray(layer.moving_mean)
      layer.moving_mean.assign(np.where(dead, 0.0, mean).astype('float32'))
  if gamma:
    return
  for layer in _layers(model):
    if (not isinstance(layer, _PLAIN_WIDTH) or layer.name in pinned
        or (getattr(layer, 'groups', 1) or 1) > 1 or not layer._inbound_nodes
        or not _feeds_only_convolutions(layer)):
      continue
    width = int(layer.kernel.shape[-1])
    dead = pattern.dead(width)
    kernel = np.asarray(layer.kernel)
    kernel[..., dead] = 0.0
    layer.kernel.assign(kernel)
    if layer.use_bias:
      bias = np.asarray(layer.bias)
      bias[dead] = 0.0
      layer.bias.assign(bias)


def _outputs(model, x):
  return [np.asarray(t) for t in keras.tree.flatten(model(x, training=False))]


def check_case(case: coverage_models.Case) -> dict:
  """Runs the checks of the module doc on `case`; returns the figures."""
  model = case.build()
  gamma = uses_gamma(model)
  flops_reg, size_reg = regularizers(model, case.input_shape, gamma)
  expected_flops, expected_size = cost_count.flops(model), cost_count.model_size(model)
  cost, size = float(flops_reg.get_cost()), float(size_reg.get_cost())
  assert cost == pytest.approx(expected_flops, rel=1e-6), ('FLOPs', cost, expected_flops)
  assert size == pytest.approx(expected_size, rel=1e-6), ('model size', size, expected_size)

  seed = zlib.crc32(case.name.encode())
  kill_channels(model, seed, gamma)
  flops_reg, size_reg = regularizers(model, case.input_shape, gamma)
  predicted_flops, predicted_size = float(flops_reg.get_cost()), float(size_reg.get_cost())
  masks = shrink.channel_masks(flops_reg)
  if case.shrink_rejected:
    with pytest.raises(ValueError, match=r'\(\w+\).*register_layer_rebuilder'):
      shrink.shrink_model(model, flops_reg, transfer_weights=True)
    return dict(regularizer='Gamma' if gamma else 'GroupLasso', flops=expected_flops,
                size=expected_size, rejected=case.shrink_rejected)
  reduced = shrink.shrink_model(model, flops_reg, transfer_weights=True)

  reduced_flops, reduced_size = cost_count.flops(reduced), cost_count.model_size(reduced)
  assert predicted_flops == pytest.approx(reduced_flops, rel=1e-6), (
      'FLOPs with dead channels', predicted_flops, reduced_flops)
  assert predicted_size == pytest.approx(reduced_size, rel=1e-6), (
      'model size with dead channels', predicted_size, reduced_size)
  assert reduced.count_params() < model.count_params(), (
      'parameters', reduced.count_params(), model.count_params())
  pinned = set(shrink.output_width_layers(model))
  reduced_layers = {layer.name: layer for layer in _layers(reduced)}
  for name, mask in masks.items():
    layer = reduced_layers.get(name)
    if layer is None or name in pinned or name.endswith('/depthwise'):
      continue
    width = layer.units if isinstance(layer, L.Dense) else layer.filters
    assert width == int(mask.sum()), name

  x = np.random.default_rng(seed).normal(size=(2,) + tuple(case.input_shape))
  x = x.astype('float32')
  for actual, expected in zip(_outputs(reduced, x), _outputs(model, x)):
    np.testing.assert_allclose(actual, expected, rtol=1e-4,
                               atol=1e-4 * float(np.abs(expected).max()))
  return dict(regularizer='Gamma' if gamma else 'GroupLasso',
              flops=expected_flops, size=expected_size, reduced_flops=reduced_flops,
              reduced_size=reduced_size, params=model.count_params(),
              reduced_params=reduced.count_params())


@pytest.mark.slow
@pytest.mark.parametrize('case', [pytest.param(c, id=c.name)
                                  for c in coverage_models.all_cases()])
def test_coverage(case):
  keras.backend.clear_session()
  check_case(case)
