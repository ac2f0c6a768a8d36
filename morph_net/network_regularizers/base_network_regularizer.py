"""The plumbing every MorphNet network regularizer shares.

A network regularizer is an `OpRegularizerManager` (the analysis of the
network, built from a dictionary of op handlers) plus a cost calculator (a
resource function summed over the ops). `BaseNetworkRegularizer` holds both
and implements `get_cost`, `get_regularization_term`,
`op_regularizer_manager`, `name` and `cost_name`; subclasses choose the
handlers, the resource function and the names.

The cost and the term are evaluated by a `CompiledCostCalculator` (a few TF
ops whatever the size of the network; see `compiled_cost.py`). The per-op
`CostCalculator` stays available to users who call it.

Every regularizer also takes two keyword-only options to extend the analysis:

  * `extra_op_handlers`: a mapping op type -> `OpHandler`, registered over
    the regularizer's own handlers (looked up before the built-ins), e.g.
    `{'MyChannelShuffle': LeafOpHandler()}`;
  * `unknown_op_policy`: `'group'` (default: an op type without a handler is
    treated as channel-preserving, with a warning once per type) or
    `'error'` (such an op raises `UnsupportedOpError` naming it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import grouping_regularizers
from morph_net.framework import op_handler_registry
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import compiled_cost


def apply_handler_overrides(
    op_handler_dict, extra_op_handlers: Optional[Mapping[str, Any]],
    unknown_op_policy: str):
  """Registers `extra_op_handlers` over `op_handler_dict` and sets the policy.

  Args:
    op_handler_dict: The regularizer's `OpHandlerDict` (modified in place).
    extra_op_handlers: None, or a mapping op type -> `OpHandler` instance.
    unknown_op_policy: `'group'` or `'error'`.

  Returns:
    `op_handler_dict`.

  Raises:
    TypeError: `extra_op_handlers` is not a mapping, or one of its entries is
      not an op type string and an op handler instance.
    ValueError: `unknown_op_policy` is not `'group'` or `'error'`.
  """
  if unknown_op_policy not in op_handler_registry.UNKNOWN_OP_POLICIES:
    raise ValueError(
        'unknown_op_policy must be one of '
        f'{op_handler_registry.UNKNOWN_OP_POLICIES}: \'group\' treats an op '
        'type without a handler as channel-preserving (with a warning), '
        '\'error\' rejects it. Received: '
        f'unknown_op_policy={unknown_op_policy!r}.')
  if extra_op_handlers is not None and not isinstance(extra_op_handlers,
                                                      Mapping):
    raise TypeError(
        'extra_op_handlers must be a mapping from op type to op handler, '
        "e.g. {'MyOp': LeafOpHandler()}. Received: "
        f'extra_op_handlers={extra_op_handlers!r} of type '
        f'{type(extra_op_handlers).__name__}.')
  if not isinstance(op_handler_dict, op_handler_registry.OpHandlerDict):
    op_handler_dict = op_handler_registry.OpHandlerDict(op_handler_dict)
  op_handler_dict.unknown_op_policy = unknown_op_policy
  for op_type, handler in (extra_op_handlers or {}).items():
    op_handler_dict.register(op_type, handler)
  return op_handler_dict


class BaseNetworkRegularizer(generic_regularizers.NetworkRegularizer):
  """A network regularizer made of an `OpRegularizerManager` and a calculator.

  Subclasses call `_build(...)` from their constructor and set the class
  attributes `_NAME` and `_COST_NAME` (or override `name` / `cost_name`).
  """

  _NAME = ''
  _COST_NAME = ''

  def _build(
      self,
      output_boundary: Sequence[tf.Operation],
      op_handler_dict,
      resource_function: Optional[Callable[..., Any]],
      *,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group',
      create_grouping_regularizer: Callable[..., Any] = (
          grouping_regularizers.MaxGroupingRegularizer),
      components: Optional[Sequence[Callable[..., Any]]] = None) -> None:
    """Builds the manager and (if `resource_function` is set) the calculator."""
    # The manager accepts an empty boundary (as the original does, for users who
    # drive it op by op); a network regularizer on one would cost nothing.
    output_boundary = orm.check_output_boundary(output_boundary)
    op_handler_dict = apply_handler_overrides(
        op_handler_dict, extra_op_handlers, unknown_op_policy)
    self._manager = orm.OpRegularizerManager(
        output_boundary,
        op_handler_dict,
        create_grouping_regularizer=create_grouping_regularizer,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist)
    if resource_function is not None:
      self._calculator = compiled_cost.CompiledCostCalculator(
          self._manager, resource_function, components=components)

  # Not converted by AutoGraph when called in a user's `tf.function` (e.g. a
  # custom train step): the evaluation is plain Python building a fixed
  # graph, and converting it costs seconds of tracing (DenseNet201: ~1,000
  # converted calls).
  @tf.autograph.experimental.do_not_convert
  def get_regularization_term(self, ops: Optional[Sequence[tf.Operation]] = None):
    return self._calculator.get_regularization_term(ops)

  @tf.autograph.experimental.do_not_convert
  def get_cost(self, ops: Optional[Sequence[tf.Operation]] = None):
    return self._calculator.get_cost(ops)

  @property
  def op_regularizer_manager(self):
    return self._manager

  @property
  def name(self) -> str:
    return self._NAME

  @property
  def cost_name(self) -> str:
    return self._COST_NAME
