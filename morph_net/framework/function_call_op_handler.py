"""OpHandler that rejects function-call ops (`PartitionedCall`, ...).

Beyond the original library. A function-call op runs a nested graph that
MorphNet does not look into: the convolutions inside it are neither costed nor
regularized, and how it maps input to output channels is unknown. Keras 3 on
TensorFlow emits one for a `Conv2D` with `groups > 1` (run as a nested
`tf.function`), and user code does for a nested `tf.function`. Treated as an
element-wise op (the original's default for unknown types) its FLOPs silently
vanish from the cost; here an op of these types that has to be grouped raises
`UnsupportedOpError` naming it. Register another handler for the type to
analyse such a network anyway (e.g. `GroupingOpHandler()` if the call keeps
its channels), or keep the call outside the analysed part (input boundary).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from morph_net.framework import errors
from morph_net.framework import op_handler

FUNCTION_CALL_OP_TYPES = ('PartitionedCall', 'StatefulPartitionedCall')


class FunctionCallOpHandler(op_handler.OpHandler):
  """Raises `UnsupportedOpError` when a function-call op must be grouped."""

  @property
  def is_source_op(self) -> bool:
    return False

  @property
  def is_passthrough(self) -> bool:
    return False

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Raises UnsupportedOpError naming `op`.

    Args:
      op: The function-call op.
      op_reg_manager: Unused.

    Raises:
      UnsupportedOpError: always.
    """
    del op_reg_manager
    raise errors.UnsupportedOpError(
        op.name, op.type,
        'This op calls a nested function (e.g. a nested tf.function, or a '
        'Keras Conv2D with groups > 1 traced outside from_keras_model, which '
        'traces it as a plain Conv2D) whose FLOPs and channels MorphNet cannot '
        'see, so it cannot be costed or grouped with its neighbours.')

  def create_regularizer(self, op_slice: Any) -> Any:
    raise NotImplementedError('Not a source op.')
