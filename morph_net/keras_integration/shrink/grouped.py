"""Grouped convolutions (`Conv1D/2D/3D(groups=g)`, g > 1).

Group k of a grouped convolution maps input channels `k*a .. k*a+a-1`
(a = C_in / g) to output channels `k*b .. k*b+b-1` (b = C_out / g). Channels
at the same position within each group are tied: input channel `k*a + i` for
all k, output channel `k*b + i` for all k. Shrinking keeps the same local
positions in every group, so `groups` stays g and both widths stay multiples of
g. A mask of the layer itself must be consistent across its groups (else a
ValueError); the input side is grouped with the layers that produce it (OR, as
for the inputs of an Add).

`groups == C_in` is a depthwise convolution written as a grouped one: output
channels `k*b .. k*b+b-1` belong to input channel k, so they live or die with
it (as DepthwiseConv2D with depth_multiplier b); `groups` becomes the new input
width.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from morph_net.keras_integration.shrink import channels as channels_lib


def groups_of(layer) -> int:
  return int(getattr(layer, 'groups', 1) or 1)


def is_depthwise_like(layer, in_width: Optional[int]) -> bool:
  """groups == C_in (one input channel per group)."""
  return in_width is not None and groups_of(layer) == int(in_width)


def tie_within_groups(uf: channels_lib.UnionFind, ids: np.ndarray, groups: int) -> None:
  """Unions ids[k*n + i] over k (n = len(ids) / groups)."""
  n = len(ids) // groups
  for k in range(1, groups):
    for i in range(n):
      uf.union(int(ids[i]), int(ids[k * n + i]))


def check_mask(layer, mask: np.ndarray, origin: str) -> None:
  """Raises if `mask` (of the layer's outputs) differs across its groups."""
  g = groups_of(layer)
  per_group = mask.reshape(g, -1)
  if not (per_group == per_group[0]).all():
    bad = [k for k in range(g) if not np.array_equal(per_group[k], per_group[0])]
    raise ValueError(
        f'The mask of grouped convolution {layer.name!r} (groups={g}) in the '
        f'{origin} keeps different positions in different groups (groups {bad[:5]} '
        f'differ from group 0): output channel k*{mask.size // g}+i must be kept or '
        'removed for every group k at once, so that groups stays '
        f'{g}. Received: mask={mask.astype(int).tolist()}.')


def check_width(layer, width: int, what: str, origin: str) -> None:
  g = groups_of(layer)
  if width % g:
    raise ValueError(
        f'Grouped convolution {layer.name!r} (groups={g}) would get {what} width '
        f'{width}, which is not a multiple of groups={g}. Give it (and the layers '
        f'feeding it) widths that are multiples of {g} in the {origin}.')


def new_config(layer, config: Dict, in_width: int, out_width: int,
               depthwise_like: bool) -> Dict:
  config = dict(config)
  if depthwise_like:
    multiplier = int(layer.filters) // groups_of(layer)
    config['groups'] = int(in_width)
    config['filters'] = int(in_width) * multiplier
  else:
    config['filters'] = int(out_width)
  return config


def slice_kernel(layer, value: np.ndarray, in_mask, out_mask) -> np.ndarray:
  """Kernel (*k, C_in/g, C_out) of the surviving channels."""
  g = groups_of(layer)
  if isinstance(in_mask, np.ndarray) and value.shape[-2] != 1:
    local = in_mask.reshape(g, -1)[0]
    value = np.compress(local, value, axis=-2)
  if isinstance(out_mask, np.ndarray) and value.shape[-1] == len(out_mask):
    value = np.compress(out_mask, value, axis=-1)
  return value
