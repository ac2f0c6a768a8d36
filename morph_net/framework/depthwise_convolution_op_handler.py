"""OpHandler for depthwise convolutions (`DepthwiseConv2dNative`).

A depthwise convolution with depth multiplier `m` maps input channel `c` to
the output channels `c*m, ..., c*m + m - 1`. Output channel `k` therefore lives
or dies with input channel `k // m`. With `m == 1` input and output channels
correspond one to one and the op is handled like an element-wise op.

A `Conv2D` with one input channel per group (`groups == C_in`, filter
`[kh, kw, 1, C_out]`, e.g. a Keras `Conv2D(groups=C_in)`) computes the same
thing with `m = C_out / C_in` and is handled the same way (beyond the
original; see `grouped_convolution_op_handler`).
"""

from __future__ import annotations

import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handler_util

_OP_TYPE = 'DepthwiseConv2dNative'


class DepthwiseConvolutionOpHandler(grouping_op_handler.GroupingOpHandler):
  """OpHandler for `DepthwiseConv2dNative` ops."""

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    """Groups output channel `k` with input channel `k // depth_multiplier`.

    Args:
      op: a `DepthwiseConv2dNative` op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.

    Raises:
      ValueError: `op` is not a `DepthwiseConv2dNative` op.
    """
    if op.type != _OP_TYPE and not _is_depthwise_like_conv(op):
      raise ValueError(
          f'DepthwiseConvolutionOpHandler only handles {_OP_TYPE} ops and '
          'Conv2D ops with one input channel per group. '
          f'Received: op {op.name!r} of type {op.type!r}. Register another '
          'handler for this op type.')
    depth_multiplier = _get_depth_multiplier(op)
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager)
    if depth_multiplier == 1 or not input_ops:
      # Channels map one to one (or there is no input to map them to, e.g. a
      # constant image): group like an element-wise op.
      super().assign_grouping(op, op_reg_manager)
      return

    input_ops_to_process = op_handler_util.get_ops_without_groups(
        input_ops, op_reg_manager)
    # Only the activation input carries channels (the weights are skipped by
    # get_input_ops).
    input_op = input_ops[0]

    output_ops_to_group, output_ops_to_process = (
        op_handler_util.split_output_ops(op, op_reg_manager))

    # One slice per channel: input channels C, output channels C * m.
    num_input_channels = op_handler_util.get_op_size(input_op)
    num_output_channels = op_handler_util.get_op_size(op)
    op_reg_manager.slice_op(input_op, [1] * num_input_channels)
    aligned_op_slice_sizes = [1] * num_output_channels
    for op_to_slice in output_ops_to_group + [op]:
      op_reg_manager.slice_op(op_to_slice, aligned_op_slice_sizes)

    # Repeat each input slice m times: output slice k faces input slice k // m.
    input_op_slices = [[
        input_op_slice
        for input_op_slice in op_reg_manager.get_op_slices(input_op)
        for _ in range(depth_multiplier)
    ]]
    output_op_slices = op_handler_util.get_op_slices(
        output_ops_to_group, op_reg_manager)
    op_handler_util.group_aligned_input_output_slices(
        op, input_ops_to_process, output_ops_to_process, input_op_slices,
        output_op_slices, aligned_op_slice_sizes, op_reg_manager)


def _is_depthwise_like_conv(op: tf.Operation) -> bool:
  """A `Conv2D` whose filter has input depth 1 and whose input has > 1 channel."""
  if op.type != 'Conv2D':
    return False
  channels, depth = op.inputs[0].shape[-1], op.inputs[1].shape[-2]
  return depth == 1 and channels is not None and channels > 1


def _get_depth_multiplier(op: tf.Operation) -> int:
  """Depth multiplier: last dim of the filter `[kh, kw, C, m]` (C_out / C_in for Conv2D)."""
  if op.type == 'Conv2D':
    output_channels, channels = op.inputs[1].shape[-1], op.inputs[0].shape[-1]
    if output_channels is not None and channels and output_channels % channels == 0:
      return int(output_channels // channels)
  multiplier = op.inputs[1].shape[-1]
  if multiplier is None:
    raise errors.UnsupportedOpError(
        op.name, op.type,
        'The depth multiplier (last dimension of the depthwise filter) is not '
        'statically known.')
  return int(multiplier)
