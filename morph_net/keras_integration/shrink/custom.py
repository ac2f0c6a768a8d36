"""Rebuild functions for custom layers (composite layers holding convs and BNs).

A custom layer class that holds width layers (e.g. an `MBConvBlock` with its
own Conv2D / BatchNormalization sublayers) cannot be rebuilt from its config
once its input width or an inner layer's width changes: `shrink_model` does not
know how its config maps to its sublayers. Register a rebuild function for the
class; it is checked before the built-in rules:

  def rebuild_block(layer, context):
    # context.input_channels: per input, a bool mask over the old channels
    #   (mask structures) or the new width (count structures).
    # context.entry('block_expand'): the structure entry (mask or count) of an
    #   inner layer, or None when the structure does not name it.
    expand = context.width('block_expand', layer.expand_filters)
    new_layer = Block.from_config({**layer.get_config(), 'expand_filters': expand,
                                   'filters': context.input_width()})
    return new_layer, [context.input_channels[0]]   # output channels

  shrink.register_layer_rebuilder(Block, rebuild_block, output_follows_input=True,
                                  transfer_fn=transfer_block)

`rebuild_fn(layer, context)` returns the new (unbuilt) layer and the
descriptors of its outputs (masks in mask mode, widths otherwise).
`transfer_fn(old_layer, new_layer, context)` (optional; needed for
`transfer_weights=True` once the widths change) copies the surviving weights
after the new layer is built; `context.output_channels` is then set.
`output_follows_input=True` declares that the layer's (single) output has the
channels of its first input (a residual block), so the channels before and
after it form one group; otherwise its output channels are independent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Channels = Union[np.ndarray, int]


@dataclasses.dataclass
class RebuildContext:
  """What a rebuild function knows about the layer being rebuilt.

  Attributes:
    layer: the old layer.
    input_channels: per input tensor, a bool mask over its original channels
      (mask structures) or its new width (count structures).
    mask_mode: whether the structure gives masks.
    entries: structure entries (mask or count) by layer name.
    output_channels: the output descriptors the rebuild function returned
      (set before `transfer_fn` runs).
  """
  layer: Any
  input_channels: List[Channels]
  mask_mode: bool
  entries: Mapping[str, Channels]
  output_channels: Optional[List[Channels]] = None

  def entry(self, name: str) -> Optional[Channels]:
    """The structure entry of (inner) layer `name`, or None."""
    return self.entries.get(name)

  def width(self, name: str, default: int) -> int:
    """The new width of (inner) layer `name`: its entry's count, else `default`."""
    value = self.entries.get(name)
    if value is None:
      return int(default)
    return int(np.count_nonzero(value)) if isinstance(value, np.ndarray) else int(value)

  def input_width(self, index: int = 0) -> int:
    """The new width of input `index`."""
    value = self.input_channels[index]
    return int(np.count_nonzero(value)) if isinstance(value, np.ndarray) else int(value)


RebuildFn = Callable[[Any, RebuildContext], Tuple[Any, Sequence[Channels]]]
TransferFn = Callable[[Any, Any, RebuildContext], None]


@dataclasses.dataclass(frozen=True)
class LayerRebuilder:
  """A registered rebuild rule (see the module doc)."""
  rebuild_fn: RebuildFn
  transfer_fn: Optional[TransferFn] = None
  output_follows_input: bool = False


_REBUILDERS: Dict[type, LayerRebuilder] = {}


def register_layer_rebuilder(layer_class: type, rebuild_fn: RebuildFn, *,
                             transfer_fn: Optional[TransferFn] = None,
                             output_follows_input: bool = False) -> None:
  """Registers how `shrink_model` rebuilds layers of `layer_class` (and subclasses).

  Args:
    layer_class: a Keras Layer subclass.
    rebuild_fn: `rebuild_fn(layer, context) -> (new_layer, output_channels)`.
    transfer_fn: `transfer_fn(old_layer, new_layer, context)`, copying the
      surviving weights into the built new layer. Defaults to None: weights are
      copied unchanged when every width is unchanged, else
      `transfer_weights=True` is an error.
    output_follows_input: the layer's output has its first input's channels.

  Raises:
    TypeError: `layer_class` is not a class or a function is not callable.
  """
  if not isinstance(layer_class, type):
    raise TypeError('register_layer_rebuilder needs a layer class. Received: '
                    f'layer_class={layer_class!r}.')
  for name, fn in (('rebuild_fn', rebuild_fn), ('transfer_fn', transfer_fn)):
    if fn is not None and not callable(fn):
      raise TypeError(f'{name} must be callable. Received: {name}={fn!r}.')
  if rebuild_fn is None:
    raise TypeError('rebuild_fn must be callable. Received: rebuild_fn=None.')
  _REBUILDERS[layer_class] = LayerRebuilder(rebuild_fn, transfer_fn,
                                            bool(output_follows_input))


def unregister_layer_rebuilder(layer_class: type) -> None:
  """Removes the rebuild function of `layer_class` (no error if none)."""
  _REBUILDERS.pop(layer_class, None)


def rebuilder_of(layer) -> Optional[LayerRebuilder]:
  """The rebuilder registered for `layer`'s class or its nearest base class."""
  if not _REBUILDERS:
    return None
  for cls in type(layer).__mro__:
    if cls in _REBUILDERS:
      return _REBUILDERS[cls]
  return None


def inner_layers(layer) -> List[Any]:
  """The sublayers of a (custom) layer, recursively, excluding itself."""
  flatten = getattr(layer, '_flatten_layers', None)
  if flatten is None:
    return []
  return list(flatten(include_self=False, recursive=True))


def hook_hint(layer) -> str:
  """How to register a rebuild function for `layer`'s class (for errors)."""
  cls = type(layer).__name__
  return (f'Register a rebuild function for its class: morph_net.keras_integration.'
          f'shrink.register_layer_rebuilder({cls}, rebuild_fn, transfer_fn=...) '
          '(see docs/apply_structure.md, "Custom layers").')
