"""Mask planning: the final alive mask of every width layer.

Channels that must live or die together (the inputs of an element-wise merge)
are grouped with a union-find; a group is kept when any of its channels is
alive (OR), as MorphNet's grouping does.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from morph_net.keras_integration.shrink import channels as channels_lib
from morph_net.keras_integration.shrink import graph


def plan_masks(functional, nodes, kinds, masks) -> Dict[int, np.ndarray]:
  """Final alive mask of every width layer (id(layer) -> mask), with OR grouping."""
  uf = channels_lib.UnionFind()
  ids: Dict[int, np.ndarray] = {}
  for tensor in functional.inputs:
    ids[id(tensor)] = uf.fresh(np.ones(graph.last_dim(tensor) or 0, dtype=bool))
  layer_ids: Dict[int, np.ndarray] = {}
  for node in nodes:
    layer = node.operation
    kind = kinds[id(layer)]
    inputs = [ids[id(t)] for t in node.arguments.keras_tensors]
    outputs = node.outputs
    width = graph.last_dim(outputs[0]) or 0
    out = None
    if kind == graph.WIDTH:
      if id(layer) not in layer_ids:
        alive = masks.get(layer.name)
        layer_ids[id(layer)] = uf.fresh(
            np.ones(width, dtype=bool) if alive is None else alive)
      out = layer_ids[id(layer)]
    elif kind == graph.DEPTHWISE:
      out = np.repeat(inputs[0], layer.depth_multiplier)
    elif kind == graph.FLATTEN:
      spatial = channels_lib.spatial_positions(node.arguments.keras_tensors[0])
      if spatial is not None:
        out = np.tile(inputs[0], spatial)
    elif kind == graph.CONCAT:
      out = np.concatenate(inputs)
    elif kind == graph.MERGE:
      main = [x for x in inputs if len(x) == width]
      for other in main[1:]:
        for a, b in zip(main[0], other):
          uf.union(int(a), int(b))
      out = main[0] if main else None
    elif kind == graph.FOLLOW and inputs and len(inputs[0]) == width:
      out = inputs[0]
    if out is None or len(out) != width or len(outputs) > 1:
      for tensor in outputs:
        ids[id(tensor)] = uf.fresh(np.ones(graph.last_dim(tensor) or 0, dtype=bool))
    else:
      ids[id(outputs[0])] = out
  return {key: uf.alive(value) for key, value in layer_ids.items()}

