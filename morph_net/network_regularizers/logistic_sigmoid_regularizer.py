"""Base class of the LogisticSigmoid (FiGS) network regularizers.

Fine-Grained Stochastic Architecture Search: probabilistic gating layers
(`probabilistic_gating.activation_gating.LogisticSigmoidGating`) placed after
the layers to prune learn a keep probability per channel; the regularizer
targets the cost of the structure the gates keep. This is the family the
original README recommends over Gamma and GroupLasso.

`LogisticSigmoidRegularizer` builds the `OpRegularizerManager` with
`op_handlers.get_gamma_op_handler_dict()` plus the gating source handler
(optionally decorated), registered for the original custom op type
`'LogisticSigmoidGating'` and, through a per-op `GatingOpDispatcher`, for the
`Identity` op that ends the port's gate (see
`framework/logistic_sigmoid_source_op_handler.py`). Groups of gates are
combined with `ProbabilisticGroupingRegularizer` (1 - prod(1 - p), OR).
Subclasses choose the resource by implementing `get_calculator()`:
`LogisticSigmoidFlopsRegularizer` (`flop_regularizer`),
`LogisticSigmoidModelSizeRegularizer` (`model_size_regularizer`) and
`LogisticSigmoidLatencyRegularizer` (`latency_regularizer`).

Example (Keras 3):
  reg = LogisticSigmoidFlopsRegularizer.from_keras_model(model)
  loss += strength * reg.get_regularization_term()
"""

from __future__ import annotations

import abc
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence

import tensorflow as tf

from morph_net.framework import logistic_sigmoid_source_op_handler as ls_handler
from morph_net.framework import op_handler_decorator
from morph_net.framework import op_handlers
from morph_net.framework import probabilistic_grouping_regularizer as pgr
from morph_net.network_regularizers import base_network_regularizer


class LogisticSigmoidRegularizer(
    base_network_regularizer.BaseNetworkRegularizer, metaclass=abc.ABCMeta):
  """Abstract base of the network regularizers for probabilistic gates.

  Args:
    output_boundary: Ops where the analysis starts (e.g. `[logits.op]`).
    regularize_on_mask: Regularize the gates' masks (True) or their keep
      probabilities sigmoid(logits) (False).
    alive_threshold: A channel is alive iff its mask (or probability) is
      `>= alive_threshold`, in [0, 1]. Defaults to 0.1.
    mask_as_alive_vector: Decide aliveness on the mask (True) or on
      sigmoid(logits) (False).
    regularizer_decorator: An `OpRegularizer` class applied to every
      regularizer created. None means no decoration. The decorated
      regularizers must keep `is_probabilistic` if gates are grouped.
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
    ValueError: `alive_threshold` is outside [0, 1].
  """

  def __init__(
      self,
      output_boundary: Sequence[tf.Operation],
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
    if isinstance(alive_threshold, numbers.Real) and not 0.0 <= alive_threshold <= 1.0:
      raise ValueError(
          'alive_threshold must be in [0, 1]: a channel is alive when its mask '
          '(or keep probability) is >= alive_threshold. Received: '
          f'alive_threshold={alive_threshold!r}.')
    source_op_handler = ls_handler.LogisticSigmoidSourceOpHandler(
        regularize_on_mask, alive_threshold, mask_as_alive_vector)
    if regularizer_decorator:
      source_op_handler = op_handler_decorator.OpHandlerDecorator(
          source_op_handler, regularizer_decorator, decorator_parameters)
    op_handler_dict = op_handlers.get_gamma_op_handler_dict()
    op_handler_dict[ls_handler.LEGACY_GATING_OP_TYPE] = source_op_handler
    op_handler_dict['Identity'] = ls_handler.GatingOpDispatcher(
        source_op_handler, fallback_handler=op_handler_dict['Identity'])
    self._build(
        output_boundary,
        op_handler_dict,
        None,
        create_grouping_regularizer=pgr.ProbabilisticGroupingRegularizer,
        force_group=force_group,
        regularizer_blacklist=regularizer_blacklist,
        input_boundary=input_boundary,
        extra_op_handlers=extra_op_handlers,
        unknown_op_policy=unknown_op_policy)
    self._calculator = self.get_calculator()

  @abc.abstractmethod
  def get_calculator(self):
    """Returns the cost calculator over `self._manager` for the target resource."""
