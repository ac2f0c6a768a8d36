"""Gamma source handler for batch norm lowered to element-wise ops (Keras 3).

Registered by the Gamma regularizers for op type `Mul`. A `Mul` op is
ambiguous: most are plain element-wise products, one per decomposed batch norm
is `Mul(x, rsqrt(var + eps) * gamma)` (see `decomposed_batch_norm`). This
handler decides per op: `handler_for_op(op)` returns a batch-norm source
handler reading the matched gamma, or the fallback (a `GroupingOpHandler`, the
default for `Mul`). The manager asks `handler_for_op` whenever a handler
defines it, so `is_source_op` / `is_passthrough` are answered per op.
"""

from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf
from absl import logging

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import decomposed_batch_norm
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handler
from morph_net.framework import op_handler_decorator


class _MatchedBatchNormSourceOpHandler(batch_norm_source_op_handler.BatchNormSourceOpHandler):
  """BatchNormSourceOpHandler whose gamma comes from a pattern match."""

  def __init__(self, gamma_threshold: float, gammas: Dict[tf.Operation, tf.Tensor]):
    super().__init__(gamma_threshold)
    self._gammas = gammas

  def _get_gamma(self, op: tf.Operation) -> tf.Tensor:
    return self._gammas[op]


class DecomposedBatchNormSourceOpHandler(op_handler.OpHandler):
  """Dispatches `Mul` ops: decomposed batch norms are gamma sources.

  Args:
    gamma_threshold: channels with |gamma| > gamma_threshold are alive.
    fallback_handler: handler for other `Mul` ops. Defaults to a
      `GroupingOpHandler` (what the default dictionaries give `Mul`).
    regularizer_decorator: optional OpRegularizer decorator class, as for the
      fused batch-norm source.
    decorator_parameters: keyword arguments for the decorator.
  """

  def __init__(self, gamma_threshold: float,
               fallback_handler: Optional[op_handler.OpHandler] = None,
               regularizer_decorator=None, decorator_parameters=None):
    self._gammas: Dict[tf.Operation, tf.Tensor] = {}
    self._matched: Dict[tf.Operation, bool] = {}
    source = _MatchedBatchNormSourceOpHandler(gamma_threshold, self._gammas)
    if regularizer_decorator is not None:
      source = op_handler_decorator.OpHandlerDecorator(
          source, regularizer_decorator, decorator_parameters)
    self._source = source
    self._fallback = fallback_handler or grouping_op_handler.GroupingOpHandler()
    self._warned_unscaled = set()

  def _is_match(self, op: tf.Operation) -> bool:
    if op not in self._matched:
      match = decomposed_batch_norm.match(op)
      self._matched[op] = match is not None
      if match is not None:
        self._gammas[op] = match.gamma
      elif decomposed_batch_norm.match_unscaled(op) and op.name not in self._warned_unscaled:
        self._warned_unscaled.add(op.name)
        logging.warning(
            'Op %s normalizes channels without a gamma (a batch norm with '
            'scale=False): its channels get no Gamma regularizer and are costed '
            'as always alive. Use scale=True or a GroupLasso regularizer.', op.name)
    return self._matched[op]

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """The handler for this particular `Mul` op."""
    return self._source if self._is_match(op) else self._fallback

  @property
  def is_source_op(self) -> bool:
    # Per op, answered through handler_for_op; as a type, Mul is not a source.
    return False

  @property
  def is_passthrough(self) -> bool:
    return True

  def assign_grouping(self, op, op_reg_manager):
    self.handler_for_op(op).assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice):
    return self.handler_for_op(op_slice.op).create_regularizer(op_slice)
