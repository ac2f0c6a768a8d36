"""Errors raised by morph_net beyond the built-in TypeError / ValueError."""


class UnsupportedOpError(ValueError):
  """An op whose type MorphNet cannot analyse, with a hint to register a handler."""

  def __init__(self, op_name: str, op_type: str, reason: str):
    self.op_name = op_name
    self.op_type = op_type
    super().__init__(
        f'{reason} Received: op={op_name!r} of type {op_type!r}. To support it, '
        f'register a handler for its type, e.g. '
        f'`op_handler_dict[{op_type!r}] = GroupingOpHandler()` for an op that '
        f'keeps its input channels, or `LeafOpHandler()` for one that ends '
        f'the channel chain, and pass the dict to the regularizer.')
