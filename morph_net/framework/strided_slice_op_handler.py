"""OpHandler for `StridedSlice`: channels pass through a crop of other axes.

Beyond the original library, which handled every `StridedSlice` as a leaf.
A slice that crops only the positions, as Keras' `Cropping2D` (NASNet's
`adjust_conv_2_*` branch) or `x[:, 1:-1, 1:-1, :]`, keeps channel `i` at index
`i`; as a leaf it cut the convolution after it off from its input channels,
which were then all costed as alive.

`strided_slice_keeps_channels` decides conservatively, from the op's static
attributes only. The op keeps its channels (and is grouped like
`GroupingOpHandler([0])`: only the sliced input carries channels) when all of
the following hold; otherwise it stays a leaf, as before:

* the input rank is static and at least 1;
* `begin`, `end` and `strides` are constants (`Const`, possibly behind
  `Identity`);
* `ellipsis_mask` and `new_axis_mask` are 0: the i-th slice spec is then the
  i-th input axis (an ellipsis or a new axis would move the channel axis
  among the specs; such slices are rare in convolutional networks and are
  left as leaves rather than interpreted);
* the specs do not reach the last (channel) axis, or the spec of the last
  axis keeps all of it: stride 1, begin 0 (or masked, or an equivalent
  negative index), end at least the channel count (or masked), and no
  `shrink_axis_mask` bit on it. This needs a static channel count.
  `shrink_axis_mask` bits on other axes (`x[0]`) only drop those axes; the
  channel axis stays last.

When the output's last dimension is static too it must equal the input's
(a check against misreading the attributes).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from morph_net.framework import channel_axis_op_handler


def _bit(mask: int, index: int) -> bool:
  return bool((mask >> index) & 1)


def _keeps_whole_axis(begin: int, end: int, stride: int, begin_masked: bool,
                      end_masked: bool, size: int) -> bool:
  """True if `[begin:end:stride]` (Python slice rules) selects all of `size`."""
  if stride != 1:
    return False
  start = 0 if begin_masked else begin + size if begin < 0 else begin
  stop = size if end_masked else end + size if end < 0 else end
  return min(max(start, 0), size) == 0 and min(max(stop, 0), size) == size


def strided_slice_keeps_channels(op: tf.Operation) -> bool:
  """True if the `StridedSlice` `op` keeps every channel of its input in order.

  See the module docstring for the conditions; False whenever one of them
  cannot be established statically.
  """
  in_shape = op.inputs[0].shape
  rank = in_shape.rank
  if not rank or len(op.inputs) < 4:
    return False
  if op.get_attr('ellipsis_mask') or op.get_attr('new_axis_mask'):
    return False
  specs = [channel_axis_op_handler.constant_value(t) for t in op.inputs[1:4]]
  if any(spec is None for spec in specs):
    return False
  begin, end, strides = (np.ravel(spec).astype(np.int64) for spec in specs)
  if not begin.size == end.size == strides.size or begin.size > rank:
    return False
  channels = in_shape[-1]
  out_shape = op.outputs[0].shape
  if out_shape.rank and out_shape[-1] is not None and channels is not None and (
      out_shape[-1] != channels):
    return False
  last = rank - 1
  if begin.size <= last:
    return True  # The specs stop before the channel axis: all of it is kept.
  if channels is None or _bit(op.get_attr('shrink_axis_mask'), last):
    return False
  return _keeps_whole_axis(
      int(begin[last]), int(end[last]), int(strides[last]),
      _bit(op.get_attr('begin_mask'), last), _bit(op.get_attr('end_mask'), last),
      int(channels))


class StridedSliceOpHandler(channel_axis_op_handler.ChannelAxisOpHandler):
  """Groups a `StridedSlice` with its input if it keeps the channels, else a leaf."""

  def __init__(self):
    super().__init__(strided_slice_keeps_channels)
