"""Network regularizers that target the model size (number of weights).

Every channel is weighed by the number of weights it brings
(`resource_function.model_size_function`; the batch size plays no role).
`GammaModelSizeRegularizer` regularizes batch-norm gammas,
`GroupLassoModelSizeRegularizer` the group-lasso norms of conv/matmul weights.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import logistic_sigmoid_regularizer
from morph_net.network_regularizers import resource_function


class GammaModelSizeRegularizer(generic_regularizers.NetworkRegularizer):
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

  Raises:
    ValueError: `gamma_threshold` is negative.
  """

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      gamma_threshold: float,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None):
    flop_regularizer._check_threshold('gamma_threshold', gamma_threshold)
    self._manager = orm.OpRegularizerManager(
        output_boundary,
        flop_regularizer._gamma_op_handler_dict(
            gamma_threshold, regularizer_decorator, decorator_parameters),
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist)
    self._calculator = cost_calculator.CostCalculator(
        self._manager, resource_function.model_size_function)

  def get_regularization_term(self, ops=None):
    return self._calculator.get_regularization_term(ops)

  def get_cost(self, ops=None):
    return self._calculator.get_cost(ops)

  @property
  def op_regularizer_manager(self):
    return self._manager

  @property
  def name(self) -> str:
    return 'GammaModelSize'

  @property
  def cost_name(self) -> str:
    return 'ModelSize'


class GroupLassoModelSizeRegularizer(generic_regularizers.NetworkRegularizer):
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

  Raises:
    ValueError: `threshold` is negative or `l1_fraction` is outside [0, 1].
  """

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      threshold: float,
      l1_fraction: float = 0.0,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None):
    flop_regularizer._check_threshold('threshold', threshold)
    flop_regularizer._check_l1_fraction(l1_fraction)
    self._manager = orm.OpRegularizerManager(
        output_boundary,
        flop_regularizer._group_lasso_op_handler_dict(
            threshold, l1_fraction, regularizer_decorator,
            decorator_parameters),
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist)
    self._calculator = cost_calculator.CostCalculator(
        self._manager, resource_function.model_size_function)

  def get_regularization_term(self, ops=None):
    return self._calculator.get_regularization_term(ops)

  def get_cost(self, ops=None):
    return self._calculator.get_cost(ops)

  @property
  def op_regularizer_manager(self):
    return self._manager

  @property
  def name(self) -> str:
    return 'GroupLassoModelSize'

  @property
  def cost_name(self) -> str:
    return 'ModelSize'


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

  def get_calculator(self):
    return cost_calculator.CostCalculator(
        self._manager, resource_function.model_size_function)

  @property
  def name(self) -> str:
    return 'LogisticSigmoidModelSize'

  @property
  def cost_name(self) -> str:
    return 'ModelSize'
