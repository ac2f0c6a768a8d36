"""An OpHandler that wraps another one and decorates the regularizers it creates.

Used by the network regularizers' `regularizer_decorator` /
`decorator_parameters` arguments: grouping is delegated unchanged, and every
regularizer the wrapped handler creates is passed through the decorator,
e.g. `DummyDecorator(regularizer, scale=0.5)`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import op_handler


class OpHandlerDecorator(op_handler.OpHandler):
  """Wraps an OpHandler and decorates the regularizers it creates.

  Args:
    handler: the OpHandler to wrap.
    regularizer_decorator: an `OpRegularizer` class (or any callable) taking
      the regularizer to decorate as first argument. None means no decoration.
    decorator_parameters: keyword arguments for `regularizer_decorator`.
      Defaults to none.
  """

  def __init__(
      self,
      handler: op_handler.OpHandler,
      regularizer_decorator: Optional[
          Callable[..., generic_regularizers.OpRegularizer]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None):
    self._op_handler = handler
    self._regularizer_decorator = regularizer_decorator
    self._decorator_parameters = dict(decorator_parameters or {})

  @property
  def is_source_op(self) -> bool:
    return self._op_handler.is_source_op

  @property
  def is_passthrough(self) -> bool:
    return self._op_handler.is_passthrough

  def assign_grouping(self, op: tf.Operation, op_reg_manager) -> None:
    self._op_handler.assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice):
    """Returns the wrapped handler's regularizer, decorated if possible.

    Args:
      op_slice: the source `OpSlice` to create a regularizer for.

    Returns:
      `regularizer_decorator(regularizer, **decorator_parameters)` when both
      the regularizer and the decorator are set, else the plain regularizer.
    """
    regularizer = self._op_handler.create_regularizer(op_slice)
    if regularizer and self._regularizer_decorator:
      return self._regularizer_decorator(
          regularizer, **self._decorator_parameters)
    return regularizer
