"""Network regularizers that target the model size (number of weights).

Every channel is weighed by the number of weights it brings
(`resource_function.model_size_function`; the batch size plays no role).
`GammaModelSizeRegularizer` regularizes batch-norm gammas,
`GroupLassoModelSizeRegularizer` the group-lasso norms of conv/matmul weights.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.network_regularizers import base_network_regularizer
from morph_net.network_regularizers import compiled_cost
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import logistic_sigmoid_regularizer
from morph_net.network_regularizers import resource_function


class GammaModelSizeRegularizer(
    base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets model size using batch-norm gammas.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    gamma_threshold: A channel is alive iff `|gamma| > gamma_threshold`.
    regularizer_decorator: An `OpRegularizer` class applied to every
      regularizer created. None means no decoration.
    decorator_parameters: Keyword arguments for `regularizer_decorator`.
    input_boundary: Ops at which the analysis stops (not regularized).
    force_group: List of regexes; the ops matching one regex are grouped.
    regularizer_blacklist: List of regexes; matching groups are not
      regularized.
    extra_op_handlers: Keyword-only. Op type -> `OpHandler`, registered over
      the built-in handlers (e.g. for a custom op type). Defaults to none.
    unknown_op_policy: Keyword-only. `'group'` (default) treats an op type
      without a handler as channel-preserving, with a warning; `'error'`
      raises `UnsupportedOpError` for it.

  Raises:
    ValueError: `gamma_threshold` is negative.
  """

  _NAME = 'GammaModelSize'
  _COST_NAME = 'ModelSize'

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      gamma_threshold: float,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      *,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group'):
    flop_regularizer._check_threshold('gamma_threshold', gamma_threshold)
    self._build(
        output_boundary,
        flop_regularizer._gamma_op_handler_dict(
            gamma_threshold, regularizer_decorator, decorator_parameters),
        resource_function.model_size_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)


class GroupLassoModelSizeRegularizer(
    base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets model size using group lasso.

  The weights of `Conv2D`, `Conv3D`, `Conv2DBackpropInput` and `MatMul` ops
  are the sources.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    threshold: A channel is alive iff its group-lasso norm is `> threshold`.
    l1_fraction: Weight of the L1 term of the norm, in [0, 1]. Defaults to 0.
    regularizer_decorator: An `OpRegularizer` class applied to every
      regularizer created. None means no decoration.
    decorator_parameters: Keyword arguments for `regularizer_decorator`.
    input_boundary: Ops at which the analysis stops (not regularized).
    force_group: List of regexes; the ops matching one regex are grouped.
    regularizer_blacklist: List of regexes; matching groups are not
      regularized.
    extra_op_handlers: Keyword-only. Op type -> `OpHandler`, registered over
      the built-in handlers (e.g. for a custom op type). Defaults to none.
    unknown_op_policy: Keyword-only. `'group'` (default) treats an op type
      without a handler as channel-preserving, with a warning; `'error'`
      raises `UnsupportedOpError` for it.

  Raises:
    ValueError: `threshold` is negative or `l1_fraction` is outside [0, 1].
  """

  _NAME = 'GroupLassoModelSize'
  _COST_NAME = 'ModelSize'

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      threshold: float,
      l1_fraction: float = 0.0,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      *,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group'):
    flop_regularizer._check_threshold('threshold', threshold)
    flop_regularizer._check_l1_fraction(l1_fraction)
    self._build(
        output_boundary,
        flop_regularizer._group_lasso_op_handler_dict(
            threshold, l1_fraction, regularizer_decorator,
            decorator_parameters),
        resource_function.model_size_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)


class LogisticSigmoidModelSizeRegularizer(
    logistic_sigmoid_regularizer.LogisticSigmoidRegularizer):
  """A NetworkRegularizer that targets model size using probabilistic gates.

  The gates (`probabilistic_gating.activation_gating`) are the sources; see
  `logistic_sigmoid_regularizer.LogisticSigmoidRegularizer` for the arguments
  (`output_boundary, regularize_on_mask=True, alive_threshold=0.1,
  mask_as_alive_vector=True, regularizer_decorator=None,
  decorator_parameters=None, input_boundary=None, force_group=None,
  regularizer_blacklist=None`).
  """

  _NAME = 'LogisticSigmoidModelSize'
  _COST_NAME = 'ModelSize'

  def get_calculator(self):
    return compiled_cost.CompiledCostCalculator(
        self._manager, resource_function.model_size_function)
