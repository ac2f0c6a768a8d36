"""Base source OpHandler for group-lasso regularization of weight tensors.

A group-lasso source regularizes the output channels of a weighted op
(convolution, transposed convolution, matmul) by the norms of the slices of
its weight tensor (`inputs[1]`) that produce each channel. Subclasses say
which dimensions of the weight tensor a channel's norm is taken over.

Lazy evaluation: the weights are converted to their backing variable when
there is one, and a partial slice becomes a `LazySlice` of it, so the
regularizer can be read in any context.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import tensorflow as tf

from morph_net.framework import lazy_evaluation
from morph_net.framework import op_handler
from morph_net.framework import output_non_passthrough_op_handler
from morph_net.framework import tpu_util
from morph_net.op_regularizers import group_lasso_regularizer


# Stateless: one instance serves every group-lasso source handler.
_OUTPUT_GROUPING = output_non_passthrough_op_handler.OutputNonPassthroughOpHandler()


class GroupLassoBaseSourceOpHandler(op_handler.OpHandler):
  """Abstract source OpHandler for group lasso; subclasses define `_reduce_dims`.

  Args:
    threshold: channels whose norm is above `threshold` are alive.
    l1_fraction: weight of the L1 part of the norm, in [0, 1]. Defaults to 0.
  """

  def __init__(self, threshold: float, l1_fraction: float = 0.0):
    self._threshold = threshold
    self._l1_fraction = l1_fraction

  def _reduce_dims(self, op: tf.Operation) -> Tuple[int, ...]:
    """Dimensions of the weight tensor of `op` each channel's norm reduces."""
    raise NotImplementedError

  @property
  def is_source_op(self) -> bool:
    return True

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    """Makes each slice a source, then groups with same-size passthrough outputs.

    Args:
      op: the weighted op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.
    """
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        op_reg_manager.create_op_group_for_op_slice(op_slice)
    # From here on the op behaves like any output-non-passthrough op: it takes
    # its grouping from its consumers and never passes it to its inputs. No
    # state set in __init__ is read here, as in the original: subclasses that
    # do not call super().__init__ still group.
    _OUTPUT_GROUPING.assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice):
    """Returns a `GroupLassoRegularizer` over the weights of `op_slice`.

    Args:
      op_slice: an `OpSlice` of the weighted op.

    Returns:
      A `GroupLassoRegularizer` over the weights producing the slice's channels.

    Raises:
      ValueError: the weight rank does not match the reduce dims, or the
        rank / reduce dims combination is not supported.
    """
    op = op_slice.op
    start_index = op_slice.slice.start_index
    size = op_slice.slice.size
    weights = tpu_util.maybe_convert_to_variable(op.inputs[1])
    reduce_dims = tuple(self._reduce_dims(op))
    shape = lazy_evaluation.static_shape(weights)
    rank = shape.rank
    if rank != len(reduce_dims) + 1:
      raise ValueError(
          f'Rank {rank} incompatible with reduce_dims {reduce_dims} for op '
          f'{op.name}. The weight tensor must have one dimension more than '
          f'reduce_dims. Received: weights of shape {shape} for op type '
          f'{op.type!r}.')
    axis = _get_channel_axis(rank, reduce_dims)
    if not (start_index == 0 and size == shape[axis]):
      weights = lazy_evaluation.LazySlice(weights, start_index, size, axis)
    return group_lasso_regularizer.GroupLassoRegularizer(
        weight_tensor=weights,
        reduce_dims=reduce_dims,
        threshold=self._threshold,
        l1_fraction=self._l1_fraction)


def _get_channel_axis(rank: int, reduce_dims: Sequence[int]) -> int:
  """The axis of the weight tensor holding the output channels.

  Args:
    rank: rank of the weight tensor.
    reduce_dims: the dimensions the norm is taken over.

  Returns:
    The axis along which a slice of channels slices the weights.

  Raises:
    ValueError: the rank or the reduce dims are not supported.
  """
  if rank == 2:
    return 1 if reduce_dims[0] == 0 else 0
  if rank in (3, 4):
    for axis in range(rank - 1, -1, -1):
      if axis not in reduce_dims:
        return axis
  elif rank == 5:
    if 4 not in reduce_dims:
      return 4
    raise ValueError(
        'Unsupported reduce_dim for rank 5 tensors (Conv3D): the channel axis '
        f'4 must not be reduced. Received: reduce_dims={tuple(reduce_dims)}.')
  raise ValueError(
      'Unsupported rank or bad reduce_dim: weights must have rank 2 to 5 with '
      'one axis not reduced. Received: '
      f'rank={rank}, reduce_dims={tuple(reduce_dims)}.')
