"""Built-in rebuild rules for the custom layers of `keras.applications`.

ConvNeXt scales every residual branch by a `LayerScale`: a per-channel weight
`gamma` of `projection_dim` channels, fixed in its config, so the layer cannot
follow a change of the residual stream's width by itself. It is registered here
like a user's custom layer (see `custom`), when `shrink` is imported: its new
width is its input's, and `gamma` keeps the surviving channels.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from morph_net.keras_integration.shrink import custom


def layer_scale_class() -> Optional[type]:
  """keras.applications' ConvNeXt `LayerScale` class, or None if absent."""
  try:
    from keras.src.applications import convnext  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return getattr(convnext, 'LayerScale', None)


def rebuild_layer_scale(layer, context: custom.RebuildContext
                        ) -> Tuple[Any, Sequence[custom.Channels]]:
  """A `LayerScale` of its new input's width; its output has its input's channels."""
  config = {**layer.get_config(), 'projection_dim': context.input_width()}
  return type(layer).from_config(config), [context.input_channels[0]]


def transfer_layer_scale(old_layer, new_layer,
                         context: custom.RebuildContext) -> None:
  """Copies `gamma` of the surviving channels (mask structures)."""
  keep = np.asarray(context.input_channels[0], bool)
  new_layer.gamma.assign(np.asarray(old_layer.gamma)[keep])


def register() -> None:
  """Registers the rules above (a no-op for classes this Keras lacks)."""
  cls = layer_scale_class()
  if cls is not None:
    custom.register_layer_rebuilder(cls, rebuild_layer_scale,
                                    transfer_fn=transfer_layer_scale,
                                    output_follows_input=True)
