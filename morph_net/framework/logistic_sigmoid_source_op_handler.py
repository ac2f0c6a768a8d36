"""Source OpHandler for probabilistic (logistic-sigmoid) gating ops (FiGS).

A gating layer (`probabilistic_gating.activation_gating.LogisticSigmoidGating`)
multiplies an activation by a per-channel mask computed from trainable log-odds
(`mask_logits`). The op producing that mask is a regularizer *source*: its
channels get a `ProbGatingRegularizer` built from the logits and the mask.

How the gating op is found (porting note). The original defined a custom op
type `'LogisticSigmoidGating'` with `function.Defun`, and registered this
handler for that type. TF2 has no Defun op types, and in inference mode the
original layer emitted no sampling op at all. In this port:

  * the layer always ends its mask computation, training or inference, in
    `tf.identity(mask, name='LogisticSigmoidGating')` (op type `Identity`,
    named `<layer scope>/LogisticSigmoidGating`), before
    `keep_first_channel_alive` is applied, as the original's op output was;
  * in graph contexts (a `tf.compat.v1` graph or a `tf.function` /
    Keras trace) the layer records that op here, with `register_gating_op`, in
    a registry keyed weakly by graph. Recognition (`is_gating_op`) requires the
    record, so a user's own `Identity` named `LogisticSigmoidGating` is never
    mistaken for a gate, and renamed scopes do not matter;
  * network regularizers register a `GatingOpDispatcher` for op type
    `Identity`: like the decomposed batch-norm dispatcher for `Mul`, the manager
    calls its `handler_for_op(op)`, which returns this source handler for
    recorded gating ops and the usual `Identity` handler for every other one.
    Ops of the original custom type `'LogisticSigmoidGating'` (e.g. in a graph
    imported from the original library) are also accepted, using
    `inputs[0]` as logits and `outputs[0]` as mask.

What the regularizer reads (lazy evaluation contract):

  * in a plain `tf.compat.v1` graph, as in the original: the logits are the
    `mask_logits` variable and the mask is the gating op's output tensor (the
    sampled mask in a training graph, the deterministic inference mask in an
    inference graph), evaluated in that graph;
  * for a graph traced by `tf.function` (e.g. a Keras model traced by
    `keras_integration.tracing`, always in inference mode), no tensor of the
    trace can be read later. The logits are the layer's variable, and the mask
    is *re-sampled from the variable* when the regularizer is read: a fresh
    training-mode sample (logistic noise, the layer's current temperature and
    straight-through setting), whatever the mode of the trace. The regularizer
    is a training-time object: this keeps the original's training semantics
    (its expectation is sigmoid(logits), its gradient is the layer's surrogate
    gradient) in `fit`'s train step. Inside one `tf.function` graph every read
    shares one sample, so the cost and the regularization term of a train step
    see the same structure; each eager read draws a new sample. For
    deterministic costs and exports use `mask_as_alive_vector=False` (alive iff
    sigmoid(logits) >= alive_threshold) and, for a deterministic term,
    `regularize_on_mask=False`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from morph_net.framework import grouping_op_handler
from morph_net.framework import lazy_evaluation
from morph_net.framework import op_handler
from morph_net.framework import tpu_util
from morph_net.op_regularizers import prob_gating_regularizer

# Name (last component) of the op ending a gate's mask computation.
GATING_OP_NAME = 'LogisticSigmoidGating'
# Op type of the original library's custom gating op (a Defun).
LEGACY_GATING_OP_TYPE = 'LogisticSigmoidGating'


@dataclasses.dataclass(frozen=True)
class GatingOpRecord:
  """What the gating layer recorded about one gating op.

  Holds no tensor. The layer is referenced strongly only for ops of a
  `tf.function` trace, where the regularizer needs it after tracing (a layer
  created inside the traced function may otherwise be collected before the
  regularizer is built); its variables are eager there, so nothing refers back
  to the graph and the graph-keyed registry still frees it. In a
  `tf.compat.v1` graph the layer's variables belong to the graph, so only a
  weak reference is kept.

  Attributes:
    logits_name: name of the tensor reading the logits (the original's
      `op.inputs[0]`) in the op's graph.
    is_training: whether the op is a training-mode (sampled) mask.
    gate_ref: weak reference to the gate object (the layer), or None. The gate
      provides `logits_variable` (its `mask_logits` variable) and
      `sample_mask()` (a fresh training-mode mask in the current context).
  """
  logits_name: str
  is_training: bool
  gate_ref: Optional[weakref.ref] = None
  gate_strong: Any = None

  @property
  def gate(self) -> Any:
    """The gate object, or None if it was not given or is garbage collected."""
    if self.gate_strong is not None:
      return self.gate_strong
    return None if self.gate_ref is None else self.gate_ref()


# graph -> {op name: GatingOpRecord}; graphs are held weakly.
_RECORDS: 'weakref.WeakKeyDictionary[tf.Graph, Dict[str, GatingOpRecord]]' = (
    weakref.WeakKeyDictionary())


def register_gating_op(op: tf.Operation, logits: tf.Tensor, gate: Any = None,
                       is_training: bool = True) -> None:
  """Records `op` as the op producing a gate's mask.

  Called by the gating layer when it builds its mask in a graph context.

  Args:
    op: the op whose first output is the (raw) mask, shape `[channels]`.
    logits: the tensor of the same graph reading the gate's log-odds.
    gate: the gate object (see `GatingOpRecord`); only a weak reference is
      kept. Needed to evaluate the regularizer outside a `tf.function` trace.
    is_training: whether the mask is a training-mode sample.

  Raises:
    TypeError: `op` is not a graph `tf.Operation` or `logits` is not a tensor
      of its graph (e.g. when executing eagerly).
  """
  if not isinstance(op, tf.Operation) or getattr(op, 'graph', None) is None:
    raise TypeError(
        'register_gating_op needs the tf.Operation of a graph (a tf.compat.v1 '
        'graph or a tf.function trace); eager tensors have no op. Received: '
        f'op={op!r}.')
  if getattr(logits, 'graph', None) is not op.graph:
    raise TypeError(
        'logits must be a tensor of the gating op\'s graph. Received: '
        f'logits={logits!r} for op {op.name!r}.')
  gate_ref = None if gate is None else weakref.ref(gate)
  strong = gate if _is_function_graph(op.graph) else None
  _RECORDS.setdefault(op.graph, {})[op.name] = GatingOpRecord(
      logits_name=logits.name, is_training=bool(is_training), gate_ref=gate_ref,
      gate_strong=strong)


def get_gating_op_record(op: tf.Operation) -> Optional[GatingOpRecord]:
  """The record of a gating op registered with `register_gating_op`, or None."""
  records = _RECORDS.get(op.graph)
  if not records:
    return None
  return records.get(op.name)


def is_gating_op(op: tf.Operation) -> bool:
  """True for a recorded gating op, or an op of the original custom type."""
  if op.type == LEGACY_GATING_OP_TYPE:
    return True
  return op.type == 'Identity' and get_gating_op_record(op) is not None


def _is_function_graph(graph: tf.Graph) -> bool:
  return bool(getattr(graph, 'building_function', False))


class _ResampledMask:
  """A lazy recipe: a fresh training-mode mask sampled from the gate's logits.

  One sample per graph (every read inside one `tf.function` trace shares it);
  a new sample at every eager read.
  """

  def __init__(self, gate: Any):
    self._gate = gate
    self.shape = tf.TensorShape(gate.logits_variable.shape)
    self._graph_ref = None
    self._value = None

  def __call__(self) -> tf.Tensor:
    if tf.executing_eagerly():
      return self._gate.sample_mask()
    graph = tf.compat.v1.get_default_graph()
    if self._graph_ref is not None and self._graph_ref() is graph:
      return self._value
    value = self._gate.sample_mask()
    self._graph_ref = weakref.ref(graph)
    self._value = value
    return value

  def __repr__(self):
    return f'_ResampledMask({getattr(self._gate, "name", self._gate)!r})'


class LogisticSigmoidSourceOpHandler(grouping_op_handler.GroupingOpHandler):
  """Source OpHandler for logistic-sigmoid gating ops.

  Grouping is as for batch norm: each ungrouped slice first gets its own source
  group, then the op groups like an element-wise op (with its mask inputs and
  the gated activation `Mul`).

  Args:
    regularize_on_mask: regularize the mask (True) or sigmoid(logits) (False).
    alive_threshold: a channel is alive iff its mask (or probability) is
      `>= alive_threshold` (inclusive).
    mask_as_alive_vector: decide aliveness on the mask (True) or on
      sigmoid(logits) (False).
  """

  def __init__(self, regularize_on_mask: bool = True,
               alive_threshold: float = 0.1,
               mask_as_alive_vector: bool = True):
    super().__init__()
    self._regularize_on_mask = regularize_on_mask
    self._alive_threshold = alive_threshold
    self._mask_as_alive_vector = mask_as_alive_vector

  @property
  def is_source_op(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    """Gives each ungrouped slice its own source group, then groups as usual.

    Args:
      op: a gating op.
      op_reg_manager: the `OpRegularizerManager` analysing the graph.
    """
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        op_reg_manager.create_op_group_for_op_slice(op_slice)
    super().assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice: Any):
    """Returns a `ProbGatingRegularizer` for the channels of `op_slice`.

    Args:
      op_slice: an `OpSlice` of a gating op.

    Returns:
      A `ProbGatingRegularizer` over the logits and mask of the slice.

    Raises:
      ValueError: the op is not a recognised gating op, or (for a
        `tf.function` trace) its gating layer no longer exists.
    """
    logits, mask = _logits_and_mask(op_slice.op)
    start_index = op_slice.slice.start_index
    size = op_slice.slice.size
    num_channels = lazy_evaluation.static_shape(logits)[-1]
    kwargs = dict(regularize_on_mask=self._regularize_on_mask,
                  alive_threshold=self._alive_threshold,
                  mask_as_alive_vector=self._mask_as_alive_vector)
    if start_index == 0 and size == num_channels:
      return prob_gating_regularizer.ProbGatingRegularizer(logits, mask, **kwargs)
    logits = tpu_util.maybe_convert_to_variable(logits)
    return prob_gating_regularizer.ProbGatingRegularizer(
        lazy_evaluation.LazySlice(logits, start_index, size),
        lazy_evaluation.LazySlice(mask, start_index, size), **kwargs)


def _logits_and_mask(op: tf.Operation) -> Tuple[Any, Any]:
  """The logits and mask recipes of a gating op (see the module docstring)."""
  record = get_gating_op_record(op)
  if record is None:
    if op.type == LEGACY_GATING_OP_TYPE:
      return op.inputs[0], op.outputs[0]
    raise ValueError(
        'Op is not a LogisticSigmoidGating op: gating ops are created by '
        'probabilistic_gating.activation_gating (LogisticSigmoidGating layer or '
        'logistic_sigmoid_gating) in this process, or have the original custom '
        f'op type {LEGACY_GATING_OP_TYPE!r}. Received: op {op.name!r} of type '
        f'{op.type!r}.')
  if not _is_function_graph(op.graph):
    # A tf.compat.v1 graph: the original semantics, evaluated in that graph.
    return op.graph.get_tensor_by_name(record.logits_name), op.outputs[0]
  gate = record.gate
  if gate is None:
    raise ValueError(
        'The gating layer that created this op no longer exists, so its mask '
        'cannot be evaluated outside the tf.function trace. Keep the '
        'LogisticSigmoidGating layer (or the model holding it) alive while the '
        f'regularizer is built and used. Received: op {op.name!r}.')
  return gate.logits_variable, _ResampledMask(gate)


class GatingOpDispatcher(op_handler.OpHandler):
  """Dispatches `Identity` ops: recorded gating ops are sources.

  Registered by the LogisticSigmoid regularizers for op type `Identity`. The
  manager calls `handler_for_op(op)` whenever a handler defines it, so
  `is_source_op` / `is_passthrough` are answered per op.

  Args:
    source_handler: the handler for gating ops (a
      `LogisticSigmoidSourceOpHandler`, possibly decorated).
    fallback_handler: the handler for every other `Identity`. Defaults to a
      `GroupingOpHandler` (what the default dictionaries give `Identity`).
  """

  def __init__(self, source_handler: op_handler.OpHandler,
               fallback_handler: Optional[op_handler.OpHandler] = None):
    self._source = source_handler
    self._fallback = fallback_handler or grouping_op_handler.GroupingOpHandler()

  def handler_for_op(self, op: tf.Operation) -> op_handler.OpHandler:
    """The handler for this particular op."""
    return self._source if is_gating_op(op) else self._fallback

  @property
  def is_source_op(self) -> bool:
    # Per op, answered through handler_for_op; as a type, Identity is not.
    return False

  @property
  def is_passthrough(self) -> bool:
    return True

  def assign_grouping(self, op: tf.Operation, op_reg_manager: Any) -> None:
    self.handler_for_op(op).assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice: Any):
    return self.handler_for_op(op_slice.op).create_regularizer(op_slice)
