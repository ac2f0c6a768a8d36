"""Default op handler dictionaries (op type -> OpHandler).

The dictionaries are `OpHandlerDict`s: drop-ins for the original's
`collections.defaultdict(GroupingOpHandler, ...)` that also register the op
types known to preserve channels explicitly, so that a genuinely unknown op
type is handled by the dict's documented policy (treated as channel-preserving
with a warning, or rejected). Each call returns a fresh dict with fresh
handler instances, which callers may extend with `register`.
"""

from __future__ import annotations

from morph_net.framework import channel_axis_op_handler
from morph_net.framework import concat_op_handler
from morph_net.framework import depthwise_convolution_op_handler
from morph_net.framework import function_call_op_handler
from morph_net.framework import grouped_convolution_op_handler
from morph_net.framework import grouping_op_handler
from morph_net.framework import leaf_op_handler
from morph_net.framework import op_handler_registry
from morph_net.framework import output_non_passthrough_op_handler
from morph_net.framework import split_op_handler
from morph_net.framework import strided_slice_op_handler

RESIZE_OP_NAMES = [
    'ResizeArea', 'ResizeBicubic', 'ResizeBilinear', 'ResizeNearestNeighbor'
]


def _get_base_op_hander_dicts() -> op_handler_registry.OpHandlerDict:
  """Returns the handlers shared by every regularizer (name kept from the original).

  Returns:
    A new `OpHandlerDict` whose unknown op types get a `GroupingOpHandler`.
  """
  handlers = op_handler_registry.OpHandlerDict()
  for op_type in op_handler_registry.CHANNEL_PRESERVING_OP_TYPES:
    handlers[op_type] = grouping_op_handler.GroupingOpHandler()
  handlers['ConcatV2'] = concat_op_handler.ConcatOpHandler()
  for op_type in ('DepthToSpace', 'Transpose'):
    handlers[op_type] = output_non_passthrough_op_handler.OutputNonPassthroughOpHandler()
  handlers['DepthwiseConv2dNative'] = (
      depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler())
  for op_type in ('RandomUniform', 'Shape', 'SpaceToDepth',
                  'TensorArrayGatherV3'):
    handlers[op_type] = leaf_op_handler.LeafOpHandler()
  for op_type in op_handler_registry.LEAF_OP_TYPES:
    handlers[op_type] = leaf_op_handler.LeafOpHandler()
  # Beyond the original (see the modules): reductions, Tile, ExpandDims,
  # Squeeze, Reshape and GatherV2 keep their channels only for some axes (a
  # Conv1D is `ExpandDims -> Conv2D -> Squeeze`, a Dense on a rank > 2 input
  # `Reshape -> MatMul -> Reshape`); a channel split is the mirror of a
  # concat; Pack stacks along a new axis; a function call hides its ops; a
  # StridedSlice that crops only other axes (Cropping2D) keeps the channels
  # (the original handled every StridedSlice as a leaf).
  for op_type in channel_axis_op_handler.REDUCTION_OP_TYPES:
    handlers[op_type] = channel_axis_op_handler.ChannelAxisOpHandler(
        channel_axis_op_handler.reduction_keeps_channels)
  handlers['Tile'] = channel_axis_op_handler.ChannelAxisOpHandler(
      channel_axis_op_handler.tile_keeps_channels)
  handlers['ExpandDims'] = channel_axis_op_handler.ChannelAxisOpHandler(
      channel_axis_op_handler.expand_dims_keeps_channels)
  handlers['Squeeze'] = channel_axis_op_handler.ChannelAxisOpHandler(
      channel_axis_op_handler.squeeze_keeps_channels)
  handlers['Reshape'] = channel_axis_op_handler.ChannelAxisOpHandler(
      channel_axis_op_handler.reshape_keeps_channels)
  # A gather keeps the channels of an activation it takes rows of; an
  # embedding lookup (GatherV2 on a variable read, or ResourceGather on the
  # variable itself) starts new ones.
  handlers['GatherV2'] = channel_axis_op_handler.ChannelAxisOpHandler(
      channel_axis_op_handler.gather_keeps_channels)
  handlers['ResourceGather'] = leaf_op_handler.LeafOpHandler()
  handlers['StridedSlice'] = strided_slice_op_handler.StridedSliceOpHandler()
  for op_type in split_op_handler.SPLIT_OP_TYPES:
    handlers[op_type] = split_op_handler.SplitOpHandler()
  handlers['Pack'] = leaf_op_handler.LeafOpHandler()
  for op_type in function_call_op_handler.FUNCTION_CALL_OP_TYPES:
    handlers[op_type] = function_call_op_handler.FunctionCallOpHandler()
  for op_type in RESIZE_OP_NAMES:
    # Only input 0 carries channels; input 1 is the target size.
    handlers[op_type] = grouping_op_handler.GroupingOpHandler([0])
  return handlers


def get_gamma_op_handler_dict() -> op_handler_registry.OpHandlerDict:
  """Returns the base handlers plus convolutions and MatMul as non-passthrough.

  Gamma regularizers add their batch norm source handlers to it.
  """
  handlers = _get_base_op_hander_dicts()
  for op_type in ('Conv3D', 'Conv2D', 'MatMul', 'Conv2DBackpropInput'):
    handlers[op_type] = output_non_passthrough_op_handler.OutputNonPassthroughOpHandler()
  # Beyond the original: a grouped Conv2D ties positions across its groups.
  handlers['Conv2D'] = grouped_convolution_op_handler.GroupedConvolutionOpHandler(
      handlers['Conv2D'])
  return handlers


def get_group_lasso_op_handler_dict() -> op_handler_registry.OpHandlerDict:
  """Returns the base handlers; group-lasso callers add their source handlers."""
  return _get_base_op_hander_dicts()
