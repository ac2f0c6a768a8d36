"""OpHandler for grouped convolutions (`Conv2D` whose filter sees C_in / g channels).

Beyond the original library. A `Conv2D` whose input has `C_in` channels and
whose filter is `[kh, kw, C_in / g, C_out]` is a grouped convolution with `g`
groups (TF runs it natively; a Keras `Conv2D(groups=g)` is traced to one, see
`keras_integration.tracing`). Group `k` reads the input channels
`[k*a, (k+1)*a)` (a = C_in / g) and writes the output channels
`[k*b, (k+1)*b)` (b = C_out / g).

Channel semantics (the contract shrinking follows, docs/grouped_convolutions.md):

* `g == 1`: an ordinary convolution, handled by the wrapped handler
  (`OutputNonPassthroughOpHandler` for gamma regularizers, a group-lasso
  source handler for group lasso).
* `g == C_in` (one input channel per group, like a depthwise convolution
  with depth multiplier `m = C_out / C_in`): handled exactly like
  `DepthwiseConv2dNative` (output channel `c` lives or dies with input
  channel `c // m`; channels pass through).
* `1 < g < C_in`: the channels at the same position within each group are
  tied across groups, on the input side (input channels `k*a + i` for all
  `k`) and on the output side (output channels `k*b + i` for all `k`), so that
  a shrink keeps the same local positions in every group, `groups` stays `g`
  and every group keeps the same width. Input and output sides are
  otherwise independent (within a group the convolution is dense): the op
  takes its output grouping from its consumers, as an ordinary convolution.
  Tied channels share one `OpGroup`; to keep the manager's slice splitting
  well defined the tied ops are sliced one channel per slice.

Cost (see `resource_function`): with `a'` / `b'` alive input / output channels
per group, `2 * S * K * a' * b' * g` FLOPs, i.e. the bilinear cost divided by
`g`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import depthwise_convolution_op_handler
from morph_net.framework import op_handler
from morph_net.framework import op_handler_util

GROUPED_CONVOLUTION_OP_TYPES = ('Conv2D',)


def convolution_groups(op: tf.Operation) -> int:
  """Number of groups `g` of a `Conv2D` op: C_in / (filter input depth).

  1 for other op types, for channels-first convolutions and when a channel
  count is not statically known.
  """
  if op.type not in GROUPED_CONVOLUTION_OP_TYPES or len(op.inputs) < 2:
    return 1
  try:
    data_format = op.get_attr('data_format')
  except ValueError:
    data_format = b'NHWC'
  if data_format not in (b'NHWC', 'NHWC'):
    return 1
  input_shape, filter_shape = op.inputs[0].shape, op.inputs[1].shape
  if not input_shape.rank or filter_shape.rank != 4:
    return 1
  channels, depth = input_shape[-1], filter_shape[-2]
  if channels is None or depth is None or depth == 0 or channels % depth:
    return 1
  return int(channels // depth)


def is_depthwise_like(op: tf.Operation) -> bool:
  """True for a grouped `Conv2D` with one input channel per group (g == C_in > 1)."""
  groups = convolution_groups(op)
  return groups > 1 and op.inputs[1].shape[-2] == 1


class GroupedConvolutionOpHandler(op_handler.OpHandler):
  """Dispatches a `Conv2D` by its number of groups (see the module docstring).

  Args:
    base_handler: The handler of ordinary (`g == 1`) convolutions, e.g.
      `OutputNonPassthroughOpHandler()` or `ConvSourceOpHandler(threshold)`.
  """

  def __init__(self, base_handler: op_handler.OpHandler):
    self._base = base_handler
    self._depthwise = depthwise_convolution_op_handler.DepthwiseConvolutionOpHandler()
    self._tied = _TiedGroupsOpHandler(base_handler)

  @property
  def base_handler(self) -> op_handler.OpHandler:
    return self._base

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """The handler for this op, chosen by its number of groups."""
    groups = convolution_groups(op)
    if groups == 1:
      return self._base
    if is_depthwise_like(op):
      return self._depthwise
    return self._tied

  @property
  def is_source_op(self) -> bool:
    # As a type (ordinary convolutions); per op, see `handler_for_op`.
    return self._base.is_source_op

  @property
  def is_passthrough(self) -> bool:
    return self._base.is_passthrough

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    self.handler_for_op(op).assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice: Any) -> Any:
    return self.handler_for_op(op_slice.op).create_regularizer(op_slice)


class _TiedGroupsOpHandler(op_handler.OpHandler):
  """A grouped convolution with 1 < g < C_in: ties positions across groups."""

  def __init__(self, base_handler: op_handler.OpHandler):
    self._base = base_handler

  @property
  def is_source_op(self) -> bool:
    return self._base.is_source_op

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Groups the outputs as the base handler, then ties positions across groups."""
    groups = convolution_groups(op)
    output_channels = op_handler_util.get_op_size(op)
    op_reg_manager.slice_op(op, [1] * output_channels)
    self._base.assign_grouping(op, op_reg_manager)
    _tie(op, groups, op_reg_manager)
    input_ops = op_handler_util.get_input_ops(op, op_reg_manager, [0])
    if input_ops:
      input_op = input_ops[0]
      op_reg_manager.slice_op(input_op, [1] * op_handler_util.get_op_size(input_op))
      _tie(input_op, groups, op_reg_manager)

  def create_regularizer(self, op_slice: Any) -> Any:
    return self._base.create_regularizer(op_slice)


def _tie(op: tf.Operation, groups: int, op_reg_manager: Any) -> None:
  """Groups channel `k * width + i` of `op` for every k (one slice per channel)."""
  op_slices = op_reg_manager.get_op_slices(op)
  width = len(op_slices) // groups
  for position in range(width):
    members = [op_slices[k * width + position] for k in range(groups)]
    first = op_reg_manager.get_op_group(members[0])
    if first is None or any(op_reg_manager.get_op_group(member) is not first
                            for member in members):
      op_reg_manager.group_op_slices(members)
