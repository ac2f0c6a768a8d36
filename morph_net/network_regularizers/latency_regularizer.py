"""Network regularizers that target the latency of the network on a hardware.

Every op is costed as compute bound (FLOPs / peak compute) or memory bound
(bytes / memory bandwidth), whichever is slower, with the table values of the
named hardware (`resource_function.PEAK_COMPUTE`, `MEMORY_BANDWIDTH`) or of
a user's own `hardware.Hardware` (registered, loaded from JSON, or measured
by `morphnet calibrate`, with optional per-op-type compute efficiencies); the
unit is nanoseconds. Unlike FLOPs, latency also counts the memory traffic of
batch norms, activations, additions and concatenations.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.network_regularizers import base_network_regularizer
from morph_net.network_regularizers import compiled_cost
from morph_net.network_regularizers import flop_regularizer
from morph_net.network_regularizers import hardware as hardware_lib
from morph_net.network_regularizers import logistic_sigmoid_regularizer
from morph_net.network_regularizers import resource_function


class GammaLatencyRegularizer(
    base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets latency using batch-norm gammas.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    gamma_threshold: A channel is alive iff `|gamma| > gamma_threshold`.
    hardware: A key of `resource_function.PEAK_COMPUTE` (e.g. `'V100'`), a
      name registered with `hardware.register`, a `hardware.Hardware`, or
      the path of a hardware JSON file (`morphnet calibrate` writes one).
    batch_size: The inference batch size. Defaults to 1.
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
    ValueError: `gamma_threshold` is negative, `hardware` is unknown or
      `batch_size` is not positive.
  """

  _NAME = 'Latency'

  @property
  def cost_name(self) -> str:
    return self._hardware + ' Latency'

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      gamma_threshold: float,
      hardware: hardware_lib.HardwareLike,
      batch_size: int = 1,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      *,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group'):
    flop_regularizer._check_threshold('gamma_threshold', gamma_threshold)
    latency_function = resource_function.latency_function_factory(
        hardware, batch_size)
    self._hardware = latency_function.hardware.name
    components = latency_components(latency_function.hardware, batch_size)
    self._build(
        output_boundary,
        flop_regularizer._gamma_op_handler_dict(
            gamma_threshold, regularizer_decorator, decorator_parameters),
        latency_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy,
        components=components)


class GroupLassoLatencyRegularizer(
    base_network_regularizer.BaseNetworkRegularizer):
  """A NetworkRegularizer that targets latency using group lasso.

  The weights of `Conv2D`, `Conv3D`, `Conv2DBackpropInput` and `MatMul` ops
  are the sources.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    threshold: A channel is alive iff its group-lasso norm is `> threshold`.
    hardware: A key of `resource_function.PEAK_COMPUTE` (e.g. `'V100'`), a
      name registered with `hardware.register`, a `hardware.Hardware`, or
      the path of a hardware JSON file (`morphnet calibrate` writes one).
    batch_size: The inference batch size. Defaults to 1.
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
    ValueError: `threshold` is negative, `l1_fraction` is outside [0, 1],
      `hardware` is unknown or `batch_size` is not positive.
  """

  _NAME = 'Latency'

  @property
  def cost_name(self) -> str:
    return self._hardware + ' Latency'

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      threshold: float,
      hardware: hardware_lib.HardwareLike,
      batch_size: int = 1,
      l1_fraction: float = 0,
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
    latency_function = resource_function.latency_function_factory(
        hardware, batch_size)
    self._hardware = latency_function.hardware.name
    components = latency_components(latency_function.hardware, batch_size)
    self._build(
        output_boundary,
        flop_regularizer._group_lasso_op_handler_dict(
            threshold, l1_fraction, regularizer_decorator,
            decorator_parameters),
        latency_function,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy,
        components=components)


class LogisticSigmoidLatencyRegularizer(
    logistic_sigmoid_regularizer.LogisticSigmoidRegularizer):
  """A NetworkRegularizer that targets latency using probabilistic gates (FiGS).

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    hardware: A key of `resource_function.PEAK_COMPUTE` (e.g. `'V100'`), a
      name registered with `hardware.register`, a `hardware.Hardware`, or
      the path of a hardware JSON file (`morphnet calibrate` writes one).
    batch_size: The inference batch size. Defaults to 1.
    regularize_on_mask: Regularize the gates' masks (True) or their keep
      probabilities sigmoid(logits) (False).
    alive_threshold: A channel is alive iff its mask (or probability) is
      `>= alive_threshold`, in [0, 1]. Defaults to 0.1.
    mask_as_alive_vector: Decide aliveness on the mask (True) or on
      sigmoid(logits) (False).
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
    ValueError: `hardware` is unknown, `batch_size` is not positive or
      `alive_threshold` is outside [0, 1].
  """

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
      hardware: hardware_lib.HardwareLike,
      batch_size: int = 1,
      regularize_on_mask: bool = True,
      alive_threshold: float = 0.1,
      mask_as_alive_vector: bool = True,
      regularizer_decorator: Optional[Callable[..., Any]] = None,
      decorator_parameters: Optional[Mapping[str, Any]] = None,
      input_boundary: Optional[Sequence[tf.Operation]] = None,
      force_group: Optional[Sequence[str]] = None,
      regularizer_blacklist: Optional[Sequence[str]] = None,
      *,
      extra_op_handlers: Optional[Mapping[str, Any]] = None,
      unknown_op_policy: str = 'group'):
    # Checked before the (slower) graph analysis.
    self._latency_function = resource_function.latency_function_factory(
        hardware, batch_size)
    self._hardware = self._latency_function.hardware.name
    self._batch_size = batch_size
    super().__init__(
        output_boundary,
        regularize_on_mask=regularize_on_mask,
        alive_threshold=alive_threshold,
        mask_as_alive_vector=mask_as_alive_vector,
        regularizer_decorator=regularizer_decorator,
        decorator_parameters=decorator_parameters,
        input_boundary=input_boundary,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)

  _NAME = 'LogisticSigmoidLatency'

  def get_calculator(self):
    return compiled_cost.CompiledCostCalculator(
        self._manager, self._latency_function,
        components=latency_components(self._latency_function.hardware, self._batch_size))

  @property
  def cost_name(self) -> str:
    return self._hardware + ' Latency'


def latency_components(hardware: hardware_lib.HardwareLike, batch_size: int):
  """The compute and memory times whose maximum is the latency of an op.

  Used by the compiled cost (`compiled_cost.CompiledCostCalculator`), which
  checks, op by op, that their maximum equals the latency function; None if
  the hardware's figures cannot be read (the latency is then costed op by op).

  Args:
    hardware: A `hardware.Hardware`, or anything `hardware.resolve` accepts
      (a datasheet key such as 'P100', a registered name, a JSON path); the
      compute time of an op uses its per-op-type efficiency
      (`effective_peak_compute`).
    batch_size: The batch size.

  Returns:
    `[compute_time, memory_time]`, two resource functions, or None.
  """
  try:
    hardware = hardware_lib.resolve(hardware)
    memory_bandwidth = float(hardware.memory_bandwidth)
  except (AttributeError, TypeError, ValueError):
    return None

  def compute_time(op, is_regularization, *args):
    if not is_regularization and not resource_function.is_flop_op(op):
      return 0.0
    return resource_function.flop_function(
        op, is_regularization, *args, batch_size=batch_size) / float(
            hardware.effective_peak_compute(op.type))

  def memory_time(op, is_regularization, *args):
    return resource_function.memory_function(
        op, is_regularization, *args, batch_size=batch_size) / memory_bandwidth

  return [compute_time, memory_time]
