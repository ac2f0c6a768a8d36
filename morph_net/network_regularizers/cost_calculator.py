"""Sums a resource function over the ops of a network.

`CostCalculator(op_regularizer_manager, resource_function)` evaluates, for every
costed op, `resource_function(op, is_regularization, A_in, A_out, R_in, R_out)`
where A_in / A_out are the numbers of alive input / output channels and R_in /
R_out the sums of the input / output regularization vectors. The input channels
of an op are those of the tensor feeding it (`get_input_activation`), usually
the previous layer's activation: this is what couples a layer's regularizer
with that of the layer before it.

Only op types in `SUPPORTED_OPS` are costed; every other op (pooling, reshapes,
biases, ...) is skipped, as in the original library: it has no FLOPs or weights
of its own, and for latency its memory traffic is not counted.

The calculator is lazy like the regularizers it reads: every call builds its
tensors in the context it is called in (a `tf.compat.v1` graph, an eager step or
a `tf.function`), reading the regularizers' vectors at that moment.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from absl import logging
import tensorflow as tf

from morph_net.framework import concat_and_slice_regularizers
from morph_net.framework import lazy_evaluation
from morph_net.framework import op_handler_util
from morph_net.framework import split_op_handler

CONV2D_OPS = ('Conv2D', 'Conv2DBackpropInput', 'DepthwiseConv2dNative')
CONV3D_OPS = ('Conv3D',)
CONV_OPS = CONV2D_OPS + CONV3D_OPS
FLOP_OPS = CONV_OPS + ('MatMul',)
SUPPORTED_OPS = FLOP_OPS + (
    'Add', 'AddV2', 'AddN', 'ConcatV2', 'FusedBatchNorm', 'FusedBatchNormV2',
    'FusedBatchNormV3', 'Mul', 'Relu', 'Relu6', 'Sum')
# Op types with FLOPs of their own but no cost function (attention's
# projections and products: keras EinsumDense, MultiHeadAttention). They are
# left out of the cost, as every unsupported op is; `_default_ops` warns once.
UNCOSTED_FLOP_OPS = ('BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3', 'Einsum',
                     'Conv', 'Conv3DBackpropInputV2')


def _warn_uncosted(ops) -> None:
  """Warns when `ops` has ops of `UNCOSTED_FLOP_OPS` (left out of the cost)."""
  uncosted = sorted((op for op in ops if op.type in UNCOSTED_FLOP_OPS),
                    key=lambda op: op.name)
  if not uncosted:
    return
  logging.warning(
      'MorphNet cost: %d op(s) with FLOPs of their own have no cost function '
      'and are left out of the cost (%s; e.g. %s). The cost undercounts the '
      'network, and channels read only by these ops are priced at 0. Costed '
      'types: %s.', len(uncosted),
      op_handler_util.op_type_counts(uncosted),
      ', '.join(op.name for op in uncosted[:3]), ', '.join(FLOP_OPS))


class CostCalculator:
  """Computes the cost (or its regularization term) of the ops of a network.

  Args:
    op_regularizer_manager: The `OpRegularizerManager` of the network.
    resource_function: A function
      `(op, is_regularization, num_alive_inputs, num_alive_outputs,
      reg_inputs, reg_outputs)` returning the cost or the regularization term
      of one op, e.g. `resource_function.flop_function`.
  """

  def __init__(self, op_regularizer_manager,
               resource_function: Callable[..., Any]):
    self._manager = op_regularizer_manager
    self._resource_function = resource_function
    # Eager whole-network evaluations run through one tf.function per kind
    # (cost / term): an eager loop over hundreds of ops costs ~100x more.
    self._compiled = {}
    self._warned_uncosted = False

  # Not converted by AutoGraph inside a user's `tf.function` (plain Python
  # over a fixed op list: converting it only slows the trace, by seconds).
  @tf.autograph.experimental.do_not_convert
  def get_cost(self, ops: Optional[Sequence[tf.Operation]] = None):
    """Returns the cost of `ops` if only their alive channels were kept.

    Args:
      ops: The ops to cost. None or an empty list means all the ops of the
        manager, and the FLOP ops it crawled without grouping them.

    Returns:
      A float32 scalar tensor of the current context, or the Python float
      0.0 if no op is supported.
    """
    return self._get_cost_or_regularization_term(False, ops)

  @tf.autograph.experimental.do_not_convert
  def get_regularization_term(self,
                              ops: Optional[Sequence[tf.Operation]] = None):
    """Returns the regularization term of `ops` (differentiable in the vectors).

    Args:
      ops: The ops to regularize. None or an empty list means all the ops of
        the manager.

    Returns:
      A float32 scalar tensor of the current context, or the Python float
      0.0 if no op is supported.
    """
    return self._get_cost_or_regularization_term(True, ops)

  def _default_ops(self):
    """The manager's ops, plus the FLOP ops it crawled but never grouped.

    Beyond the original, which costed only `manager.ops` (the ops touched
    while grouping): a convolution that no grouping reached (e.g. a depthwise
    convolution between the input and a `Flatten`, with no source near it)
    silently vanished from the cost. Such ops have no regularizer and are
    costed with their full channel counts.
    """
    ops = set(self._manager.ops)
    crawled = getattr(self._manager, 'crawled_ops', ())
    ops.update(op for op in crawled if op.type in FLOP_OPS)
    if not self._warned_uncosted:
      self._warned_uncosted = True
      _warn_uncosted(ops.union(crawled))
    return ops

  def _get_cost_or_regularization_term(self, is_regularization, ops):
    if not ops:
      if tf.executing_eagerly() and any(
          op.type in SUPPORTED_OPS for op in self._default_ops()):
        compiled = self._compiled.get(is_regularization)
        if compiled is None:
          compiled = tf.function(
              lambda: self._sum_over_ops(is_regularization, None),
              autograph=False)
          self._compiled[is_regularization] = compiled
        return compiled()
    return self._sum_over_ops(is_regularization, ops)

  def _sum_over_ops(self, is_regularization, ops):
    with lazy_evaluation.evaluation_scope():
      return self._sum_over_ops_in_scope(is_regularization, ops)

  def _sum_over_ops_in_scope(self, is_regularization, ops):
    if not ops:
      # A set: sort by name so that the sum is built in a reproducible order.
      ops = sorted(self._default_ops(), key=lambda op: op.name)
    # Within one call every tensor belongs to the same context, so the counts
    # of a regularizer shared by several ops (a group) can be reused.
    alive_counts = {}
    reg_sums = {}
    total = 0.0
    found_supported_op = False
    for op in ops:
      if op.type not in SUPPORTED_OPS:
        continue
      found_supported_op = True
      if op.type == 'ConcatV2':
        # The inputs and the output of a concat carry the same regularizer.
        input_tensor = op.outputs[0]
      else:
        input_tensor = get_input_activation(op)
      # The output of a channel split holds a range of the split's channels.
      input_regularizer = split_op_handler.regularizer_of_tensor(
          self._manager, input_tensor)
      output_regularizer = self._manager.get_regularizer(op)
      # Costs propagate non-finite regularization values (see _count_alive).
      num_alive_inputs = _count_alive(input_tensor, input_regularizer,
                                      alive_counts, not is_regularization)
      num_alive_outputs = _count_alive(op.outputs[0], output_regularizer,
                                       alive_counts, not is_regularization)
      reg_inputs = _sum_regularization(input_regularizer, reg_sums)
      reg_outputs = _sum_regularization(output_regularizer, reg_sums)
      total += self._resource_function(
          op, is_regularization, num_alive_inputs, num_alive_outputs,
          reg_inputs, reg_outputs)
    if not found_supported_op:
      logging.warning('No supported ops found.')
      return 0.0
    if not tf.is_tensor(total):
      # E.g. ops none of which has a regularizer, whose coefficients are
      # static: the sum is a number; return a tensor as for any other sum.
      total = tf.constant(float(total), tf.float32)
    return total


def get_input_activation(op: tf.Operation) -> tf.Tensor:
  """Returns the input activation of `op` (the tensor its input channels are in).

  `inputs[2]` for `Conv2DBackpropInput`, `inputs[0]` for every other
  supported op type.

  Args:
    op: An op whose type is in `SUPPORTED_OPS`.

  Raises:
    ValueError: The op type is not supported, or `op` is a `MatMul` with a
      transposed operand.
  """
  if op.type not in SUPPORTED_OPS:
    raise ValueError(
        f'Op type {op.type} is not supported. Received: op {op.name!r} of '
        f'type {op.type!r}; supported types are {list(SUPPORTED_OPS)}.')
  if op.type == 'Conv2DBackpropInput':
    return op.inputs[2]
  if op.type == 'MatMul' and (op.get_attr('transpose_a') or
                              op.get_attr('transpose_b')):
    raise ValueError(
        'MatMul with transposition is not yet supported. Received: op '
        f'{op.name!r} with transpose_a={op.get_attr("transpose_a")}, '
        f'transpose_b={op.get_attr("transpose_b")}. Compute the product '
        'without transposition, e.g. with a transposed copy of the weights.')
  return op.inputs[0]


# (graph id, tensor name) of tensors already warned about (unknown channels).
_warned_unknown_channels = set()


def static_channel_count(tensor: tf.Tensor) -> float:
  """The static number of channels of `tensor` (its last dim), as a float.

  0.0 when unknown, with a warning once per tensor: the cost of the ops
  reading it is then undercounted. A scalar (e.g. the 0.5 of a GELU's Mul) is
  broadcast: one channel.
  """
  if tensor.shape.rank == 0:
    return 1.0
  channels = tensor.shape[-1] if tensor.shape.rank else None
  if channels is None:
    # A warning (the original logged at info level): the op's cost is wrong.
    key = (id(tensor.graph), tensor.name)
    if key not in _warned_unknown_channels:
      _warned_unknown_channels.add(key)
      consumers = ', '.join(op.name for op in tensor.consumers()) or 'none'
      logging.warning(
          'Unknown number of channels for tensor %r (read by %s): counted '
          'as 0 alive channels, so the cost of its consumers is undercounted. '
          'Give the tensor a static channel dimension (e.g. set_shape).',
          tensor.name, consumers)
    channels = 0
  return float(channels)


def _count_alive(tensor: tf.Tensor, regularizer, cache,
                 propagate_non_finite: bool = False):
  """Number of alive channels of `tensor`, as a float32 scalar tensor.

  The sum of the regularizer's alive vector; without a regularizer, the static
  channel count of `tensor` (0 if unknown).

  With `propagate_non_finite` (used for costs; beyond the original) the count
  is NaN when the regularization vector holds a NaN or an infinity, e.g.
  gammas after a diverged training step: `|nan| > threshold` is False, so the
  channel would be counted dead and the cost would silently drop instead.
  """
  if regularizer is None:
    return tf.constant(static_channel_count(tensor), tf.float32)
  if not propagate_non_finite:
    return _memoized_sum(
        regularizer, cache,
        lambda r: tf.reduce_sum(tf.cast(r.alive_vector, tf.float32)))

  def guarded_count(r):
    count = tf.reduce_sum(tf.cast(r.alive_vector, tf.float32))
    # 0 * x is 0 for a finite x, NaN for NaN or +-inf.
    return count + 0.0 * tf.reduce_sum(tf.cast(r.regularization_vector, tf.float32))

  return _memoized_sum(regularizer, cache, guarded_count)


def _sum_regularization(regularizer, cache):
  """Sum of the regularizer's regularization vector; 0.0 without a regularizer."""
  if regularizer is None:
    return 0.0
  return _memoized_sum(regularizer, cache,
                       lambda r: tf.reduce_sum(r.regularization_vector))


def _memoized_sum(regularizer, cache, leaf_sum):
  """`leaf_sum(regularizer)`, memoized per object within one evaluation.

  The sum over a `ConcatRegularizer` (an op with several channel slices, e.g.
  in DenseNet's concatenations) is the sum of its members' sums: summing the
  members, each memoized, avoids building a concatenation per op.
  """
  key = id(regularizer)
  if key not in cache:
    if isinstance(regularizer, concat_and_slice_regularizers.ConcatRegularizer):
      value = tf.add_n([_memoized_sum(member, cache, leaf_sum)
                        for member in regularizer.regularizers])
    else:
      value = leaf_sum(regularizer)
    cache[key] = (regularizer, value)
  return cache[key][1]
