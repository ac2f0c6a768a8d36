"""Mask planning: the final alive mask of every width layer.

Channels that must live or die together (the inputs of an element-wise merge,
the tied positions of a grouped convolution) are grouped with a union-find; a
group is kept when any of its channels is alive (OR), as MorphNet's grouping
does. Nested models are walked recursively.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import numpy as np

from morph_net.keras_integration.shrink import channels as channels_lib
from morph_net.keras_integration.shrink import custom
from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink import grouped


def plan_masks(functional, kinds: Mapping[int, str], masks: Mapping[str, Any],
               origin: str = 'structure') -> Dict[int, np.ndarray]:
  """Final alive mask of every width layer (id(layer) -> mask), with OR grouping."""
  planner = _Planner(kinds, masks, origin)
  inputs = [planner.uf.fresh(np.ones(graph.last_dim(t) or 0, dtype=bool))
            for t in functional.inputs]
  planner.plan(functional, inputs)
  return {key: planner.uf.alive(value) for key, value in planner.layer_ids.items()}


class _Planner:

  def __init__(self, kinds, masks, origin):
    self.uf = channels_lib.UnionFind()
    self.kinds = kinds
    self.masks = masks
    self.origin = origin
    self.layer_ids: Dict[int, np.ndarray] = {}
    self._nested_outputs: Dict[int, List[np.ndarray]] = {}

  def _fresh(self, tensor) -> np.ndarray:
    return self.uf.fresh(np.ones(graph.last_dim(tensor) or 0, dtype=bool))

  def _own_ids(self, layer, width: int) -> np.ndarray:
    if id(layer) not in self.layer_ids:
      alive = self.masks.get(layer.name)
      self.layer_ids[id(layer)] = self.uf.fresh(
          np.ones(width, dtype=bool) if alive is None else np.asarray(alive, dtype=bool))
    return self.layer_ids[id(layer)]

  def plan(self, functional, input_ids: List[np.ndarray]) -> List[np.ndarray]:
    ids: Dict[int, np.ndarray] = {}
    for tensor, value in zip(functional.inputs, input_ids):
      ids[id(tensor)] = value
    for node in graph.nodes(functional):
      inputs = [ids[id(t)] for t in node.arguments.keras_tensors]
      outs = self._node(node, inputs)
      for tensor, out in zip(node.outputs, outs):
        width = graph.last_dim(tensor) or 0
        ids[id(tensor)] = out if out is not None and len(out) == width else self._fresh(tensor)
    return [ids[id(t)] for t in functional.outputs]

  def _node(self, node, inputs) -> List[Any]:
    layer = node.operation
    kind = self.kinds[id(layer)]
    outputs = node.outputs
    width = graph.last_dim(outputs[0]) or 0
    if kind == graph.WIDTH:
      return [self._own_ids(layer, width)]
    if kind == graph.GROUPED:
      own = self._own_ids(layer, width)
      g = grouped.groups_of(layer)
      if grouped.is_depthwise_like(layer, len(inputs[0])):
        tied = np.repeat(inputs[0], width // g)
        for a, b in zip(own, tied):
          self.uf.union(int(a), int(b))
        return [own]
      grouped.tie_within_groups(self.uf, inputs[0], g)
      grouped.tie_within_groups(self.uf, own, g)
      return [own]
    if kind == graph.DEPTHWISE:
      return [np.repeat(inputs[0], layer.depth_multiplier)]
    if kind == graph.FLATTEN:
      spatial = channels_lib.spatial_positions(node.arguments.keras_tensors[0])
      return [None if spatial is None else np.tile(inputs[0], spatial)]
    if kind == graph.CONCAT:
      return [np.concatenate(inputs)]
    if kind == graph.SPLIT:
      bounds = np.cumsum([graph.last_dim(t) for t in outputs])[:-1]
      return np.split(inputs[0], bounds)
    if kind == graph.MERGE:
      main = [x for x in inputs if len(x) == width]
      for other in main[1:]:
        for a, b in zip(main[0], other):
          self.uf.union(int(a), int(b))
      return [main[0] if main else None]
    if kind in (graph.FOLLOW, graph.RESHAPE):
      return [inputs[0] if inputs and len(inputs[0]) == width else None]
    if kind == graph.NESTED:
      if id(layer) in self._nested_outputs:
        return self._nested_outputs[id(layer)]
      outs = self.plan(graph.functional_of(layer), inputs)
      self._nested_outputs[id(layer)] = outs
      return outs
    if kind == graph.CUSTOM:
      rebuilder = custom.rebuilder_of(layer)
      if rebuilder.output_follows_input and len(outputs) == 1 and inputs:
        return [inputs[0]]
    return [None] * len(outputs)
