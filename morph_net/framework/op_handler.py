"""Interface of an op handler: how one op type groups its channels.

An op handler encodes, for one op type, how the op's output channels are
grouped with the channels of its neighbours, and whether the op originates a
regularizer (a *source* op, e.g. a batch norm whose gammas regularize the
channels).

Porting note: the original declared this interface with a Python-2 style ABC
metaclass, so abstractness was never enforced and tests subclass it
implementing only some members. It is kept as a plain base class whose members
raise `NotImplementedError`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


class OpHandler:
  """Base class for op handlers, one per op type.

  Example: in `X -> Conv2D -> BatchNorm (source)`, the batch norm groups with
  the conv. X then looks at its consumer, the conv, sees that it is not
  passthrough, and therefore does not group with it.
  """

  @property
  def is_source_op(self) -> bool:
    """True if ops of this type create a regularizer."""
    raise NotImplementedError

  @property
  def is_passthrough(self) -> bool:
    """True if neighbours may group their channels through this op."""
    raise NotImplementedError

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Decides the grouping of `op` and updates the manager.

    Implementations update the `OpRegularizerManager` (slicing, grouping) and
    queue the neighbours that still need processing.

    Args:
      op: The op to assign a grouping to.
      op_reg_manager: The `OpRegularizerManager` analysing the graph.
    """
    raise NotImplementedError

  def create_regularizer(self, op_slice: Any) -> Any:
    """Returns an `OpRegularizer` for the channels of a source `OpSlice`.

    Args:
      op_slice: The `OpSlice` of a source op to regularize.
    """
    raise NotImplementedError
