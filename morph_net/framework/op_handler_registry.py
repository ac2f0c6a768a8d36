"""OpHandlerDict: the registry of op handlers, keyed by op type.

Beyond the original library. The original passed a plain
`collections.defaultdict(GroupingOpHandler, ...)`, so every op type it did not
know was silently treated as channel-preserving. `OpHandlerDict` is a drop-in
for that defaultdict (same `default_factory`, item access, `update`, ...) with
a policy for unknown op types and a validated `register` method:

  * handlers registered by the user (`register` or item assignment) replace
    the built-in ones: they are looked up first;
  * the op types known to keep their channels element-wise
    (`CHANNEL_PRESERVING_OP_TYPES`) are registered explicitly by
    `op_handlers`, so only genuinely unknown types reach the policy;
  * `unknown_op_policy='group'` (default) handles an unknown type like the
    original (a fresh `GroupingOpHandler`) and logs a warning once per type;
    `'error'` makes the `OpRegularizerManager` raise `UnsupportedOpError`
    naming the op, its type and how to register a handler.

Unknown types seen are recorded in `unknown_op_types`.

Example:
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.register('MyChannelShuffle', leaf_op_handler.LeafOpHandler())
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from absl import logging

from morph_net.framework import grouping_op_handler

UNKNOWN_OP_POLICIES = ('group', 'error')

# Op types whose output channel i depends only on input channel i (activations,
# element-wise arithmetic, pooling, reductions over other axes, padding, casts,
# variable reads, ...). They are registered as `GroupingOpHandler()`, the
# original's default, so that they do not count as unknown. (`GatherV2`, which
# the original grouped with all its inputs, has its own rule in
# `channel_axis_op_handler`: passthrough for rows of an activation, a leaf for
# a table lookup such as an embedding.)
CHANNEL_PRESERVING_OP_TYPES: Tuple[str, ...] = (
    # Activations. Softmax / LogSoftmax normalize over the channel axis but
    # keep channel i at index i (they end classifier heads and attention).
    'Relu', 'Relu6', 'Elu', 'Selu', 'LeakyRelu', 'Sigmoid', 'Tanh', 'Softplus',
    'Softsign', 'Softmax', 'LogSoftmax',
    # Identities and casts.
    'Identity', 'IdentityN', 'StopGradient', 'PreventGradient', 'Snapshot',
    'EnsureShape', 'CheckNumerics', 'Cast',
    # Element-wise arithmetic.
    'Add', 'AddV2', 'AddN', 'BiasAdd', 'BiasAddV1', 'Sub', 'Mul', 'MulNoNan',
    'RealDiv', 'Div', 'DivNoNan', 'FloorDiv', 'FloorMod', 'Maximum', 'Minimum',
    'SquaredDifference', 'Neg', 'Abs', 'Sign', 'Square', 'Sqrt', 'Rsqrt',
    'Reciprocal', 'Exp', 'Log', 'Log1p', 'Pow', 'Erf', 'Erfc', 'Floor', 'Ceil',
    'Round', 'ClipByValue', 'Select', 'SelectV2', 'Expm1', 'Sin', 'Cos', 'Tan',
    'Atan', 'Sinh', 'Cosh', 'Asinh', 'Acosh', 'Atanh', 'Rint', 'Inv',
    'Xlogy', 'Xdivy', 'IsNan', 'IsInf', 'IsFinite',
    # Element-wise comparisons and logic (e.g. dropout masks).
    'Greater', 'GreaterEqual', 'Less', 'LessEqual', 'Equal', 'NotEqual',
    'LogicalAnd', 'LogicalOr', 'LogicalNot',
    # Pooling, padding and spatial reshuffles. (Reductions such as `Mean` keep
    # the channels only when they do not reduce the channel axis: see
    # `channel_axis_op_handler`, registered for them by `op_handlers`.)
    'MaxPool', 'MaxPoolV2', 'AvgPool', 'MaxPool3D', 'AvgPool3D', 'Pad', 'PadV2',
    'MirrorPad', 'SpaceToBatchND', 'BatchToSpaceND',
    # Normalization, when not a source.
    'FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3',
    # Graph inputs, constants and variables.
    'Placeholder', 'PlaceholderWithDefault', 'Const', 'ReadVariableOp',
    'VarHandleOp', 'VariableV2',
)

# Op types whose output carries no channel of their inputs (shape and index
# computations, constants built from shapes, ...). They are registered as
# `LeafOpHandler()`: channels end there, and what follows starts a new group.
LEAF_OP_TYPES: Tuple[str, ...] = (
    'Fill', 'Range', 'ZerosLike', 'OnesLike', 'Size', 'Rank', 'ShapeN',
    'BroadcastArgs', 'NoOp', 'RandomUniformInt', 'RandomStandardNormal',
    'TruncatedNormal', 'StatelessRandomUniformV2', 'StatelessRandomNormalV2',
)


class OpHandlerDict(collections.defaultdict):
  """A `defaultdict(GroupingOpHandler)` of op handlers with an unknown-op policy.

  Args:
    handlers: Initial mapping (or iterable of pairs) op type -> handler.
    unknown_op_policy: What to do with an op type that has no handler:
      `'group'` (default) treats it as channel-preserving with a fresh
      `GroupingOpHandler` and logs a warning once per type; `'error'` raises
      `KeyError` here, which the `OpRegularizerManager` turns into an
      `UnsupportedOpError` naming the op.

  Raises:
    ValueError: `unknown_op_policy` is not one of `UNKNOWN_OP_POLICIES`.
  """

  def __init__(self, handlers: Optional[Union[Mapping[str, Any],
                                              Iterable[Tuple[str, Any]]]] = None,
               *, unknown_op_policy: str = 'group'):
    super().__init__(grouping_op_handler.GroupingOpHandler)
    if unknown_op_policy not in UNKNOWN_OP_POLICIES:
      raise ValueError(
          f'unknown_op_policy must be one of {UNKNOWN_OP_POLICIES}. Received: '
          f'unknown_op_policy={unknown_op_policy!r}.')
    self.unknown_op_policy = unknown_op_policy
    # Op types looked up without a registered handler, in order of first use.
    self.unknown_op_types: List[str] = []
    if handlers:
      self.update(handlers)

  def register(self, op_type: str, handler: Any) -> 'OpHandlerDict':
    """Registers `handler` for `op_type`, replacing any built-in handler.

    Args:
      op_type: The op type string, e.g. `'Conv2D'` (see `tf.Operation.type`).
      handler: An `OpHandler` instance (any object with `assign_grouping`,
        `is_source_op`, `is_passthrough` and `create_regularizer`).

    Returns:
      This dict, so calls can be chained.

    Raises:
      TypeError: `op_type` is not a string, or `handler` is not an op handler
        instance.
      ValueError: `op_type` is empty.
    """
    if not isinstance(op_type, str):
      raise TypeError(
          'op_type must be an op type string such as "Conv2D". Received: '
          f'op_type={op_type!r} of type {type(op_type).__name__}.')
    if not op_type:
      raise ValueError(
          'op_type must be a non-empty op type string such as "Conv2D". '
          "Received: op_type=''.")
    if isinstance(handler, type):
      raise TypeError(
          'handler must be an op handler instance, not a class. Received: '
          f'handler={handler.__name__}; pass e.g. {handler.__name__}().')
    if not callable(getattr(handler, 'assign_grouping', None)):
      raise TypeError(
          'handler must be an OpHandler (an object with assign_grouping, '
          'is_source_op, is_passthrough and create_regularizer). Received: '
          f'handler={handler!r} of type {type(handler).__name__}.')
    self[op_type] = handler
    return self

  def __missing__(self, op_type: str) -> Any:
    if op_type not in self.unknown_op_types:
      self.unknown_op_types.append(op_type)
    if self.unknown_op_policy == 'error' or self.default_factory is None:
      raise KeyError(
          f'No op handler is registered for op type {op_type!r} '
          "(unknown_op_policy='error'). Register one with "
          f"`register({op_type!r}, handler)`.")
    logging.warning(
        'MorphNet has no op handler for op type %r: it is treated as '
        'channel-preserving (every output channel grouped with the same '
        'channel of its inputs and outputs). If ops of this type change or '
        'reorder channels, register a handler: pass '
        "extra_op_handlers={%r: LeafOpHandler()} to the network regularizer "
        '(or to from_keras_model), or call '
        "`op_handler_dict.register(%r, LeafOpHandler())`; pass "
        "unknown_op_policy='error' to reject unknown op types.",
        op_type, op_type, op_type)
    handler = self.default_factory()
    self[op_type] = handler
    return handler

  def copy(self) -> 'OpHandlerDict':
    """Returns a shallow copy with the same policy and recorded unknown types."""
    new = OpHandlerDict(unknown_op_policy=self.unknown_op_policy)
    new.default_factory = self.default_factory
    new.update(self)
    new.unknown_op_types = list(self.unknown_op_types)
    return new

  __copy__ = copy

  def __reduce__(self):
    state = {
        'default_factory': self.default_factory,
        'unknown_op_policy': self.unknown_op_policy,
        'unknown_op_types': list(self.unknown_op_types),
    }
    return (_new_op_handler_dict, (), state, None, iter(self.items()))

  def __setstate__(self, state):
    self.default_factory = state['default_factory']
    self.unknown_op_policy = state['unknown_op_policy']
    self.unknown_op_types = state['unknown_op_types']

  def __repr__(self):
    return (f'OpHandlerDict({dict(self)!r}, '
            f'unknown_op_policy={self.unknown_op_policy!r})')


def _new_op_handler_dict() -> OpHandlerDict:
  return OpHandlerDict()
