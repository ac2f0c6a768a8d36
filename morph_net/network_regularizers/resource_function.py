"""Resource functions: what one op costs, given its alive and regularized channels.

A resource function has the signature

  fn(op, is_regularization, num_alive_inputs, num_alive_outputs,
     reg_inputs, reg_outputs, batch_size=1)

and returns either the cost of `op` (`is_regularization=False`) if only the
alive channels were kept, or a differentiable surrogate of that cost
(`is_regularization=True`) built from the summed regularization vectors.
Notation below: B = batch size, A_in / A_out = alive input / output channels,
R_in / R_out = summed input / output regularization vectors, K = product of the
weight tensor's shape without its last two dims (the kernel's spatial size).

Coefficients are read from the op's *static* shapes when they are fully known
(they are then plain Python floats, valid in any evaluation context: a
`tf.compat.v1` graph, an eager step or a `tf.function`). When a needed
dimension is unknown, it is read at run time from the dynamic shape, which is
only possible inside the graph the op belongs to.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from typing import Any, Callable, Optional

import tensorflow as tf

from morph_net.framework import grouped_convolution_op_handler
from morph_net.framework import op_handler_util
from morph_net.network_regularizers import cost_calculator
from morph_net.network_regularizers import hardware as hardware_lib

# Peak compute of the hardware, in GFLOP/s.
PEAK_COMPUTE = {
    'K80': 8740,
    'P4': 5500,
    'T4': 8100,
    'P100': 9300,
    'V100': 125000,
    'TPUv2': 22500,
    'FLOP_LATENCY': 1,  # Simulates infinite memory bandwidth.
    'MEMORY_LATENCY': 1e20,  # Simulates infinite compute.
}

# Memory bandwidth of the hardware, in GB/s.
MEMORY_BANDWIDTH = {
    'K80': 480,
    'P4': 192,
    'T4': 300,
    'P100': 732,
    'V100': 900,
    'TPUv2': 300,
    'FLOP_LATENCY': 1e20,
    'MEMORY_LATENCY': 1,
}

_ResourceFunction = Callable[..., Any]


def is_flop_op(op: tf.Operation) -> bool:
  """Returns True if `op` is a convolution or a matmul (an op that costs FLOPs).

  Args:
    op: A `tf.Operation`.

  Raises:
    ValueError: `op` is not a `tf.Operation`.
  """
  if not isinstance(op, tf.Operation):
    raise ValueError(
        f'conv_op must be a tf.Operation, not {type(op).__name__}. '
        f'Received: conv_op={op!r}.')
  return op.type in cost_calculator.FLOP_OPS


def flop_coeff(op: tf.Operation):
  """Returns the FLOPs per pair of (input channel, output channel) of `op`.

  2 for `MatMul` (times its rows per example, see below); 2 * S * K for
  convolutions, where S is the number of spatial positions of the output (of
  the input activation `inputs[2]` for `Conv2DBackpropInput`, which is costed
  like the forward convolution mapping its output back to its input); 0.0 for
  ops that are not FLOP ops.

  Example: an 11x13 input, a 7x5 kernel with stride 2 and SAME padding give a
  6x7 output and a coefficient of 2 * 42 * 35 = 2940.

  Dilated convolutions (beyond the original): TF lowers them to
  `SpaceToBatchND -> Conv2D -> BatchToSpaceND` (with `ExpandDims` / `Squeeze`
  around the `Conv2D` of a 1-D convolution), where the convolution's own
  output has the blocks in its batch dimension and a spatial size about
  rate**2 (rate for 1-D) times smaller. S is then taken from the
  `BatchToSpaceND` output, the positions the layer really computes, so that a
  dilated layer costs 2 * H_out * W_out * K like any other (the original
  under-counted it).

  MatMul rows (beyond the original): a `MatMul` fed by a `Reshape` that
  keeps the last (channel) axis, as in a Keras `Dense` on a rank > 2 input
  (`Reshape -> MatMul -> Reshape`), multiplies one row per position of the
  reshaped input: the coefficient is 2 * R with R the product of that input's
  dims between batch and channels. Any other `MatMul` (rank-2 input) keeps
  the original's 2.

  Args:
    op: A `tf.Operation`.

  Returns:
    A Python float, or a float32 scalar tensor of `op`'s graph when a needed
    dimension is not statically known.
  """
  if not is_flop_op(op):
    return 0.0
  if op.type == 'MatMul':
    rows_tensor = _reshaped_matmul_input(op)
    if rows_tensor is None:
      return 2.0
    return 2.0 * _dims_product(rows_tensor, 1, -1)
  if op.type == 'Conv2DBackpropInput':
    spatial_tensor = op.inputs[2]
  else:
    spatial_tensor = _dilated_convolution_output(op)
    if spatial_tensor is None:
      spatial_tensor = op.outputs[0]
  spatial_size = _dims_product(spatial_tensor, 1, -1)
  kernel_size = _dims_product(op.inputs[1], 0, -2)
  return 2.0 * spatial_size * kernel_size


def _skip(tensor: tf.Tensor, op_types) -> tf.Tensor:
  while tensor.op.type in op_types:
    tensor = tensor.op.inputs[0]
  return tensor


def _single_consumer(tensor: tf.Tensor, op_type: str):
  consumers = tensor.consumers()
  if len(consumers) == 1 and consumers[0].type == op_type:
    return consumers[0]
  return None


def _reshaped_matmul_input(op: tf.Operation):
  """The rank > 2 input of the channel-keeping `Reshape` feeding a MatMul, else None."""
  if op.get_attr('transpose_a'):
    return None
  reshape = _skip(op.inputs[0], ('Identity', 'Cast')).op
  if reshape.type != 'Reshape':
    return None
  source = reshape.inputs[0]
  if source.shape.rank is None or source.shape.rank <= 2:
    return None
  channels = source.shape[-1]
  if channels is None or channels != op.inputs[0].shape[-1]:
    return None
  return source


def _dilated_convolution_output(op: tf.Operation):
  """The BatchToSpaceND output of a dilated convolution `op`, else None.

  Also for a dilated 1-D convolution:
  `SpaceToBatchND -> ExpandDims -> Conv2D -> Squeeze -> BatchToSpaceND`.
  """
  if op.type not in ('Conv2D', 'DepthwiseConv2dNative'):
    return None
  if _skip(op.inputs[0], ('ExpandDims',)).op.type != 'SpaceToBatchND':
    return None
  output = op.outputs[0]
  squeeze = _single_consumer(output, 'Squeeze')
  if squeeze is not None and op.inputs[0].op.type == 'ExpandDims':
    output = squeeze.outputs[0]
  batch_to_space = _single_consumer(output, 'BatchToSpaceND')
  if batch_to_space is not None:
    return batch_to_space.outputs[0]
  return None


def _grouping(op: tf.Operation):
  """How a convolution's channels pair up: ('depthwise', 1), ('grouped', g) or ('dense', 1).

  Beyond the original: a `Conv2D` whose filter sees C_in / g input channels
  (a grouped convolution, see `grouped_convolution_op_handler`) pairs each
  output channel with the inputs of its group only; with one input channel
  per group it is a depthwise convolution.
  """
  if op.type == 'DepthwiseConv2dNative':
    return 'depthwise', 1
  groups = grouped_convolution_op_handler.convolution_groups(op)
  if groups == 1:
    return 'dense', 1
  if grouped_convolution_op_handler.is_depthwise_like(op):
    return 'depthwise', 1
  return 'grouped', groups


def num_weights_coeff(op: tf.Operation):
  """Returns the number of weights per pair of (input, output) channels of `op`.

  K for convolutions, 1.0 for `MatMul`, 0.0 for ops that are not FLOP ops.

  Args:
    op: A `tf.Operation`.

  Returns:
    A Python float, or a float32 scalar tensor when the kernel shape is not
    statically known.
  """
  if not is_flop_op(op):
    return 0.0
  if op.type in cost_calculator.CONV_OPS:
    return _dims_product(op.inputs[1], 0, -2)
  return 1.0


def _calculate_bilinear_cost(op: tf.Operation, coeff, num_alive_inputs,
                             num_alive_outputs, batch_size):
  """B * coeff * A_in * A_out, or B * coeff * A_out for depthwise convolutions.

  A grouped convolution with g groups (1 < g < C_in, beyond the original)
  pairs each output channel with the a = A_in / g alive inputs of its group:
  B * coeff * A_in * A_out / g (= B * coeff * a' * b' * g with a', b' alive
  per group, since positions are tied across groups).
  """
  kind, groups = _grouping(op)
  if kind == 'depthwise':
    return batch_size * coeff * num_alive_outputs
  if kind == 'grouped':
    return batch_size * coeff * num_alive_inputs * num_alive_outputs / groups
  return batch_size * coeff * num_alive_inputs * num_alive_outputs


def _calculate_bilinear_regularization(op: tf.Operation, coeff,
                                       num_alive_inputs, num_alive_outputs,
                                       reg_inputs, reg_outputs, batch_size):
  """The linearisation of the bilinear cost around the alive channel counts.

  B * coeff * (A_in * R_out + A_out * R_in), or B * coeff * (R_in + R_out) for
  depthwise convolutions (whose input and output channels are the same),
  divided by g for a grouped convolution.
  """
  kind, groups = _grouping(op)
  if kind == 'depthwise':
    return batch_size * coeff * (reg_inputs + reg_outputs)
  if kind == 'grouped':
    return batch_size * coeff * (
        num_alive_inputs * reg_outputs + num_alive_outputs * reg_inputs) / groups
  return batch_size * coeff * (
      num_alive_inputs * reg_outputs + num_alive_outputs * reg_inputs)


def flop_function(op: tf.Operation, is_regularization: bool, num_alive_inputs,
                  num_alive_outputs, reg_inputs, reg_outputs, batch_size=1):
  """FLOPs of `op` (bilinear form with coefficient `flop_coeff(op)`).

  Args:
    op: A `tf.Operation`.
    is_regularization: Return the regularization term instead of the cost.
    num_alive_inputs: Number of alive input channels (A_in).
    num_alive_outputs: Number of alive output channels (A_out).
    reg_inputs: Sum of the input regularization vector (R_in).
    reg_outputs: Sum of the output regularization vector (R_out).
    batch_size: The batch size B. Defaults to 1.

  Returns:
    The cost or regularization term (0 for ops that are not FLOP ops).
  """
  coeff = flop_coeff(op)
  if is_regularization:
    return _calculate_bilinear_regularization(
        op, coeff, num_alive_inputs, num_alive_outputs, reg_inputs,
        reg_outputs, batch_size)
  return _calculate_bilinear_cost(
      op, coeff, num_alive_inputs, num_alive_outputs, batch_size)


def model_size_function(op: tf.Operation, is_regularization: bool,
                        num_alive_inputs, num_alive_outputs, reg_inputs,
                        reg_outputs, batch_size=1):
  """Number of weights of `op` (bilinear form with `num_weights_coeff(op)`).

  The batch size is accepted for a uniform signature and ignored: the model
  size does not depend on it.

  Args: as for `flop_function`.

  Returns:
    The cost or regularization term (0 for ops that are not FLOP ops).
  """
  del batch_size  # The number of weights does not depend on the batch size.
  coeff = num_weights_coeff(op)
  if is_regularization:
    return _calculate_bilinear_regularization(
        op, coeff, num_alive_inputs, num_alive_outputs, reg_inputs,
        reg_outputs, 1)
  return _calculate_bilinear_cost(
      op, coeff, num_alive_inputs, num_alive_outputs, 1)


def activation_count_function(op: tf.Operation, is_regularization: bool,
                              num_alive_inputs, num_alive_outputs, reg_inputs,
                              reg_outputs, batch_size=1):
  """Number of output activations (channels) of FLOP ops: A_out, or R_out.

  Args: as for `flop_function` (only the output arguments are used).

  Returns:
    R_out (regularization) or A_out (cost) for FLOP ops, 0.0 for other ops.
  """
  del num_alive_inputs, reg_inputs, batch_size  # Unused.
  if not is_flop_op(op):
    return 0.0
  if is_regularization:
    return reg_outputs
  return num_alive_outputs


def memory_function(op: tf.Operation, is_regularization: bool,
                    num_alive_inputs, num_alive_outputs, reg_inputs,
                    reg_outputs, batch_size=1):
  """Bytes read and written by `op`.

  The tensors of the op are classified as
  * *bilinear*: the weights (input `WEIGHTS_INDEX_DICT[op.type]`), whose size
    is the product of their shape without the last two dims times A_in * A_out;
  * *input*: the other inputs, except the output-shape vector of
    `Conv2DBackpropInput` (input 0), the non-activation inputs of fused batch
    norms (index > 0) and the reduction indices of `Sum` (input 1); a
    `ConcatV2`'s inputs are replaced by its output (they hold the same data);
  * *output*: the outputs (only output 0 of fused batch norms).
  The payload p of an input or output tensor is the product of its dims
  without batch and channels (an empty product is 1), times the byte size of
  its dtype. Then

    cost = sum_in p * B * A_in + sum_out p * B * A_out
           + sum_bilinear p * A_in * A_out
    reg  = sum_in p * B * R_in + sum_out p * B * R_out
           + sum_bilinear p * (A_in * R_out + A_out * R_in).

  As in the original, `Conv3D` weights are not in `WEIGHTS_INDEX_DICT` and are
  counted as an input tensor, and every input of an `Add`/`Mul` uses A_in.

  Example: a float32 Conv2D on an 11x13 image, 7x5 kernel, stride 2 SAME:
  cost = (B * 143 * A_in + 35 * A_in * A_out + B * 42 * A_out) * 4.

  Args: as for `flop_function`.

  Returns:
    The number of bytes (cost) or its regularization term.
  """
  input_tensors = []
  bilinear_tensors = []
  weights_index = op_handler_util.WEIGHTS_INDEX_DICT.get(op.type)
  for index, tensor in enumerate(op.inputs):
    if index == weights_index:
      bilinear_tensors.append(tensor)
    elif op.type == 'Conv2DBackpropInput' and index == 0:
      continue  # The output-shape vector.
    elif 'FusedBatchNorm' in op.type and index > 0:
      continue  # Scale, offset, mean and variance.
    elif op.type == 'Sum' and index == 1:
      continue  # The reduction indices.
    else:
      input_tensors.append(tensor)
  output_tensors = list(op.outputs)
  if 'FusedBatchNorm' in op.type:
    output_tensors = output_tensors[:1]
  if op.type == 'ConcatV2':
    input_tensors = list(output_tensors)

  if is_regularization:
    in_factor = batch_size * reg_inputs
    out_factor = batch_size * reg_outputs
    bilinear_factor = (num_alive_inputs * reg_outputs +
                       num_alive_outputs * reg_inputs)
  else:
    in_factor = batch_size * num_alive_inputs
    out_factor = batch_size * num_alive_outputs
    bilinear_factor = num_alive_inputs * num_alive_outputs
  kind, groups = _grouping(op)
  if kind == 'grouped':
    # The weights of a grouped convolution pair inputs and outputs per group.
    bilinear_factor = bilinear_factor / groups

  total = 0.0
  for tensor in input_tensors:
    total += _payload(tensor, 1, -1) * in_factor
  for tensor in output_tensors:
    total += _payload(tensor, 1, -1) * out_factor
  for tensor in bilinear_tensors:
    total += _payload(tensor, 0, -2) * bilinear_factor
  return _graph_tensor(total)


_STATIC_VALUES = threading.local()


@contextlib.contextmanager
def static_values():
  """Within it, memory and latency functions return numbers for static shapes.

  Outside, they return tensors in graph mode as the original did (see
  `_graph_tensor`); the compiled cost (`compiled_cost.fit_bilinear`) probes
  resource functions with numbers inside this context.
  """
  previous = getattr(_STATIC_VALUES, 'on', False)
  _STATIC_VALUES.on = True
  try:
    yield
  finally:
    _STATIC_VALUES.on = previous


def _graph_tensor(value):
  """`value` as a float32 tensor in graph mode; unchanged when eager.

  The original computed memory payloads from dynamic shapes, so memory and
  latency were always tensors in a graph, and its callers `sess.run` them.
  Unchanged within `static_values()`.
  """
  if (tf.executing_eagerly() or tf.is_tensor(value)
      or getattr(_STATIC_VALUES, 'on', False)):
    return value
  return tf.constant(float(value), tf.float32)


def latency_function(op: tf.Operation, is_regularization: bool,
                     num_alive_inputs, num_alive_outputs, reg_inputs,
                     reg_outputs, peak_compute, memory_bandwidth,
                     batch_size=1):
  """Latency of `op` on hardware with the given peak compute and bandwidth.

  The op is either compute bound (FLOPs / `peak_compute`) or memory bound
  (bytes / `memory_bandwidth`); its latency is the larger of the two. The
  regularization term is that of the dominating resource, chosen by
  comparing the two *costs* (a data-dependent choice when the costs are
  tensors). With GFLOP/s and GB/s the unit is nanoseconds.

  Args:
    op: A `tf.Operation`.
    is_regularization: Return the regularization term instead of the cost.
    num_alive_inputs: Number of alive input channels (A_in).
    num_alive_outputs: Number of alive output channels (A_out).
    reg_inputs: Sum of the input regularization vector (R_in).
    reg_outputs: Sum of the output regularization vector (R_out).
    peak_compute: Peak compute, in GFLOP/s.
    memory_bandwidth: Memory bandwidth, in GB/s.
    batch_size: The batch size B. Defaults to 1.

  Returns:
    The latency (cost) or its regularization term.
  """
  args = (num_alive_inputs, num_alive_outputs, reg_inputs, reg_outputs)
  if is_flop_op(op):
    flops = flop_function(op, False, *args, batch_size=batch_size)
  else:
    flops = 0.0
  compute_cost = flops / peak_compute
  memory_cost = memory_function(
      op, False, *args, batch_size=batch_size) / memory_bandwidth
  if not is_regularization:
    return _graph_tensor(_maximum(compute_cost, memory_cost))
  flop_reg = flop_function(
      op, True, *args, batch_size=batch_size) / peak_compute
  memory_reg = memory_function(
      op, True, *args, batch_size=batch_size) / memory_bandwidth
  return _graph_tensor(
      _select(_greater(memory_cost, compute_cost), memory_reg, flop_reg))


def latency_function_factory(hardware: Optional[hardware_lib.HardwareLike],
                             batch_size: int) -> _ResourceFunction:
  """Returns a 6-argument latency function bound to `hardware` and `batch_size`.

  Args:
    hardware: A key of `PEAK_COMPUTE` (e.g. `'V100'`), a name registered with
      `hardware.register`, a `hardware.Hardware`, or the path of a hardware
      JSON file (see `morph_net/network_regularizers/hardware.py`). The
      compute term of a FLOP op uses `peak_compute * efficiency[op.type]`.
    batch_size: The batch size, a positive integer.

  Returns:
    `fn(op, is_regularization, num_alive_inputs, num_alive_outputs,
    reg_inputs, reg_outputs)` computing `latency_function` with the figures
    of `hardware`.

  Raises:
    ValueError: `hardware` is not a known name nor a valid description, or
      `batch_size` is not positive.
  """
  if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Real)
      or not batch_size > 0):
    raise ValueError(
        'batch_size must be a positive number. '
        f'Received: batch_size={batch_size!r}.')
  spec = hardware_lib.resolve(hardware)
  memory_bandwidth = spec.memory_bandwidth

  def latency_fn(op, is_regularization, num_alive_inputs, num_alive_outputs,
                 reg_inputs, reg_outputs):
    return latency_function(
        op, is_regularization, num_alive_inputs, num_alive_outputs,
        reg_inputs, reg_outputs, spec.effective_peak_compute(op.type),
        memory_bandwidth, batch_size=batch_size)

  latency_fn.__name__ = f'latency_function_{spec.name}'
  latency_fn.hardware = spec
  return latency_fn


def _dims_product(tensor: tf.Tensor, begin: int, end: int):
  """Product of `tensor`'s dims `[begin:end]` (1 if empty), as a float.

  A Python float when those dims are statically known; otherwise a float32
  tensor computed from the dynamic shape, in `tensor`'s graph.
  """
  shape = tensor.shape
  if shape.rank is not None:
    dims = shape.as_list()[begin:end]
    if all(d is not None for d in dims):
      return float(math.prod(dims))
  _check_dynamic_shape_readable(tensor)
  return tf.cast(tf.reduce_prod(tf.shape(tensor)[begin:end]), tf.float32)


def _payload(tensor: tf.Tensor, begin: int, end: int):
  """Bytes per (batch element, channel) of `tensor`: dims[begin:end] * dtype size."""
  return _dims_product(tensor, begin, end) * tensor.dtype.size


def _check_dynamic_shape_readable(tensor: tf.Tensor) -> None:
  """Raises unless the dynamic shape of `tensor` can be read in this context."""
  if not tf.executing_eagerly():
    current = tf.compat.v1.get_default_graph()
    while current is not None:
      if current is tensor.graph:
        return
      current = getattr(current, 'outer_graph', None)
  raise ValueError(
      'The shape of a tensor of the analysed graph is not fully known, so '
      'its cost must be computed from its dynamic shape, which can only be '
      'read inside that graph. Received: tensor '
      f'{tensor.name!r} of shape {tensor.shape} (op type {tensor.op.type!r}), '
      f'read {"eagerly" if tf.executing_eagerly() else "in another graph"}. '
      'Trace the model with a fully defined input shape (batch size aside), '
      'or compute the cost inside the graph of the model.')


def _is_number(value) -> bool:
  return isinstance(value, numbers.Number) and not tf.is_tensor(value)


def _maximum(a, b):
  if _is_number(a) and _is_number(b):
    return max(a, b)
  return tf.maximum(_to_float32(a), _to_float32(b))


def _greater(a, b):
  if _is_number(a) and _is_number(b):
    return bool(a > b)
  return tf.greater(_to_float32(a), _to_float32(b))


def _select(condition, if_true, if_false):
  if isinstance(condition, bool):
    return if_true if condition else if_false
  return tf.where(condition, _to_float32(if_true), _to_float32(if_false))


def _to_float32(value):
  return tf.cast(value, tf.float32) if tf.is_tensor(value) else tf.constant(
      value, tf.float32)
