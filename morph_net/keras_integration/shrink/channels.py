"""Channel descriptors: a bool mask over a tensor's original channels, or a width.

In mask mode (the structure gives per-channel masks) every tensor of the old
graph carries a mask saying which of its original channels survive; in count
mode it carries its new width. `UnionFind` groups channels that must live or
die together (inputs of an element-wise merge).
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

import numpy as np

# A channel descriptor: a bool mask over the original channels, or a width.
Channels = Union[np.ndarray, int]


class UnionFind:
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


def spatial_positions(tensor) -> Optional[int]:
  dims = tuple(tensor.shape)[1:-1]
  if any(d is None for d in dims):
    return None
  return int(math.prod(dims))


# ----------------------------------------------------------------------------
# Channel descriptors: masks (bool arrays over the original channels) or widths.


def width_of(channels: Channels) -> int:
  if isinstance(channels, np.ndarray):
    return int(np.count_nonzero(channels))
  return int(channels)


def unchanged(channels: Channels, old_width: Optional[int]) -> bool:
  if isinstance(channels, np.ndarray):
    return len(channels) == old_width and bool(channels.all())
  return channels == old_width


def full(width: Optional[int], mask_mode: bool) -> Channels:
  width = width or 0
  return np.ones(width, dtype=bool) if mask_mode else width


def empty(width: Optional[int], mask_mode: bool) -> Channels:
  return np.zeros(width or 0, dtype=bool) if mask_mode else 0


def describe(channels: Channels) -> str:
  return str(width_of(channels))

