"""Network regularizers that target FLOPs.

`GammaFlopsRegularizer` regularizes the gammas of batch norms (fused batch-norm
ops are the sources); `GroupLassoFlopsRegularizer` regularizes the group-lasso
norms of convolution and matmul weights. Both weigh every channel by the FLOPs
it costs (`resource_function.flop_function`).

Example (graph mode):
  network_regularizer = GammaFlopsRegularizer([logits.op], gamma_threshold=1e-3)
  loss += strength * network_regularizer.get_regularization_term()
  flops = network_regularizer.get_cost()

This module also holds the helpers that build the op-handler dictionaries of
the Gamma and GroupLasso families and check their arguments; the model-size,
latency and activation-count regularizers use them too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import conv2d_transpose_source_op_handler
from morph_net.framework import conv_source_op_handler
from morph_net.framework import decomposed_batch_norm_source_op_handler
from morph_net.framework import matmul_source_op_handler
from morph_net.framework import op_handler_decorator
from morph_net.framework import op_handlers
from morph_net.network_regularizers import base_network_regularizer
from morph_net.network_regularizers import compiled_cost
from morph_net.network_regularizers import logistic_sigmoid_regularizer
from morph_net.network_regularizers import resource_function

_BATCH_NORM_OP_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
# Op types whose weights are group-lasso sources, and their handler classes.
_GROUP_LASSO_SOURCES = {
    'Conv2D': conv_source_op_handler.ConvSourceOpHandler,
    'Conv3D': conv_source_op_handler.ConvSourceOpHandler,
    'Conv2DBackpropInput':
        conv2d_transpose_source_op_handler.Conv2DTransposeSourceOpHandler,
    'MatMul': matmul_source_op_handler.MatMulSourceOpHandler,
}


class GammaFlopsRegularizer(base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets FLOPs using batch-norm gammas.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    gamma_threshold: A channel is alive iff `|gamma| > gamma_threshold`.
    regularizer_decorator: An `OpRegularizer` class applied to every
      regularizer created (e.g. to scale it). None means no decoration.
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

  _NAME = 'GammaFlops'
  _COST_NAME = 'FLOPs'

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
    _check_threshold('gamma_threshold', gamma_threshold)
    self._build(
        output_boundary,
        _gamma_op_handler_dict(gamma_threshold, regularizer_decorator,
                               decorator_parameters),
        resource_function.flop_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)


class GroupLassoFlopsRegularizer(
    base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets FLOPs using group lasso on the weights.

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

  _NAME = 'GroupLassoFlops'
  _COST_NAME = 'FLOPs'

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      threshold: float,
      l1_fraction: float = 0,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      *,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group'):
    _check_threshold('threshold', threshold)
    _check_l1_fraction(l1_fraction)
    self._build(
        output_boundary,
        _group_lasso_op_handler_dict(threshold, l1_fraction,
                                     regularizer_decorator,
                                     decorator_parameters),
        resource_function.flop_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)


def _decorate(handler, regularizer_decorator, decorator_parameters):
  """Wraps `handler` in an OpHandlerDecorator when a decorator is given."""
  if regularizer_decorator:
    return op_handler_decorator.OpHandlerDecorator(
        handler, regularizer_decorator, decorator_parameters)
  return handler


def _gamma_op_handler_dict(gamma_threshold, regularizer_decorator,
                           decorator_parameters):
  """The gamma handler dict: fused batch norms and decomposed ones are sources.

  Beyond the original, `Mul` gets a dispatcher that makes the `Mul(x, scale)`
  of a batch norm lowered to element-wise ops (Keras 3, tf.nn.batch_normalization)
  a gamma source, and leaves every other `Mul` to the grouping handler.
  """
  source_op_handler = _decorate(
      batch_norm_source_op_handler.BatchNormSourceOpHandler(gamma_threshold),
      regularizer_decorator, decorator_parameters)
  op_handler_dict = op_handlers.get_gamma_op_handler_dict()
  for op_type in _BATCH_NORM_OP_TYPES:
    op_handler_dict[op_type] = source_op_handler
  op_handler_dict['Mul'] = (
      decomposed_batch_norm_source_op_handler.DecomposedBatchNormSourceOpHandler(
          gamma_threshold, fallback_handler=op_handler_dict['Mul'],
          regularizer_decorator=regularizer_decorator,
          decorator_parameters=decorator_parameters))
  return op_handler_dict


def _group_lasso_op_handler_dict(threshold, l1_fraction, regularizer_decorator,
                                 decorator_parameters,
                                 source_op_types=tuple(_GROUP_LASSO_SOURCES)):
  """The group-lasso handler dict with a source handler per weighted op type."""
  op_handler_dict = op_handlers.get_group_lasso_op_handler_dict()
  for op_type in source_op_types:
    op_handler_dict[op_type] = _decorate(
        _GROUP_LASSO_SOURCES[op_type](threshold, l1_fraction),
        regularizer_decorator, decorator_parameters)
  return op_handler_dict


def _check_threshold(name: str, value) -> None:
  """Raises for a threshold that is not a finite number >= 0.

  Tensors and variables are not checked (their value is read when evaluated).
  A NaN threshold would make every channel dead (`|gamma| > nan` is False)
  and an infinite one too: both are rejected.

  Raises:
    TypeError: `value` is not a real number (or tensor).
    ValueError: `value` is negative, NaN or infinite.
  """
  if tf.is_tensor(value) or isinstance(value, tf.Variable):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(
        f'{name} must be a number. Received: {name}={value!r} of type '
        f'{type(value).__name__}.')
  if not math.isfinite(value):
    raise ValueError(
        f'{name} must be a finite number >= 0: a channel is alive when its '
        f'regularizer exceeds it, and no value exceeds NaN or inf. '
        f'Received: {name}={value!r}.')
  if value < 0:
    raise ValueError(
        f'{name} must be non-negative: a channel is alive when its '
        f'regularizer exceeds it. Received: {name}={value!r}.')


def _check_l1_fraction(l1_fraction) -> None:
  """Raises ValueError for an `l1_fraction` outside [0, 1]."""
  if isinstance(l1_fraction, numbers.Real) and not 0 <= l1_fraction <= 1:
    raise ValueError(
        'l1_fraction should be in [0.0, 1.0]: it weighs the L1 term of the '
        f'group-lasso norm. Received: l1_fraction={l1_fraction!r}.')


class LogisticSigmoidFlopsRegularizer(
    logistic_sigmoid_regularizer.LogisticSigmoidRegularizer):
  """A NetworkRegularizer that targets FLOPs using probabilistic gates (FiGS).

  The gates (`probabilistic_gating.activation_gating`) are the sources; see
  `logistic_sigmoid_regularizer.LogisticSigmoidRegularizer` for the arguments
  (`output_boundary, regularize_on_mask=True, alive_threshold=0.1,
  mask_as_alive_vector=True, regularizer_decorator=None,
  decorator_parameters=None, input_boundary=None, force_group=None,
  regularizer_blacklist=None`).
  """

  _NAME = 'LogisticSigmoidFlops'
  _COST_NAME = 'FLOPs'

  def get_calculator(self):
    return compiled_cost.CompiledCostCalculator(
        self._manager, resource_function.flop_function)
