"""Random Keras 3 functional models for property tests, with a channel oracle.

`model_specs()` is a hypothesis strategy drawing a `ModelSpec`: plain data (an
input shape, a list of blocks, a head) that prints readably when a property
fails. `build(spec)` turns it into a Keras model and, while building, records
an independent brute-force account of the model's channels (`ChannelOracle`):

* every channel of every tensor gets an id; a layer that creates channels
  (Conv2D, Conv2DTranspose, Dense, the pointwise part of a separable conv)
  gets fresh ids, a layer that keeps them (BatchNormalization, activations,
  pooling, padding, bilinear UpSampling2D, global pooling) passes them on;
* channels that must live or die together are merged (union-find): the
  inputs of an `Add` / `Multiply`, a depthwise output channel k with input
  channel k // depth_multiplier;
* a `Concatenate` on the channel axis concatenates the id lists;
* layers that reshape keep the channels when the last axis keeps its size
  (Reshape((H*W, C)), nearest UpSampling2D, Dense on a rank 3 input, Flatten
  of a 1x1 map): the row-major channel index is unchanged (issue 11); other
  reshapes (Flatten) end the channels: their outputs get fresh ids with no
  source;
* a Dense on a rank > 2 input multiplies one row per position: its cost
  coefficient is 2 * rows (rows = product of the dims between batch and
  channels);
* the sources of a channel are the gammas of the BatchNormalization layers it
  passes through (Gamma regularizers) or the output slices of the conv /
  Dense kernels that create it (GroupLasso regularizers).

From the variables' current values the oracle recomputes, with numpy only,
which channels are alive (OR over the sources of a merged set: |gamma| > t,
or RMS of the kernel slice > t; a set without source is always alive), the
alive count of each exported layer, and the FLOP / weight cost
`sum coeff * A_in * A_out` (depthwise: `coeff * A_out`) of the network.
Nothing here imports morph_net.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
from hypothesis import strategies as st

L = keras.layers

BLOCK_KINDS = ('conv', 'depthwise', 'separable', 'transpose', 'residual', 'concat',
               'gate', 'pool', 'passthrough', 'upsample', 'side_output')
HEADS = ('none', 'gap_dense', 'flatten_dense', 'reshape_dense')
PASSTHROUGH_LAYERS = ('zero_pad', 'relu6', 'leaky_relu', 'sigmoid', 'batch_norm')
# Caps that keep every model small (fast) and every cost exact in float32.
MAX_SPATIAL = 16
MAX_CHANNELS = 16


# ---------------------------------------------------------------------------
# Specs and the strategy.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A random model: input (H, W, C), blocks, head, and a seed for weights."""
  input_shape: Tuple[int, int, int]
  blocks: Tuple[Dict[str, Any], ...]
  head: Dict[str, Any]
  seed: int


def _conv_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
  if padding == 'same':
    return -(-size // stride)
  return (size - dilation * (kernel - 1) - 1) // stride + 1


def _transpose_out(size: int, kernel: int, stride: int, padding: str) -> int:
  if padding == 'same':
    return size * stride
  return size * stride + max(kernel - stride, 0)


@st.composite
def _conv_params(draw, h: int, w: int, *, allow_stride: bool = True,
                 allow_dilation: bool = True) -> Dict[str, Any]:
  """Kernel / stride / dilation / padding valid on an h x w input."""
  kernel = draw(st.integers(1, 3))
  dilation = draw(st.sampled_from([1, 2])) if allow_dilation and kernel > 1 else 1
  stride = draw(st.sampled_from([1, 2])) if allow_stride and dilation == 1 else 1
  extent = dilation * (kernel - 1) + 1
  paddings = ['same', 'valid'] if min(h, w) >= extent else ['same']
  padding = draw(st.sampled_from(paddings))
  return dict(kernel=kernel, stride=stride, dilation=dilation, padding=padding)


@st.composite
def _post(draw, use_bn: bool) -> Dict[str, Any]:
  """What follows a weighted layer: maybe a batch norm, maybe a ReLU."""
  return dict(batch_norm=use_bn and draw(st.booleans()),
              relu=draw(st.booleans()))


@st.composite
def model_specs(draw, max_blocks: int = 5) -> ModelSpec:
  """A hypothesis strategy of `ModelSpec`s (see the module docstring)."""
  h, w = draw(st.integers(4, 12)), draw(st.integers(4, 12))
  c = draw(st.integers(1, 4))
  input_shape = (h, w, c)
  use_bn = draw(st.sampled_from([True, True, False]))
  blocks: List[Dict[str, Any]] = []
  for _ in range(draw(st.integers(1, max_blocks))):
    kind = draw(st.sampled_from(BLOCK_KINDS))
    block: Dict[str, Any] = dict(kind=kind)
    if kind == 'conv':
      block.update(draw(_conv_params(h, w)), filters=draw(st.integers(1, 6)),
                   use_bias=draw(st.booleans()), **draw(_post(use_bn)))
      h = _conv_out(h, block['kernel'], block['stride'], block['dilation'], block['padding'])
      w = _conv_out(w, block['kernel'], block['stride'], block['dilation'], block['padding'])
      c = block['filters']
    elif kind in ('depthwise', 'separable'):
      block.update(draw(_conv_params(h, w)), multiplier=draw(st.integers(1, 2)),
                   **draw(_post(use_bn)))
      if c * block['multiplier'] > MAX_CHANNELS:
        block['multiplier'] = 1
      h = _conv_out(h, block['kernel'], block['stride'], block['dilation'], block['padding'])
      w = _conv_out(w, block['kernel'], block['stride'], block['dilation'], block['padding'])
      if kind == 'separable':
        block['filters'] = draw(st.integers(1, 6))
        c = block['filters']
      else:
        c *= block['multiplier']
    elif kind == 'transpose':
      stride = draw(st.sampled_from([1, 2])) if max(h, w) <= MAX_SPATIAL // 2 else 1
      block.update(kernel=draw(st.integers(1, 3)), stride=stride,
                   padding=draw(st.sampled_from(['same', 'valid'])),
                   filters=draw(st.integers(1, 6)), **draw(_post(use_bn)))
      h = _transpose_out(h, block['kernel'], stride, block['padding'])
      w = _transpose_out(w, block['kernel'], stride, block['padding'])
      c = block['filters']
      if max(h, w) > MAX_SPATIAL:  # valid padding grew it: shrink back.
        blocks.append(block)
        block = dict(kind='pool', pool='max', stride=2, padding='same')
        h, w = -(-h // 2), -(-w // 2)
    elif kind == 'residual':
      out = draw(st.sampled_from([c, c, draw(st.integers(1, 6))]))
      branch = [dict(kernel=draw(st.integers(1, 3)), filters=draw(st.integers(1, 6)),
                     batch_norm=use_bn and draw(st.booleans()))
                for _ in range(draw(st.integers(0, 1)))]
      branch.append(dict(kernel=draw(st.integers(1, 3)), filters=out,
                         batch_norm=use_bn and draw(st.booleans())))
      block.update(branch=branch, relu=draw(st.booleans()),
                   projection=(dict(batch_norm=use_bn and draw(st.booleans()))
                               if out != c else None))
      c = out
    elif kind == 'concat':
      if c > MAX_CHANNELS // 2:
        block = dict(kind='pool', pool='avg', stride=1, padding='same')
      else:
        branches = []
        for _ in range(draw(st.integers(2, 3))):
          if draw(st.booleans()):
            branches.append(dict(identity=True))
          else:
            branches.append(dict(identity=False, kernel=draw(st.integers(1, 3)),
                                 filters=draw(st.integers(1, 4)),
                                 batch_norm=use_bn and draw(st.booleans())))
        block.update(branches=branches, batch_norm=use_bn and draw(st.booleans()))
        c = sum(c if b['identity'] else b['filters'] for b in branches)
    elif kind == 'gate':
      block.update(batch_norm=use_bn and draw(st.booleans()))
    elif kind == 'pool':
      stride = draw(st.sampled_from([1, 2]))
      padding = draw(st.sampled_from(['same', 'valid'] if min(h, w) >= 2 else ['same']))
      block.update(pool=draw(st.sampled_from(['max', 'avg'])), stride=stride,
                   padding=padding)
      h, w = _conv_out(h, 2, stride, 1, padding), _conv_out(w, 2, stride, 1, padding)
    elif kind == 'passthrough':
      layer = draw(st.sampled_from(PASSTHROUGH_LAYERS))
      if layer == 'batch_norm' and not use_bn:
        layer = 'relu6'
      block.update(layer=layer)
      if layer == 'zero_pad':
        h, w = h + 2, w + 2
    elif kind == 'upsample':
      if max(h, w) > MAX_SPATIAL // 2:
        block = dict(kind='passthrough', layer='leaky_relu')
      else:
        block.update(interpolation=draw(st.sampled_from(['nearest', 'bilinear'])))
        h, w = 2 * h, 2 * w
    elif kind == 'side_output':
      block.update(dense=draw(st.booleans()), units=draw(st.integers(1, 4)))
    blocks.append(block)
  head_kind = draw(st.sampled_from(HEADS))
  head: Dict[str, Any] = dict(kind=head_kind, units=draw(st.integers(1, 5)))
  if head_kind == 'gap_dense':
    head.update(batch_norm=use_bn and draw(st.booleans()),
                second_units=draw(st.sampled_from([None, 3])))
  elif head_kind == 'flatten_dense':
    head.update(batch_norm=use_bn and draw(st.booleans()))
  return ModelSpec(input_shape, tuple(blocks), head, draw(st.integers(0, 2**31 - 1)))


# ---------------------------------------------------------------------------
# The oracle.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CostTerm:
  """One costed op: coefficient * A(in_ids) * A(out_ids) (depthwise: * A(out))."""
  layer: str
  flop_coeff: float
  weight_coeff: float
  in_ids: Optional[List[int]]
  out_ids: List[int]

  @property
  def depthwise(self) -> bool:
    return self.in_ids is None


class ChannelOracle:
  """Brute-force channel bookkeeping of a model (see the module docstring)."""

  def __init__(self):
    self._parent: List[int] = []
    # id -> list of sources: ('gamma', layer, index) or ('kernel', layer, attr, axis, index).
    self._gamma_sources: Dict[int, List[Tuple[Any, int]]] = {}
    self._kernel_sources: Dict[int, List[Tuple[Any, str, int, int]]] = {}
    self.exported: Dict[str, List[int]] = {}
    self.terms: List[CostTerm] = []

  def fresh(self, n: int) -> List[int]:
    start = len(self._parent)
    self._parent.extend(range(start, start + n))
    return list(range(start, start + n))

  def find(self, i: int) -> int:
    root = i
    while self._parent[root] != root:
      root = self._parent[root]
    while self._parent[i] != root:
      self._parent[i], i = root, self._parent[i]
    return root

  def union(self, a: Sequence[int], b: Sequence[int]) -> None:
    if len(a) != len(b):
      raise ValueError(f'Cannot merge {len(a)} channels with {len(b)}.')
    for i, j in zip(a, b):
      ri, rj = self.find(i), self.find(j)
      if ri != rj:
        self._parent[rj] = ri

  def add_gamma(self, ids: Sequence[int], bn_layer) -> None:
    for index, i in enumerate(ids):
      self._gamma_sources.setdefault(i, []).append((bn_layer, index))

  def add_kernel(self, ids: Sequence[int], layer, attr: str, axis: int) -> None:
    for index, i in enumerate(ids):
      self._kernel_sources.setdefault(i, []).append((layer, attr, axis, index))

  def _source_values(self, family: str) -> Dict[int, List[float]]:
    """Root id -> the values (|gamma| or kernel RMS) of the sources merged in it."""
    values: Dict[int, List[float]] = {}
    if family == 'gamma':
      cache = {}
      for i, sources in self._gamma_sources.items():
        for layer, index in sources:
          if id(layer) not in cache:
            cache[id(layer)] = np.abs(keras.ops.convert_to_numpy(layer.gamma))
          values.setdefault(self.find(i), []).append(float(cache[id(layer)][index]))
    elif family == 'group_lasso':
      cache = {}
      for i, sources in self._kernel_sources.items():
        for layer, attr, axis, index in sources:
          key = (id(layer), attr)
          if key not in cache:
            kernel = keras.ops.convert_to_numpy(getattr(layer, attr)).astype(np.float64)
            moved = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
            cache[key] = np.sqrt(np.mean(moved ** 2, axis=0))
          values.setdefault(self.find(i), []).append(float(cache[key][index]))
    else:
      raise ValueError(f'Unknown family {family!r}.')
    return values

  def alive(self, family: str, threshold: float) -> Tuple[Dict[int, bool], set]:
    """(root -> alive for regularized roots, set of regularized roots)."""
    values = self._source_values(family)
    alive = {root: any(v > threshold for v in vs) for root, vs in values.items()}
    return alive, set(values)

  def _count(self, ids: Sequence[int], alive: Dict[int, bool]) -> int:
    return sum(alive.get(self.find(i), True) for i in ids)

  def expected_alive_counts(self, family: str, threshold: float) -> Dict[str, int]:
    """Alive count of every exported layer that has a regularized channel."""
    alive, regularized = self.alive(family, threshold)
    counts = {}
    for key, ids in self.exported.items():
      if any(self.find(i) in regularized for i in ids):
        counts[key] = self._count(ids, alive)
    return counts

  def expected_cost(self, family: str, threshold: float, kind: str = 'flops') -> float:
    """FLOPs (or weights) of the network with only its alive channels."""
    alive, _ = self.alive(family, threshold)
    total = 0.0
    for term in self.terms:
      coeff = term.flop_coeff if kind == 'flops' else term.weight_coeff
      a_out = self._count(term.out_ids, alive)
      if term.depthwise:
        total += coeff * a_out
      else:
        total += coeff * self._count(term.in_ids, alive) * a_out
    return total

  def groups(self) -> Dict[int, List[int]]:
    """Root -> ids merged with it."""
    result: Dict[int, List[int]] = {}
    for i in range(len(self._parent)):
      result.setdefault(self.find(i), []).append(i)
    return result


# ---------------------------------------------------------------------------
# The builder.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Built:
  """A built model, its oracle and its weighted layers."""
  spec: ModelSpec
  model: keras.Model
  oracle: ChannelOracle
  batch_norms: List[Any]
  kernels: List[Tuple[Any, str, int]]  # (layer, attribute, output axis)

  @property
  def has_batch_norm(self) -> bool:
    return bool(self.batch_norms)

  def randomize_gammas(self, rng: np.random.Generator) -> None:
    """Random gammas: per BN a dead fraction; dead |g| < 0.4, alive |g| > 0.6."""
    for layer in self.batch_norms:
      n = layer.gamma.shape[0]
      dead = rng.random(n) < rng.choice([0.0, 0.3, 0.7, 1.0])
      magnitude = np.where(dead, rng.uniform(0.0, 0.4, n), rng.uniform(0.6, 2.0, n))
      sign = rng.choice([-1.0, 1.0], n)
      layer.gamma.assign((sign * magnitude).astype(np.float32))

  def randomize_kernels(self, rng: np.random.Generator) -> None:
    """Random kernels: per output channel RMS either < 0.01 (dead) or > 0.5."""
    for layer, attr, axis in self.kernels:
      variable = getattr(layer, attr)
      shape = tuple(variable.shape)
      n = shape[axis]
      dead = rng.random(n) < rng.choice([0.0, 0.3, 0.7, 1.0])
      values = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
      scale = np.where(dead, 1e-3, 1.0).reshape(
          [n if d == axis % len(shape) else 1 for d in range(len(shape))])
      variable.assign((values * scale).astype(np.float32))


def _spatial(tensor) -> int:
  return math.prod(tensor.shape[1:-1])


class _Builder:
  """Applies the blocks of a spec, recording the oracle."""

  def __init__(self, spec: ModelSpec):
    self.spec = spec
    self.oracle = ChannelOracle()
    self.batch_norms: List[Any] = []
    self.kernels: List[Tuple[Any, str, int]] = []

  # -- layers -------------------------------------------------------------

  def batch_norm(self, x, ids):
    layer = L.BatchNormalization()
    y = layer(x)
    self.batch_norms.append(layer)
    self.oracle.add_gamma(ids, layer)
    return y, ids

  def post(self, x, ids, p):
    if p.get('batch_norm'):
      x, ids = self.batch_norm(x, ids)
    if p.get('relu'):
      x = L.ReLU()(x)
    return x, ids

  def conv(self, x, ids, filters, kernel, stride=1, dilation=1, padding='same',
           use_bias=True):
    layer = L.Conv2D(filters, kernel, strides=stride, dilation_rate=dilation,
                     padding=padding, use_bias=use_bias)
    y = layer(x)
    out = self.oracle.fresh(filters)
    self.oracle.add_kernel(out, layer, 'kernel', 3)
    self.kernels.append((layer, 'kernel', 3))
    self.oracle.exported[layer.name] = out
    # 2 * S_out * kh * kw * C_in * C_out; weights kh * kw * C_in * C_out.
    self.oracle.terms.append(CostTerm(layer.name, 2 * _spatial(y) * kernel * kernel,
                                      kernel * kernel, ids, out))
    return y, out

  def depthwise_ids(self, ids, multiplier):
    if multiplier == 1:
      return list(ids)
    out = self.oracle.fresh(len(ids) * multiplier)
    for k, i in enumerate(out):
      self.oracle.union([i], [ids[k // multiplier]])
    return out

  def depthwise(self, x, ids, b):
    layer = L.DepthwiseConv2D(b['kernel'], strides=b['stride'], padding=b['padding'],
                              depth_multiplier=b['multiplier'],
                              dilation_rate=b['dilation'])
    y = layer(x)
    out = self.depthwise_ids(ids, b['multiplier'])
    self.oracle.exported[f'{layer.name}/depthwise'] = out
    # 2 * S_out * kh * kw * (C_in * m); weights kh * kw * C_in * m.
    k2 = b['kernel'] ** 2
    self.oracle.terms.append(CostTerm(layer.name, 2 * _spatial(y) * k2, k2, None, out))
    return self.post(y, out, b)

  def separable(self, x, ids, b):
    layer = L.SeparableConv2D(b['filters'], b['kernel'], strides=b['stride'],
                              padding=b['padding'], depth_multiplier=b['multiplier'],
                              dilation_rate=b['dilation'])
    y = layer(x)
    dw = self.depthwise_ids(ids, b['multiplier'])
    out = self.oracle.fresh(b['filters'])
    self.oracle.add_kernel(out, layer, 'pointwise_kernel', 3)
    self.kernels.append((layer, 'pointwise_kernel', 3))
    self.oracle.exported[f'{layer.name}/depthwise'] = dw
    self.oracle.exported[layer.name] = out
    k2 = b['kernel'] ** 2
    s = _spatial(y)
    self.oracle.terms.append(CostTerm(f'{layer.name}/depthwise', 2 * s * k2, k2, None, dw))
    # Pointwise: 2 * S_out * (C_in * m) * C_out; weights (C_in * m) * C_out.
    self.oracle.terms.append(CostTerm(layer.name, 2 * s, 1, dw, out))
    return self.post(y, out, b)

  def transpose(self, x, ids, b):
    layer = L.Conv2DTranspose(b['filters'], b['kernel'], strides=b['stride'],
                              padding=b['padding'])
    y = layer(x)
    out = self.oracle.fresh(b['filters'])
    # Kernel (kh, kw, C_out, C_in): output channels on axis 2.
    self.oracle.add_kernel(out, layer, 'kernel', 2)
    self.kernels.append((layer, 'kernel', 2))
    self.oracle.exported[layer.name] = out
    k2 = b['kernel'] ** 2
    # Costed on the *input* positions: 2 * S_in * kh * kw * C_in * C_out.
    self.oracle.terms.append(CostTerm(layer.name, 2 * _spatial(x) * k2, k2, ids, out))
    return self.post(y, out, b)

  def dense(self, x, ids, units):
    layer = L.Dense(units)
    y = layer(x)
    # Reshape -> MatMul -> Reshape on a rank > 2 input: the reshapes keep the
    # last axis, so they carry the channels; the MatMul has one row per
    # position.
    rows = _spatial(x) if len(x.shape) > 2 else 1
    in_ids, out = ids, self.oracle.fresh(units)
    result = out
    self.oracle.add_kernel(out, layer, 'kernel', 1)
    self.kernels.append((layer, 'kernel', 1))
    self.oracle.exported[layer.name] = out
    # 2 * rows * C_in * C_out for a MatMul; weights C_in * C_out.
    self.oracle.terms.append(CostTerm(layer.name, 2 * rows, 1, in_ids, out))
    return y, result

  # -- blocks ---------------------------------------------------------------

  def block(self, x, ids, b, outputs):
    kind = b['kind']
    if kind == 'conv':
      y, out = self.conv(x, ids, b['filters'], b['kernel'], b['stride'], b['dilation'],
                         b['padding'], b['use_bias'])
      return self.post(y, out, b)
    if kind == 'depthwise':
      return self.depthwise(x, ids, b)
    if kind == 'separable':
      return self.separable(x, ids, b)
    if kind == 'transpose':
      return self.transpose(x, ids, b)
    if kind == 'residual':
      y, y_ids = x, ids
      for conv in b['branch']:
        y, y_ids = self.conv(y, y_ids, conv['filters'], conv['kernel'])
        y, y_ids = self.post(y, y_ids, dict(batch_norm=conv['batch_norm'], relu=True))
      if b['projection'] is not None:
        s, s_ids = self.conv(x, ids, b['branch'][-1]['filters'], 1)
        s, s_ids = self.post(s, s_ids, b['projection'])
      else:
        s, s_ids = x, ids
      y = L.Add()([s, y])
      self.oracle.union(s_ids, y_ids)
      return self.post(y, s_ids, dict(relu=b['relu']))
    if kind == 'concat':
      tensors, all_ids = [], []
      for branch in b['branches']:
        if branch['identity']:
          tensors.append(x)
          all_ids.extend(ids)
        else:
          y, y_ids = self.conv(x, ids, branch['filters'], branch['kernel'])
          y, y_ids = self.post(y, y_ids, branch)
          tensors.append(y)
          all_ids.extend(y_ids)
      y = L.Concatenate()(tensors)
      return self.post(y, all_ids, b)
    if kind == 'gate':
      g, g_ids = self.conv(x, ids, x.shape[-1], 1)
      g, g_ids = self.post(g, g_ids, b)
      g = L.Activation('sigmoid')(g)
      self.oracle.union(ids, g_ids)
      return L.Multiply()([x, g]), ids
    if kind == 'pool':
      pool = L.MaxPooling2D if b['pool'] == 'max' else L.AveragePooling2D
      return pool(2, strides=b['stride'], padding=b['padding'])(x), ids
    if kind == 'passthrough':
      layer = b['layer']
      if layer == 'batch_norm':
        return self.batch_norm(x, ids)
      if layer == 'zero_pad':
        return L.ZeroPadding2D(1)(x), ids
      if layer == 'relu6':
        return L.ReLU(max_value=6.0)(x), ids
      if layer == 'leaky_relu':
        return L.LeakyReLU(negative_slope=0.1)(x), ids
      return L.Activation('sigmoid')(x), ids
    if kind == 'upsample':
      y = L.UpSampling2D(2, interpolation=b['interpolation'])(x)
      # Nearest: Keras 3 repeats with Reshape / Tile / Reshape, all keeping
      # the last axis: the channels are carried either way.
      return y, ids
    if kind == 'side_output':
      if b['dense']:
        y = L.GlobalAveragePooling2D()(x)
        y, _ = self.dense(y, ids, b['units'])
        outputs.append(y)
      else:
        outputs.append(x)
      return x, ids
    raise ValueError(f'Unknown block {b!r}.')

  def head(self, x, ids, head):
    kind = head['kind']
    if kind == 'none':
      return x
    if kind == 'gap_dense':
      x = L.GlobalAveragePooling2D()(x)
      x, ids = self.dense(x, ids, head['units'])
      if head['batch_norm']:
        x, ids = self.batch_norm(x, ids)
      if head['second_units']:
        x = L.ReLU()(x)
        x, ids = self.dense(x, ids, head['second_units'])
      return x
    if kind == 'flatten_dense':
      flat = L.Flatten()(x)
      # A Flatten of a 1x1 map keeps the channels; otherwise they end.
      flat_ids = ids if flat.shape[-1] == len(ids) else self.oracle.fresh(flat.shape[-1])
      x, ids = self.dense(flat, flat_ids, head['units'])
      if head['batch_norm']:
        x, ids = self.batch_norm(x, ids)
      return x
    if kind == 'reshape_dense':
      h, w, c = x.shape[1:]
      x = L.Reshape((h * w, c))(x)  # Keeps the last axis: carries the channels.
      x, _ = self.dense(x, ids, head['units'])
      return x
    raise ValueError(f'Unknown head {head!r}.')


def build(spec: ModelSpec) -> Built:
  """Builds the Keras model of `spec` and its oracle."""
  keras.utils.set_random_seed(spec.seed % (2**31))
  builder = _Builder(spec)
  inputs = keras.Input(spec.input_shape)
  x, ids = inputs, builder.oracle.fresh(spec.input_shape[-1])
  outputs: List[Any] = []
  for block in spec.blocks:
    x, ids = builder.block(x, ids, block, outputs)
    if len(ids) != x.shape[-1]:
      raise AssertionError(f'Oracle out of step after {block}: {len(ids)} ids, '
                           f'shape {x.shape}.')
  outputs.append(builder.head(x, ids, spec.head))
  model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])
  return Built(spec, model, builder.oracle, builder.batch_norms, builder.kernels)
