"""Builds the Keras model that a learned structure describes.

`shrink_model(model, structure)` rebuilds a functional or Sequential model layer
by layer, keeping its topology and layer names, with each *width layer* set to
the width the structure gives it:

  Conv1D/2D/3D, Conv1D/2D/3DTranspose, SeparableConv1D/2D -> `filters`
  (for a separable conv: its pointwise part), Dense -> `units`.

Every other layer is rebuilt from its config and adapts to its input:
BatchNormalization, activations, pooling, padding, dropout, ... keep their
input width; DepthwiseConv1D/2D (and the depthwise part of a separable conv)
outputs `C_in * depth_multiplier` channels: its depth multiplier is kept and its
width follows its input, so a `<layer>/depthwise` key of a structure is
accepted and ignored; Concatenate (channel axis) sums its inputs; Flatten
(and a Reshape to a flat vector) multiplies by the number of spatial positions;
a Reshape keeping the channel axis (squeeze-and-excitation) gets the new width
in its `target_shape`; a channel split (`keras.ops.split`) slices its input;
a grouped convolution keeps the same positions in every group (`grouped`);
raw `keras.ops` calls on symbolic tensors (`Operation` nodes) are rebuilt as
fresh operations (`operations`); nested functional / Sequential models are
rebuilt recursively; custom layer classes use the rebuild function registered
with `register_layer_rebuilder` (`custom`). Layers whose config fixes a shape
(Permute, other Reshapes, unknown layers holding weights) must see an
unchanged input width, else a ValueError names them. Width layers not
in the structure keep their width, and so do the width layers that produce the
model's outputs (e.g. the classifier: `output_width_layers`).

Structures (see `structure_io`): a `{layer name: alive count}` dict or JSON
file (as exported by `MorphNetCallback`), a `{layer name: bool mask}` dict, or
a trained network regularizer built with `from_keras_model`, whose per-channel
alive masks are read (`channel_masks`).

Topology morphing (the paper's rules; the original `configurable_ops` rules for
vanished layers): a width layer given width 0 vanishes, and so does everything
fed only by it. A vanished input of a residual `Add` is dropped (`Add` of
[skip, dead branch] -> skip; the `Add` layer disappears when one input is
left); a vanished input of a channel `Concatenate` is dropped likewise. A
vanished tensor that reaches any other layer with several inputs, or a model
output, is an error naming the layer(s) set to 0: in a plain chain width 0
would disconnect the network.

Masks: with per-channel masks the channels of inputs of an element-wise merge
(`Add`, `Multiply`, ... which must have equal widths) are unified: a channel is
kept when any of the merged tensors keeps it (OR), as MorphNet's grouping
does. With counts, merged widths must already be equal.

Weight transfer (`transfer_weights=True`, masks needed): each kept layer gets
the old weights of its surviving channels: kernels are sliced along their
output axis by the layer's own mask and along their input axis by the mask of
its input (masks are propagated through the graph: per-channel layers keep
them, Concatenate concatenates them, depthwise repeats each input channel
`depth_multiplier` times, Flatten tiles them over the spatial positions);
biases and BatchNormalization parameters / statistics are sliced by the output
mask. If the removed channels contribute exactly nothing (e.g. BN gamma and
beta 0 followed by ReLU), the reduced model computes the same outputs as the
original in inference mode.

Modules: `graph` (graph walk, layer kinds), `structure` (structure resolution
and checks), `planning` (mask planning), `builder` (the rebuild),
`transfer` (weight transfer), `channels` (channel descriptors), `custom`
(rebuild rules for custom layers), `applications` (the built-in rules for
keras.applications' own layers: ConvNeXt's `LayerScale`).
"""


from __future__ import annotations

from typing import List, Optional

import keras

from morph_net.keras_integration.shrink import applications
from morph_net.keras_integration.shrink import graph
from morph_net.keras_integration.shrink.builder import RebuildResult
from morph_net.keras_integration.shrink.builder import rebuild
from morph_net.keras_integration.shrink.graph import DEPTHWISE_LAYERS
from morph_net.keras_integration.shrink.graph import WIDTH_LAYERS
from morph_net.keras_integration.shrink.structure import StructureLike
from morph_net.keras_integration.shrink.structure import channel_masks
from morph_net.keras_integration.shrink.custom import RebuildContext
from morph_net.keras_integration.shrink.custom import register_layer_rebuilder
from morph_net.keras_integration.shrink.custom import unregister_layer_rebuilder

applications.register()

__all__ = ['DEPTHWISE_LAYERS', 'RebuildContext', 'RebuildResult', 'StructureLike',
           'WIDTH_LAYERS', 'channel_masks', 'output_width_layers', 'rebuild',
           'register_layer_rebuilder', 'shrink_model', 'unregister_layer_rebuilder']


def shrink_model(model: keras.Model, structure: StructureLike, *,
                 transfer_weights: bool = False,
                 name: Optional[str] = None) -> keras.Model:
  """Rebuilds `model` with the widths of `structure` (see the module doc).

  Example:
    reduced = shrink_model(model, 'train_dir/learned_structure/alive_1000')
    pruned = shrink_model(model, regularizer, transfer_weights=True)

  Args:
    model: a functional or Sequential Keras model (channels-last).
    structure: a `{layer name: alive count}` or `{layer name: bool mask}`
      dict, the path of such a JSON file, or a network regularizer built with
      `from_keras_model` on `model` (its alive masks are used). Width layers
      absent from it keep their width; counts may also exceed the original
      widths (this is how `expand` widens a model).
    transfer_weights: copy the surviving channels' weights into the new model
      and fold the constant outputs of removed channels (a dead channel's BN
      beta through its activation, a removed branch's constant) into the
      layers that consume them (`constant_folding.fold_removed_constants`,
      border='mean': exact for Dense, 1x1 and 'valid' convolutions, exact on
      average over positions for 'same' padding). Needs masks (a regularizer
      or a mask dict). Defaults to False: the new model has freshly
      initialized weights.
    name: name of the new model. Defaults to `model.name`.

  Returns:
    A new, built Keras model of the same class (functional or Sequential), with
    the same layer names except for removed layers.

  Raises:
    TypeError: `model` is not a functional/Sequential Keras model, or the
      structure has a wrong type.
    ValueError: the structure names a layer that is not in the model or whose
      width cannot be set, a mask has the wrong length, a layer set to width 0
      cannot be removed (plain chain), widths of an element-wise merge differ,
      a layer cannot adapt to its new input width, or `transfer_weights` is
      requested without masks.
    OSError: a structure file cannot be read.
  """
  return rebuild(model, structure, transfer_weights=transfer_weights, name=name).model


def output_width_layers(model: keras.Model) -> List[str]:
  """Names of the width layers whose channels are the model's output channels.

  Their width is the model's output size (e.g. the classes of a classifier), so
  `shrink_model` keeps it (a structure entry for them is ignored with a
  warning; GroupLasso regularizers export the classifier too) and `expand`
  does not scale it. Found by walking back from the outputs through layers
  that keep, merge or concatenate channels.
  """
  functional = graph.functional_of(model)
  return sorted(graph.output_width_layers(functional, graph.layer_kinds(graph.nodes(functional))))
