"""OpHandler for ops that keep their channels or not, depending on their axes.

Beyond the original library, which handled these op types as element-wise
(`GroupingOpHandler`). Some ops keep the channels of their input only for some
arguments:

* a reduction (`Mean`, `Sum`, `Max`, ...) over spatial axes, as in global
  pooling, keeps the channels; over the channel axis, as in the statistics of
  a Keras `LayerNormalization`, it does not (its output has size 1, or the
  size of another axis);
* `Tile` keeps the channels when its multiple on the last axis is 1 (as in
  the nearest-neighbour `UpSampling2D` of Keras 3), not otherwise;
* `ExpandDims` and `Squeeze` keep the channels when they do not insert or
  remove the last axis (as around the `Conv2D` of a Keras `Conv1D`:
  `ExpandDims -> Conv2D -> Squeeze`); the original handled `ExpandDims` as
  output-non-passthrough, which cut a Conv1D off from its input channels;
* `Reshape` keeps the channels when input and output have the same static
  last dimension: element `f` of the row-major buffer is then channel
  `f mod C` on both sides (as around the `MatMul` of a Keras `Dense` on a
  rank > 2 input: `Reshape -> MatMul -> Reshape`, a `Flatten` of a 1x1 map,
  or the reshapes of `UpSampling2D`); the original handled every `Reshape` as
  a leaf;
* `GatherV2` keeps the channels when it takes rows of an activation (any
  axis but the last, or a permutation of the last that keeps its size, passed
  through untracked as in the original); a lookup in a table (a variable or
  constant: a Keras `Embedding`, a position embedding) starts new channels,
  and so does a gather selecting another number of channels. The original
  grouped every input of a gather, the token indices of an `Embedding` too,
  so a text model waited forever.

Grouped with its input although the sizes differ, such an op waited forever
for a neighbour of another size, until the manager's iteration limit (a
LayerNormalization took ~20 s to fail). `ChannelAxisOpHandler` decides per op
(`handler_for_op`): it groups like `GroupingOpHandler([0])` (only input 0
carries channels; the axes or multiples are a shape argument) when the op
keeps its channels, and like `LeafOpHandler` (channels end here; what follows
is a new group) when it does not or when the arguments are not constants.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.framework import op_handler

REDUCTION_OP_TYPES = ('Mean', 'Sum', 'Max', 'Min', 'Prod', 'All', 'Any',
                      'EuclideanNorm')


def _producer(tensor: tf.Tensor, through: Tuple[str, ...] = ('Identity',)
              ) -> tf.Operation:
  """The op producing `tensor`, looking through ops of the types `through`."""
  op = tensor.op
  while op.type in through and op.inputs:
    op = op.inputs[0].op
  return op


def constant_value(tensor: tf.Tensor) -> Optional[np.ndarray]:
  """The value of `tensor` if a `Const` op produces it, else None."""
  op = _producer(tensor)
  if op.type != 'Const':
    return None
  return tf.make_ndarray(op.get_attr('value'))


def reduction_keeps_channels(op: tf.Operation) -> bool:
  """True if the reduction `op` does not reduce the last (channel) axis.

  False when the input rank or the reduction axes are not statically known.
  """
  rank = op.inputs[0].shape.rank
  if not rank or len(op.inputs) < 2:
    return False
  axes = constant_value(op.inputs[1])
  if axes is None:
    return False
  axes = {int(axis) % rank for axis in np.ravel(axes)}
  return (rank - 1) not in axes


def tile_keeps_channels(op: tf.Operation) -> bool:
  """True if `Tile` repeats its input once along the last (channel) axis."""
  multiples = constant_value(op.inputs[1]) if len(op.inputs) > 1 else None
  if multiples is not None:
    multiples = np.ravel(multiples)
    return multiples.size > 0 and int(multiples[-1]) == 1
  # Multiples computed at run time (e.g. Keras' repeat): equal static channel
  # counts of input and output mean a multiple of 1 on the last axis.
  in_shape, out_shape = op.inputs[0].shape, op.outputs[0].shape
  if not in_shape.rank or in_shape.rank != out_shape.rank:
    return False
  in_channels, out_channels = in_shape[-1], out_shape[-1]
  return in_channels is not None and in_channels == out_channels


def expand_dims_keeps_channels(op: tf.Operation) -> bool:
  """True if `ExpandDims` does not insert the new axis last.

  False when the axis is not a constant or the input rank is unknown.
  """
  rank = op.inputs[0].shape.rank
  axis = constant_value(op.inputs[1]) if len(op.inputs) > 1 else None
  if rank is None or rank == 0 or axis is None:
    return False
  axis = int(np.ravel(axis)[0]) % (rank + 1)
  return axis != rank


def squeeze_keeps_channels(op: tf.Operation) -> bool:
  """True if `Squeeze` does not remove the last axis.

  With no `squeeze_dims` every size-1 axis is removed, the last one too when
  its static size is 1 (or unknown).
  """
  shape = op.inputs[0].shape
  if shape.rank is None or shape.rank == 0:
    return False
  rank = shape.rank
  try:
    dims = list(op.get_attr('squeeze_dims'))
  except ValueError:
    dims = []
  if dims:
    return (rank - 1) not in {int(d) % rank for d in dims}
  return shape[-1] is not None and shape[-1] != 1


def reshape_keeps_channels(op: tf.Operation) -> bool:
  """True if input and output of `Reshape` have the same static last dim.

  Then every element keeps its channel index (`f mod C` in the row-major
  buffer), however the other axes are merged or split.
  """
  in_shape, out_shape = op.inputs[0].shape, op.outputs[0].shape
  if not in_shape.rank or not out_shape.rank:
    return False
  in_channels, out_channels = in_shape[-1], out_shape[-1]
  return in_channels is not None and in_channels == out_channels


# Ops whose output is a stored table rather than an activation.
_TABLE_OP_TYPES = ('ReadVariableOp', 'VarHandleOp', 'VariableV2', 'Variable',
                   'Const')


def _is_table(tensor: tf.Tensor) -> bool:
  """True if `tensor` is a variable or constant, read through identities."""
  return _producer(tensor, ('Identity', 'Cast')).type in _TABLE_OP_TYPES


def gather_keeps_channels(op: tf.Operation) -> bool:
  """True if `GatherV2` takes rows of an activation and keeps its last dim.

  False for a lookup in a table (embeddings), when the static last dims of
  params and output differ (a selection of channels) or are unknown.
  """
  params = op.inputs[0]
  if _is_table(params):
    return False
  in_shape, out_shape = params.shape, op.outputs[0].shape
  if not in_shape.rank or not out_shape.rank:
    return False
  in_channels, out_channels = in_shape[-1], out_shape[-1]
  return in_channels is not None and in_channels == out_channels


class ChannelAxisOpHandler(op_handler.OpHandler):
  """Groups an op with its input 0 if it keeps its channels, else ends the chain.

  Args:
    keeps_channels: Predicate on the op, e.g. `reduction_keeps_channels` or
      `tile_keeps_channels`.
  """

  def __init__(self, keeps_channels: Callable[[tf.Operation], bool]):
    self._keeps_channels = keeps_channels
    self._grouping = grouping_op_handler.GroupingOpHandler([0])
    self._leaf = leaf_op_handler.LeafOpHandler()

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """The handler for this particular op (the manager asks it per op)."""
    return self._grouping if self._keeps_channels(op) else self._leaf

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    # As a type; per op, the manager asks `handler_for_op`.
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups `op` with the handler chosen for it by `handler_for_op`."""
    self.handler_for_op(op).assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')
