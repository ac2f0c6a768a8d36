"""Interfaces for network-level and op-level regularizers.

`NetworkRegularizer` is what a user trains with (`get_regularization_term`) and
reads (`get_cost`). `OpRegularizer` is the regularizer of one op's output channels:
a float `regularization_vector` and a bool `alive_vector`, one entry per channel.

Porting note: the original declared these with a Python-2 style ABC metaclass, so
abstractness was never enforced; test doubles subclass them implementing only
some members. We keep them as plain base classes for the same reason.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf


class NetworkRegularizer:
  """An interface for network regularizers."""

  def get_regularization_term(self, ops: Optional[Sequence[tf.Operation]] = None):
    """Returns a scalar float tensor to add (times a strength) to the loss.

    Args:
      ops: Ops to restrict the term to. None (or an empty list) means every op
        known to the regularizer.
    """
    raise NotImplementedError

  def get_cost(self, ops: Optional[Sequence[tf.Operation]] = None):
    """Returns the estimated cost of the network if the alive structure were adopted.

    Args:
      ops: Ops to restrict the cost to. None (or an empty list) means every op.
    """
    raise NotImplementedError

  @property
  def op_regularizer_manager(self):
    """The OpRegularizerManager used by this regularizer, or None."""
    return None

  @property
  def name(self) -> str:
    return ''

  @property
  def cost_name(self) -> str:
    return ''


class OpRegularizer:
  """An interface for the regularizer of one op's output channels."""

  @property
  def regularization_vector(self):
    """Float tensor of shape [num_channels]: the channels' regularization."""
    raise NotImplementedError

  @property
  def alive_vector(self):
    """Bool tensor of shape [num_channels]: which channels survive."""
    raise NotImplementedError


def dimensions_are_compatible(op_regularizer: OpRegularizer) -> bool:
  """True if both vectors of `op_regularizer` are rank 1 with compatible lengths."""
  alive_shape = op_regularizer.alive_vector.shape
  reg_shape = op_regularizer.regularization_vector.shape
  if alive_shape.rank != 1 or reg_shape.rank != 1:
    return False
  return alive_shape.is_compatible_with(reg_shape)
