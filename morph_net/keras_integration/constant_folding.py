"""Folds the constant outputs of removed channels into the layers that consume them.

A channel that MorphNet declares dead is not silent: a BatchNormalization whose
|gamma| is below the threshold still outputs its `beta`, and after the
activation that constant reaches the next layer. Dropping the channel drops the
constant, and the shrunk model predicts differently (issue 12: test accuracy
0.796 -> 0.233). `fold_removed_constants` restores it. It walks the *original*
model in inference mode, computes the value of every removed channel, and adds
its contribution to the layer that consumes it in the shrunk model:

  * the value of a removed channel: at the output of its width layer (Conv,
    Dense, ...) the kernel is taken as 0 (the value is the bias, 0 without
    one; exact for GroupLasso channels whose kernel is 0). At the first
    BatchNormalization it meets it becomes `beta` (the BN input is replaced
    by its moving mean: exact when gamma is 0, and the channel's mean over the
    data the statistics were estimated on otherwise). A channel that is
    constant because everything before it was removed (a layer fed only by
    removed layers, e.g. the last BN of a removed residual branch) is carried
    exactly, through BN's inference formula `gamma * (v - mean) / sqrt(var +
    eps) + beta`.
  * carried through per-channel layers: activations (evaluated on the
    constant), dropout, pooling, padding, cropping, up-sampling, Flatten (tiled
    over positions), Concatenate (kept with its channels), Add / Subtract /
    Average (summed), depthwise convolutions (`c * sum of taps + bias`).
  * an input of a residual Add removed as a whole (a branch of width 0): its
    constant k is added to the surviving inputs. It is folded into the
    producer of a surviving input (a BatchNormalization's beta or a layer's
    bias) when that output feeds only the Add, exactly; otherwise it rides
    on the surviving channels, through linear layers, to the consumer.
  * folded at the consumer: a Dense, Conv or SeparableConv layer gets
    `W . c` (the kernel summed over its taps) added to its bias; without a
    bias, when its output feeds only a BatchNormalization, the BN's moving
    mean is lowered by `W . c` instead (same output).

Exactness: Dense consumers, 1x1 convolutions and 'valid' padding are exact.
With 'same' (or 'causal') padding the response to a constant depends on the
position: at the border the zero padding hides some taps. `border='mean'`
(the default) folds its average over the output positions (exact on average;
each tap weighted by the share of positions where it reads the input);
`border='interior'` folds the full-kernel response (exact away from the border,
off by the hidden taps at the border). Measured in benchmarks/README.md
("Shrink accuracy").
Not foldable, and reported in a warning that names the removed layers, the
layer that blocks the fold and the consumer: a constant added to *kept*
channels that meets a non-linear layer (a residual branch removed before a
ReLU whose skip input comes from a ReLU), a cross-channel layer
(LayerNormalization, Softmax, Reshape, unknown layers), a transposed or
grouped convolution, a consumer without a bias and without a BN right after,
a layer called more than once, or the model output.

Used by `shrink_model(..., transfer_weights=True)` after the weights are
transferred; it changes only the new model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import keras
import numpy as np
from absl import logging

from morph_net.probabilistic_gating import activation_gating

L = keras.layers

_CONV_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D)
_SEPARABLE_LAYERS = (L.SeparableConv1D, L.SeparableConv2D)
_TRANSPOSE_LAYERS = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_WIDTH_LAYERS = (L.Dense,) + _SEPARABLE_LAYERS + _TRANSPOSE_LAYERS + _CONV_LAYERS
_DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
# Per-channel layers a constant (or an offset) goes through unchanged.
_PASS_LAYERS = tuple(getattr(L, name) for name in (
    'Dropout', 'SpatialDropout1D', 'SpatialDropout2D', 'SpatialDropout3D',
    'GaussianNoise', 'GaussianDropout', 'AlphaDropout', 'ActivityRegularization',
    'Identity', 'MaxPooling1D', 'MaxPooling2D', 'MaxPooling3D', 'AveragePooling1D',
    'AveragePooling2D', 'AveragePooling3D', 'GlobalAveragePooling1D',
    'GlobalAveragePooling2D', 'GlobalAveragePooling3D', 'GlobalMaxPooling1D',
    'GlobalMaxPooling2D', 'GlobalMaxPooling3D', 'Cropping1D', 'Cropping2D', 'Cropping3D',
    'UpSampling1D', 'UpSampling2D', 'UpSampling3D') if hasattr(L, name))
_PADDING_LAYERS = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)
# Element-wise (per-channel) non-linear layers: evaluated on the constants.
_ELEMENTWISE_LAYERS = (L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Activation)
_CROSS_CHANNEL_ACTIVATIONS = ('softmax', 'log_softmax')

# How 'same'-padded layers fold constants (see fold_removed_constants).
# 'mean' kept predictions better on the digits models (benchmarks/README.md).
DEFAULT_BORDER = 'mean'

# Status of a channel's value.
_EXACT = 0     # known (up to float rounding)
_DEAD = 1      # a removed channel's estimate (kernel taken as 0 / moving mean)
_UNKNOWN = 2   # not constant, or not computable: cannot be folded


@dataclasses.dataclass
class FoldReport:
  """What `fold_removed_constants` did.

  Attributes:
    folded: `{layer name: [weight names]}` adjusted in the new model.
    border_layers: layers with 'same'/'causal' padding (or ZeroPadding) on the
      path of a folded constant: there the fold is exact away from the borders.
    not_folded: one message per constant that could not be folded (also
      logged as warnings).
  """
  folded: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
  border_layers: List[str] = dataclasses.field(default_factory=list)
  not_folded: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _State:
  """Per-channel facts about one tensor of the original model.

  `value` is, for a removed channel, its constant value; for a kept channel, its
  offset: original value minus what the shrunk model computes (0 unless a removed
  Add input or an unfoldable constant shifted it).
  """
  kept: np.ndarray
  value: np.ndarray
  status: np.ndarray
  origins: Set[str] = dataclasses.field(default_factory=set)
  via: Set[str] = dataclasses.field(default_factory=set)
  border: Set[str] = dataclasses.field(default_factory=set)

  @property
  def vanished(self) -> bool:
    return len(self.kept) > 0 and not self.kept.any()

  def relevant(self) -> np.ndarray:
    """Channels whose value changes the shrunk model if dropped."""
    return (~self.kept) | (self.value != 0) | (self.status == _UNKNOWN)


def _fresh(width: int) -> _State:
  return _State(np.ones(width, bool), np.zeros(width), np.zeros(width, np.int8))


def _merge_sets(states, attribute) -> Set[str]:
  out: Set[str] = set()
  for state in states:
    out |= getattr(state, attribute)
  return out


def fold_removed_constants(model: keras.Model, new_model: keras.Model,
                           final_masks: Mapping[Any, np.ndarray], *,
                           border: Optional[str] = None) -> FoldReport:
  """Folds the constants of `model`'s removed channels into `new_model`.

  Args:
    model: the original functional or Sequential model.
    new_model: the model `shrink_model` built from it (same layer names), with
      the surviving weights already transferred.
    final_masks: the alive mask (bool, over the original channels) of every
      width layer, keyed by `id(layer)` (as `shrink.rebuild` plans them) or by
      layer name. Width layers absent keep every channel.
    border: how a 'same'-padded layer folds a constant: 'interior' (exact
      away from the border) or 'mean' (exact on average over the output
      positions). Defaults to `DEFAULT_BORDER`.

  Returns:
    A FoldReport. Constants that cannot be folded are also logged as warnings.
  """
  border = DEFAULT_BORDER if border is None else border
  functional = _functional_of(model)
  masks = {}
  for layer in functional.layers:
    mask = final_masks.get(id(layer), final_masks.get(layer.name))
    if mask is not None:
      masks[id(layer)] = np.asarray(mask, bool)
  if border not in ('interior', 'mean'):
    raise ValueError(f"border must be 'interior' or 'mean'. Received: border={border!r}.")
  folder = _Folder(functional, masks, border)
  folder.run()
  report = folder.report
  for (name, weight), delta in folder.adjustments.items():
    _apply(new_model, name, weight, delta, folder.weight_masks[(name, weight)], report)
  if report.border_layers:
    logging.warning(
        "Shrink: folded the constant outputs of removed channels into %s; the 'same'-"
        'padded layer(s) %s see part of the constant through their zero padding at the '
        'borders: the fold is exact %s. Recalibrate BatchNorm statistics '
        '(recalibrate_batch_norm) or fine-tune to absorb the rest.',
        sorted(report.folded), report.border_layers,
        'on average over positions' if border == 'mean' else 'away from the borders')
  for message in report.not_folded:
    logging.warning('Shrink: %s', message)
  return report


def _apply(new_model, name, weight, delta, mask, report) -> None:
  try:
    layer = new_model.get_layer(name)
  except ValueError:
    report.not_folded.append(f'layer {name!r} is not in the shrunk model; its '
                             f'{weight} adjustment is lost.')
    return
  variable = getattr(layer, weight)
  value = np.asarray(variable)
  delta = delta[mask]
  if value.shape != delta.shape:
    report.not_folded.append(
        f'the {weight} of layer {name!r} has shape {value.shape}, the folded constant '
        f'{delta.shape}; not folded.')
    return
  variable.assign((value.astype(np.float64) + delta).astype(value.dtype))
  report.folded.setdefault(name, []).append(weight)


def _functional_of(model):
  if isinstance(model, keras.Sequential):
    return model._functional  # pylint: disable=protected-access
  return model


def _nodes(functional) -> List[Any]:
  nodes = []
  for depth in sorted(functional._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
    for node in functional._nodes_by_depth[depth]:  # pylint: disable=protected-access
      if node.operation is not None and not node.is_input:
        nodes.append(node)
  return nodes


def _last_dim(tensor) -> int:
  shape = tuple(tensor.shape)
  return int(shape[-1]) if shape and shape[-1] is not None else 0


def _channels_last(layer) -> bool:
  return getattr(layer, 'data_format', 'channels_last') != 'channels_first'


def _is_channel_bn(layer, tensor) -> bool:
  if not isinstance(layer, L.BatchNormalization):
    return False
  rank = len(tensor.shape)
  axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
  return axis in (-1, rank - 1, (-1,), (rank - 1,))


def _bn_arrays(layer):
  def get(name, default):
    variable = getattr(layer, name, None)
    return default if variable is None else np.asarray(variable, np.float64)
  mean = np.asarray(layer.moving_mean, np.float64)
  var = np.asarray(layer.moving_variance, np.float64)
  gamma = get('gamma', np.ones_like(mean))
  beta = get('beta', np.zeros_like(mean))
  return gamma, beta, mean, 1.0 / np.sqrt(var + float(layer.epsilon))


def _has_border(layer) -> bool:
  """Whether zero padding makes the layer's constant response position dependent."""
  kernel = getattr(layer, 'kernel_size', (1,))
  dilation = getattr(layer, 'dilation_rate', (1,)) or (1,)
  padding = getattr(layer, 'padding', 'valid')
  return padding in ('same', 'causal') and any(
      (int(k) - 1) * int(d) > 0 for k, d in zip(kernel, np.broadcast_to(dilation, len(kernel))))


class _Folder:
  """Forward walk over the original graph (see the module doc)."""

  def __init__(self, functional, masks, border_mode):
    self._border_mode = border_mode
    self._functional = functional
    self._masks = masks
    self._nodes = _nodes(functional)
    self._states: Dict[int, _State] = {}
    self._consumers: Dict[int, List[Any]] = {}
    self._calls: Dict[int, int] = {}
    for node in self._nodes:
      self._calls[id(node.operation)] = self._calls.get(id(node.operation), 0) + 1
      for tensor in node.arguments.keras_tensors:
        self._consumers.setdefault(id(tensor), []).append(node)
    self.adjustments: Dict[Tuple[str, str], np.ndarray] = {}
    self.weight_masks: Dict[Tuple[str, str], np.ndarray] = {}
    self.report = FoldReport()

  def run(self) -> None:
    for tensor in self._functional.inputs:
      self._states[id(tensor)] = _fresh(_last_dim(tensor))
    for node in self._nodes:
      self._visit(node)
    for tensor in self._functional.outputs:
      state = self._states.get(id(tensor))
      if state is not None and state.relevant().any():
        self._not_folded(state, f'the model output {tensor.name!r}')

  # -- bookkeeping --------------------------------------------------------------

  def _adjust(self, name, weight, delta, mask) -> None:
    key = (name, weight)
    self.adjustments[key] = self.adjustments.get(key, 0.0) + delta
    self.weight_masks[key] = mask

  def _not_folded(self, state, where) -> None:
    origins = sorted(state.origins) or ['?']
    unknown = (state.status == _UNKNOWN) & state.relevant()
    why = (f' through {sorted(state.via)}, which is not linear in them'
           if unknown.any() and state.via else '')
    self.report.not_folded.append(
        f'the constant outputs of removed channels of {origins} reach {where}{why}: '
        'they cannot be folded into a bias, and the shrunk model computes without '
        'them. Recalibrate BatchNorm statistics (recalibrate_batch_norm) or fine-tune.')

  def _border(self, names) -> None:
    for name in sorted(names):
      if name not in self.report.border_layers:
        self.report.border_layers.append(name)

  def _set(self, node, state) -> None:
    for tensor in node.outputs:
      self._states[id(tensor)] = state

  # -- per node -------------------------------------------------------------------

  def _visit(self, node) -> None:
    layer = node.operation
    inputs = list(node.arguments.keras_tensors)
    states = [self._states.get(id(t)) or _fresh(_last_dim(t)) for t in inputs]
    out = node.outputs[0]
    width = _last_dim(out)
    if len(node.outputs) > 1:
      for tensor in node.outputs:
        self._states[id(tensor)] = self._opaque(layer, states, _last_dim(tensor))
      return
    if not _channels_last(layer):
      self._set(node, self._opaque(layer, states, width))
    elif isinstance(layer, _WIDTH_LAYERS):
      self._set(node, self._width_layer(node, layer, inputs, states[0], width))
    elif isinstance(layer, _DEPTHWISE_LAYERS):
      self._set(node, self._depthwise(layer, inputs[0], states[0]))
    elif _is_channel_bn(layer, out):
      self._set(node, self._batch_norm(layer, states[0]))
    elif isinstance(layer, L.Flatten):
      self._set(node, self._flatten(inputs[0], states[0], width))
    elif isinstance(layer, L.Concatenate) and layer.axis in (-1, len(out.shape) - 1):
      self._set(node, _State(
          np.concatenate([s.kept for s in states]), np.concatenate([s.value for s in states]),
          np.concatenate([s.status for s in states]), _merge_sets(states, 'origins'),
          _merge_sets(states, 'via'), _merge_sets(states, 'border')))
    elif isinstance(layer, (L.Add, L.Subtract, L.Average)):
      self._set(node, self._linear_merge(node, layer, inputs, states, width))
    elif isinstance(layer, _PASS_LAYERS) and len(states) == 1:
      self._set(node, dataclasses.replace(states[0]))
    elif isinstance(layer, _PADDING_LAYERS):
      state = dataclasses.replace(states[0])
      if state.relevant().any():
        state.border = state.border | {layer.name}
      self._set(node, state)
    elif isinstance(layer, activation_gating.LogisticSigmoidGating):
      self._set(node, self._evaluate(layer, inputs[0], states[0], linear=True))
    elif (isinstance(layer, _ELEMENTWISE_LAYERS) and len(states) == 1 and not (
        isinstance(layer, L.Activation) and
        getattr(layer.activation, '__name__', '') in _CROSS_CHANNEL_ACTIVATIONS)):
      self._set(node, self._evaluate(layer, inputs[0], states[0], linear=False))
    elif isinstance(layer, (L.Multiply, L.Maximum, L.Minimum)):
      self._set(node, self._evaluate_merge(layer, inputs, states, width))
    else:
      self._set(node, self._opaque(layer, states, width))

  def _opaque(self, layer, states, width) -> _State:
    """A layer whose channel arithmetic is unknown: anything relevant becomes unknown."""
    state = _fresh(width)
    if len(states) == 1 and len(states[0].kept) == width:
      state.kept = states[0].kept.copy()  # The rebuild lets such a layer follow its input.
    if any(s.relevant().any() for s in states):
      state.status[:] = _UNKNOWN
      state.origins = _merge_sets(states, 'origins')
      state.via = _merge_sets(states, 'via') | {layer.name}
    return state

  def _width_layer(self, node, layer, inputs, state, width) -> _State:
    kept = self._masks.get(id(layer), np.ones(width, bool))
    if len(kept) != width:
      kept = np.ones(width, bool)
    bias = (np.asarray(layer.bias, np.float64) if getattr(layer, 'bias', None) is not None
            else np.zeros(width))
    if state.vanished:
      # Everything feeding the layer was removed: its output is the layer applied
      # to the (constant) input, and it is removed in turn.
      response = self._response(layer, inputs[0], state)
      out = _State(np.zeros(width, bool), bias.copy(), state.status.max(initial=0)
                   * np.ones(width, np.int8), set(state.origins), set(state.via),
                   set(state.border))
      if response is None:
        out.status[:] = _UNKNOWN
        out.via |= {layer.name}
      else:
        out.value += response
        if _has_border(layer) and state.value.any():
          out.border |= {layer.name}
      return out
    if state.relevant().any() and kept.any():
      self._fold_into(node, layer, inputs, state, kept)
    # Removed channels of this layer: kernel taken as 0 (value: the bias).
    out = _State(kept.copy(), np.where(kept, 0.0, bias), np.where(kept, _EXACT, _DEAD)
                 .astype(np.int8))
    if not kept.all():
      out.origins = {layer.name}
    return out

  def _fold_into(self, node, layer, inputs, state, kept) -> None:
    """Adds the consumer-side contribution of `state`'s constants to `layer`."""
    unknown = (state.status == _UNKNOWN) & state.relevant()
    if unknown.any():
      self._not_folded(state, f'layer {layer.name!r}')
    known = dataclasses.replace(state, value=np.where(unknown, 0.0, state.value))
    if not known.value.any():
      return
    where = f'layer {layer.name!r} ({type(layer).__name__})'
    if self._calls[id(layer)] > 1:
      self._not_folded(known, f'{where}, which is called several times')
      return
    response = self._response(layer, inputs[0], known)
    if response is None:
      self._not_folded(known, f'{where}, a transposed or grouped convolution')
      return
    if getattr(layer, 'bias', None) is not None:
      self._adjust(layer.name, 'bias', response, kept)
    else:
      consumers = self._consumers.get(id(node.outputs[0]), [])
      bn = consumers[0].operation if len(consumers) == 1 else None
      if bn is None or not _is_channel_bn(bn, node.outputs[0]) or self._calls[id(bn)] > 1:
        self._not_folded(known, f'{where}, which has no bias and no BatchNormalization '
                         'right after it')
        return
      # BN(z + r) with moving mean m equals BN(z) with moving mean m - r.
      self._adjust(bn.name, 'moving_mean', -response, kept)
    border = set(known.border) | ({layer.name} if _has_border(layer) else set())
    self._border(border)

  def _response(self, layer, tensor, state) -> Optional[np.ndarray]:
    """The layer's linear response (no bias) to the per-channel constants `state.value`."""
    value = state.value
    if isinstance(layer, _TRANSPOSE_LAYERS) or (getattr(layer, 'groups', 1) or 1) != 1:
      return None if value.any() else np.zeros(_output_width(layer))
    if isinstance(layer, _SEPARABLE_LAYERS):
      depthwise = np.asarray(layer.depthwise_kernel, np.float64)
      taps = self._tap_sum(layer, tensor, depthwise)  # (in, m)
      mid = (value[:, None] * taps).reshape(-1)
      pointwise = np.asarray(layer.pointwise_kernel, np.float64)
      return mid @ pointwise.reshape(-1, pointwise.shape[-1])
    kernel = np.asarray(layer.kernel, np.float64)
    taps = self._tap_sum(layer, tensor, kernel)  # (in, out)
    return value @ taps

  def _tap_sum(self, layer, tensor, kernel) -> np.ndarray:
    """The kernel summed over its taps, each weighted by its share of in-bounds outputs."""
    weights = np.ones(kernel.shape[:-2])
    if self._border_mode == 'mean' and _has_border(layer):
      weights = _in_bounds_share(layer, tensor, kernel.shape[:-2])
    return np.tensordot(weights, kernel, axes=(tuple(range(weights.ndim)),) * 2)

  def _depthwise(self, layer, tensor, state) -> _State:
    m = int(layer.depth_multiplier)
    kernel = np.asarray(layer.kernel, np.float64)
    taps = self._tap_sum(layer, tensor, kernel).reshape(-1)  # (in * m)
    value = np.repeat(state.value, m) * taps
    kept = np.repeat(state.kept, m)
    if getattr(layer, 'bias', None) is not None:
      value = value + np.where(kept, 0.0, np.asarray(layer.bias, np.float64))
    out = _State(kept, value, np.repeat(state.status, m), set(state.origins),
                 set(state.via), set(state.border))
    if _has_border(layer) and state.value.any():
      out.border |= {layer.name}
    return out

  def _batch_norm(self, layer, state) -> _State:
    gamma, beta, mean, rs = _bn_arrays(layer)
    removed = ~state.kept
    exact = state.status == _EXACT
    value = np.where(removed, np.where(exact, gamma * (state.value - mean) * rs + beta, beta),
                     state.value * gamma * rs)
    status = state.status.copy()
    status[removed & ~exact] = np.where(gamma[removed & ~exact] == 0, _EXACT, _DEAD)
    return _State(state.kept.copy(), value, status.astype(np.int8), set(state.origins),
                  set(state.via), set(state.border))

  def _flatten(self, tensor, state, width) -> _State:
    channels = len(state.kept)
    if channels == 0 or width % channels:
      return self._opaque(tensor._keras_history.operation, [state], width)  # pylint: disable=protected-access
    repeat = width // channels
    return _State(np.tile(state.kept, repeat), np.tile(state.value, repeat),
                  np.tile(state.status, repeat), set(state.origins), set(state.via),
                  set(state.border))

  def _linear_merge(self, node, layer, inputs, states, width) -> _State:
    if any(len(s.kept) != width for s in states):
      return self._opaque(layer, states, width)  # Broadcasting: not followed.
    signs = np.ones(len(states))
    if isinstance(layer, L.Subtract):
      signs[1] = -1.0
    scale = 1.0 / len(states) if isinstance(layer, L.Average) else 1.0
    kept = np.zeros(width, bool)
    for state in states:
      kept |= state.kept
    contributions = [sign * scale * s.value for sign, s in zip(signs, states)]
    survivors = [i for i, s in enumerate(states) if not s.vanished]
    removed_inputs = [i for i, s in enumerate(states) if s.vanished]
    if removed_inputs and survivors and isinstance(layer, L.Add):
      # A removed residual branch: try to fold its constant into a survivor's producer.
      constant = sum(contributions[i] for i in removed_inputs)
      absorbing = [states[i] for i in removed_inputs]
      unknown = np.zeros(width, bool)
      for s in absorbing:
        unknown |= s.status == _UNKNOWN
      if not unknown.any() and self._fold_upstream(node, inputs, survivors, kept, constant,
                                                   absorbing):
        for i in removed_inputs:
          contributions[i] = np.zeros(width)
        states = [states[i] for i in survivors]
    value = np.sum(contributions, axis=0)
    status = np.max([s.status for s in states], axis=0).astype(np.int8)
    return _State(kept, value, status, _merge_sets(states, 'origins'),
                  _merge_sets(states, 'via'), _merge_sets(states, 'border'))

  def _fold_upstream(self, node, inputs, survivors, kept, constant, absorbing) -> bool:
    """Adds `constant` to the producer of a surviving Add input that feeds only the Add."""
    for i in survivors:
      tensor = inputs[i]
      if len(self._consumers.get(id(tensor), [])) != 1:
        continue
      producer = tensor._keras_history.operation  # pylint: disable=protected-access
      if self._calls.get(id(producer)) != 1:
        continue
      if _is_channel_bn(producer, tensor) and getattr(producer, 'beta', None) is not None:
        weight = 'beta'
      elif (isinstance(producer, _WIDTH_LAYERS + _DEPTHWISE_LAYERS)
            and getattr(producer, 'bias', None) is not None):
        weight = 'bias'
      else:
        continue
      self._adjust(producer.name, weight, constant, kept)
      self._border(_merge_sets(absorbing, 'border'))
      return True
    return False

  def _evaluate(self, layer, tensor, state, linear: bool) -> _State:
    """A per-channel layer applied to the constants (and, if linear, to the offsets)."""
    out = dataclasses.replace(state, value=state.value.copy(), status=state.status.copy())
    targets = (~state.kept) | (state.value != 0) if linear else ~state.kept
    if not linear:
      shifted = state.kept & (state.value != 0)
      if shifted.any():
        out.status[shifted] = _UNKNOWN
        out.via = out.via | {layer.name}
    if not targets.any():
      return out
    result = _constant_response(layer, tensor, np.where(targets, state.value, 0.0))
    if result is None:
      out.status[targets] = _UNKNOWN
      out.via = out.via | {layer.name}
    else:
      out.value[targets] = result[targets]
    return out

  def _evaluate_merge(self, layer, inputs, states, width) -> _State:
    """Multiply / Maximum / Minimum: removed channels evaluated, offsets not linear."""
    if any(len(s.kept) != width for s in states):
      return self._opaque(layer, states, width)
    kept = np.zeros(width, bool)
    for state in states:
      kept |= state.kept
    values = [np.asarray(s.value, np.float32)[None] for s in states]
    result = np.asarray(layer(values), np.float64)[0]
    status = np.max([s.status for s in states], axis=0).astype(np.int8)
    shifted = kept & np.any([s.value != 0 for s in states], axis=0)
    out = _State(kept, np.where(kept, 0.0, result), status, _merge_sets(states, 'origins'),
                 _merge_sets(states, 'via'), _merge_sets(states, 'border'))
    if shifted.any():
      out.status[shifted] = _UNKNOWN
      out.via |= {layer.name}
    return out


def _in_bounds_share(layer, tensor, kernel_shape) -> np.ndarray:
  """Per tap, the share of output positions where it reads the input, not the padding."""
  spatial = tuple(tensor.shape)[1:-1]
  if any(d is None for d in spatial):
    return np.ones(kernel_shape)
  rank = len(kernel_shape)
  strides = np.broadcast_to(getattr(layer, 'strides', 1), rank)
  dilation = np.broadcast_to(getattr(layer, 'dilation_rate', 1) or 1, rank)
  share = np.ones(())
  for size, k, s, d in zip(spatial, kernel_shape, strides, dilation):
    span = (k - 1) * d + 1
    if layer.padding == 'causal':
      out, before = size, span - 1
    else:  # 'same'
      out = -(-size // s)
      before = max((out - 1) * s + span - size, 0) // 2
    positions = np.arange(out)[:, None] * s - before + np.arange(k)[None, :] * d
    inside = ((positions >= 0) & (positions < size)).mean(axis=0)
    share = np.multiply.outer(share, inside)
  return share


def _output_width(layer) -> int:
  return int(layer.units if isinstance(layer, L.Dense) else layer.filters)


def _constant_response(layer, tensor, value) -> Optional[np.ndarray]:
  """`layer` evaluated (inference) on an input equal to `value` at every position."""
  shape = tuple(tensor.shape)[1:]
  if any(d is None for d in shape):
    shape = (len(value),)
  x = np.broadcast_to(value.astype(np.float32), (1,) + shape)
  try:
    y = np.asarray(layer(x, training=False), np.float64)
  except Exception:  # pylint: disable=broad-except
    return None
  y = y.reshape(-1, y.shape[-1])
  if y.shape[-1] != len(value) or np.ptp(y, axis=0).max(initial=0) > 1e-6 * (
      1 + np.abs(y).max()):
    return None
  return y[0]
