"""Errors raised by morph_net beyond the built-in TypeError / ValueError."""


class UnsupportedOpError(ValueError):
  """An op whose type MorphNet cannot analyse, with a hint to register a handler."""

  def __init__(self, op_name: str, op_type: str, reason: str):
    self.op_name = op_name
    self.op_type = op_type
    super().__init__(
        f'{reason} Received: op={op_name!r} of type {op_type!r}. To support it, '
        f'register a handler for its type, e.g. '
        f'`GroupingOpHandler()` for an op that keeps its input channels, or '
        f'`LeafOpHandler()` for one that ends the channel chain: pass '
        f'`extra_op_handlers={{{op_type!r}: handler}}` to the network '
        f'regularizer (or to from_keras_model), or register it in the '
        f'op_handler_dict given to OpRegularizerManager.')
