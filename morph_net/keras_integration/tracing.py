"""Traces a Keras 3 model once into a graph that MorphNet can analyse.

The model is called in inference mode inside `tf.function` on concrete input
shapes; the resulting `FuncGraph` holds the ops MorphNet crawls. Every weight
read in it resolves to the model's `tf.Variable` (see `framework.tpu_util`), so
regularizers built on the trace are evaluated eagerly, in `fit`'s train step or
under a distribution strategy, never on the trace itself.

Shapes: the batch dimension defaults to 1 (costs are per example, as in the
original); every other dimension must be known, from the model's inputs or from
`input_shape`, else a ValueError asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from morph_net.framework import tpu_util

Shape = Sequence[Optional[int]]

# Op types whose weight input (index 1) identifies the layer that owns them.
_WEIGHTED_OP_TYPES = ('Conv2D', 'Conv3D', 'DepthwiseConv2dNative',
                      'Conv2DBackpropInput', 'MatMul', 'BatchMatMulV2')


@dataclasses.dataclass
class TracedModel:
  """A Keras model traced into a graph, with the maps MorphNet needs.

  Attributes:
    model: the traced Keras model.
    concrete_function: the `tf.function` trace.
    graph: its `FuncGraph`.
    input_ops: ops producing the model inputs (placeholders), in input order.
    output_ops: ops producing the model outputs, in output order.
    layer_output_ops: layer name -> ops producing that layer's outputs, for the
      layers requested as boundaries.
  """
  model: keras.Model
  concrete_function: tf.types.experimental.ConcreteFunction
  graph: tf.Graph
  input_ops: List[tf.Operation]
  output_ops: List[tf.Operation]
  layer_output_ops: Dict[str, List[tf.Operation]]
  _variable_layers: Dict[int, str] = dataclasses.field(default_factory=dict)
  _layer_names: Tuple[str, ...] = ()
  _scope_layers: Dict[str, str] = dataclasses.field(default_factory=dict)

  def layer_name_of(self, op: tf.Operation) -> Optional[str]:
    """Name of the Keras layer that created `op`, or None if unknown.

    Ops that read a weight (convolutions, matmuls) are mapped through the
    variable they read, which is exact; other ops through the name scope in
    which each layer's `call` ran during the trace (the innermost layer wins).
    Keras uniquifies these scopes (the first `batch_normalization` layer may
    run in scope `batch_normalization_1`), so they are recorded while tracing
    rather than guessed from the name; ops of layers whose scope was not
    recorded fall back to matching scope segments against layer names.
    """
    if op.type in _WEIGHTED_OP_TYPES and len(op.inputs) > 1:
      weight_index = 1
      variable = _variable_of(op.inputs[weight_index])
      if variable is not None:
        name = self._variable_layers.get(id(variable))
        if name is not None:
          return name
    segments = op.name.split('/')[:-1]
    for end in range(len(segments), 0, -1):
      name = self._scope_layers.get('/'.join(segments[:end]))
      if name is not None:
        return name
    return _layer_from_scope(op.name, self._layer_names)

  def layer_of(self, op: tf.Operation) -> Optional[keras.layers.Layer]:
    name = self.layer_name_of(op)
    return None if name is None else _find_layer(self.model, name)


def _variable_of(tensor):
  """The tf.Variable read by `tensor` (through Cast/Identity/ExpandDims), or None."""
  while tensor.op.type in ('Cast', 'Identity', 'ExpandDims', 'Reshape'):
    tensor = tensor.op.inputs[0]
  if tensor.op.type != 'ReadVariableOp':
    return None
  try:
    variable = tpu_util.maybe_convert_to_variable(tensor)
  except ValueError:
    return None
  return variable if variable is not tensor else None


def _layer_from_scope(op_name: str, layer_names: Sequence[str]) -> Optional[str]:
  """Matches a name-scope segment of `op_name` against the layer names.

  Keras 3 calls a layer under a name scope equal to its name, uniquified with
  `_<n>` when the same scope is entered again during tracing. The deepest
  matching segment wins (the innermost layer).
  """
  segments = op_name.split('/')[:-1]
  names = set(layer_names)
  for segment in reversed(segments):
    if segment in names:
      return segment
    base = re.sub(r'_\d+$', '', segment)
    if base in names and base != segment:
      return base
  return None


def _recording_call(call, layer_name: str, record: Dict[str, str]):
  """Wraps a layer's `call` to record the graph name scope it runs in."""

  @functools.wraps(call)
  def recorded(*args, **kwargs):
    scope = tf.compat.v1.get_default_graph().get_name_scope()
    if scope:
      record.setdefault(scope, layer_name)
    return call(*args, **kwargs)

  return recorded


@contextlib.contextmanager
def _recording_layer_scopes(layers: Sequence[keras.layers.Layer],
                            record: Dict[str, str]):
  """While active, every call of `layers` records `scope -> layer name`.

  The instance attribute `call` is set on each layer and removed (or restored)
  on exit, bypassing Keras attribute tracking; nothing else is changed.
  """
  missing = object()
  patched = []
  try:
    for layer in layers:
      previous = layer.__dict__.get('call', missing)
      object.__setattr__(layer, 'call', _recording_call(layer.call, layer.name, record))
      patched.append((layer, previous))
    yield
  finally:
    for layer, previous in reversed(patched):
      if previous is missing:
        object.__delattr__(layer, 'call')
      else:
        object.__setattr__(layer, 'call', previous)


def _find_layer(model: keras.Model, name: str):
  for layer in _all_layers(model):
    if layer.name == name:
      return layer
  return None


def _all_layers(model) -> List[keras.layers.Layer]:
  """All layers of `model`, nested ones included, outermost first."""
  if hasattr(model, '_flatten_layers'):
    return list(model._flatten_layers(include_self=False, recursive=True))
  return list(getattr(model, 'layers', []))


def _tf_variable(keras_variable):
  """The tf.Variable behind a Keras 3 variable (without autocasting)."""
  value = getattr(keras_variable, '_value', None)
  if value is None:
    value = getattr(keras_variable, 'value', keras_variable)
  return value


def _variable_layer_map(model) -> Dict[int, str]:
  """id(tf.Variable) -> name of the innermost layer owning it."""
  mapping = {}
  for layer in _all_layers(model):  # outermost first: inner layers overwrite.
    for weight in layer.weights:
      variable = _tf_variable(weight)
      mapping[id(variable)] = layer.name
      # Distributed variables: map every component too.
      for component in getattr(variable, 'values', ()) or ():
        mapping[id(component)] = layer.name
  return mapping


def _input_specs(model, input_shape) -> List[tf.TensorSpec]:
  """TensorSpecs for the model inputs, batch defaulting to 1."""
  if input_shape is not None:
    shapes = input_shape
    if not shapes or not isinstance(shapes[0], (list, tuple, tf.TensorShape)):
      shapes = [shapes]
    dtypes = [tf.float32] * len(shapes)
    model_inputs = _model_inputs(model)
    if model_inputs:
      dtypes = [tf.as_dtype(t.dtype) for t in model_inputs]
      if len(dtypes) != len(shapes):
        raise ValueError(
            f'`input_shape` gives {len(shapes)} shape(s) but the model has '
            f'{len(dtypes)} input(s). Received: input_shape={input_shape!r}. '
            'Pass one shape per model input, e.g. [(1, 32, 32, 3)].')
      for index, (shape, tensor) in enumerate(zip(shapes, model_inputs)):
        if len(shape) != len(tensor.shape):
          raise ValueError(
              f'`input_shape` for input {index} has rank {len(shape)} but the '
              f'model input has shape {tuple(tensor.shape)} (rank '
              f'{len(tensor.shape)}). Include the batch dimension, e.g. '
              f'(1,) + {tuple(tensor.shape[1:])}. Received: input_shape={input_shape!r}.')
  else:
    inputs = _model_inputs(model)
    if inputs is None:
      raise ValueError(
          'Cannot trace the model: it has no known input shape (a subclassed or '
          'unbuilt Sequential model). Pass a concrete shape, e.g. '
          '`input_shape=(1, 224, 224, 3)`. Received: input_shape=None for model '
          f'{model.name!r}.')
    shapes = [tuple(t.shape) for t in inputs]
    dtypes = [tf.as_dtype(t.dtype) for t in inputs]
  specs = []
  for index, (shape, dtype) in enumerate(zip(shapes, dtypes)):
    shape = list(tf.TensorShape(shape).as_list())
    if shape and shape[0] is None:
      shape[0] = 1  # Documented default: costs are per example.
    if any(d is None for d in shape):
      raise ValueError(
          'MorphNet needs every non-batch dimension of the input to be known to '
          f'compute costs, but input {index} has shape {tuple(shape)}. Pass a '
          'concrete shape with `input_shape=`, e.g. `input_shape=(1, 224, 224, '
          f'3)`. Received: input_shape={input_shape!r}'
          + ('.' if input_shape is not None else
             f', model input shapes {[tuple(s) for s in shapes]}.'))
    if any(d <= 0 for d in shape):
      raise ValueError(
          f'Input dimensions must be positive. Received: shape {tuple(shape)} '
          f'for input {index}.')
    specs.append(tf.TensorSpec(shape, dtype))
  return specs


def _model_inputs(model):
  try:
    inputs = model.inputs
  except (AttributeError, ValueError):
    return None
  if not inputs:
    return None
  return list(inputs)


def _check_layer_names(names, argument: str) -> Optional[List[str]]:
  """`names` as a list of strings; raises TypeError for a bare string."""
  if names is None:
    return None
  if isinstance(names, str):
    raise TypeError(
        f'`{argument}` must be a list of layer names. Received: {argument}={names!r}; '
        f'use [{names!r}].')
  names = list(names)
  for name in names:
    if not isinstance(name, str):
      raise TypeError(
          f'`{argument}` must contain layer names (strings). Received: {name!r} of '
          f'type {type(name).__name__} in {argument}={names!r}.')
  return names


def _layer_outputs(model, names: Sequence[str], argument: str) -> List:
  """Symbolic outputs of the named layers (functional / Sequential models)."""
  outputs = []
  available = [layer.name for layer in _all_layers(model)]
  for name in names:
    try:
      layer = model.get_layer(name)
    except ValueError:
      raise ValueError(
          f'No layer named {name!r} in model {model.name!r} (from `{argument}`). '
          f'Received: {argument}={list(names)!r}. Layers: {available}.') from None
    try:
      output = layer.output
    except (AttributeError, ValueError) as e:
      raise ValueError(
          f'Layer {name!r} (from `{argument}`) has no single symbolic output '
          f'to use as a boundary ({e}). Boundaries by layer name need a functional '
          'or Sequential model whose layer is called once.') from None
    outputs.extend(tf.nest.flatten(output))
  return outputs


def trace_model(model: keras.Model,
                input_shape: Optional[Union[Shape, Sequence[Shape]]] = None,
                *,
                output_layers: Optional[Sequence[str]] = None,
                input_layers: Optional[Sequence[str]] = None) -> TracedModel:
  """Traces `model` in inference mode into a graph for analysis.

  Args:
    model: a Keras 3 model on the TensorFlow backend: functional, Sequential or
      subclassed (the latter needs `input_shape`).
    input_shape: concrete input shape(s) including the batch dimension (None
      or missing batch becomes 1). Defaults to the model's declared inputs.
    output_layers: names of layers whose outputs are the output boundary
      (where MorphNet starts crawling). Defaults to the model outputs.
    input_layers: names of layers whose outputs are the input boundary (not
      crossed, not regularized). Defaults to none: crawling stops at the inputs.

  Returns:
    A TracedModel.

  Raises:
    ValueError: a needed shape is unknown, or a layer name is not in the model.
    TypeError: `model` is not a Keras model.
  """
  if not isinstance(model, keras.layers.Layer):
    raise TypeError(
        f'Expected a Keras model. Received: model of type {type(model).__name__}.')
  # Checked first: list('r1') would silently become ['r', '1'].
  output_layers = _check_layer_names(output_layers, 'output_layers')
  input_layers = _check_layer_names(input_layers, 'input_layers')
  specs = _input_specs(model, input_shape)
  boundary_names = list(output_layers or []) + list(input_layers or [])
  if boundary_names:
    if not _model_inputs(model):
      raise ValueError(
          'Boundaries by layer name need a functional or Sequential model with '
          f'known inputs. Received: output_layers={output_layers!r}, '
          f'input_layers={input_layers!r} for model {model.name!r}.')
    extra_outputs = _layer_outputs(model, list(output_layers or []), 'output_layers')
    extra_inputs = _layer_outputs(model, list(input_layers or []), 'input_layers')
    probe = keras.Model(model.inputs, tf.nest.flatten(model.outputs) + extra_outputs
                        + extra_inputs)
    n_model = len(tf.nest.flatten(model.outputs))
  else:
    probe = model
    extra_outputs, extra_inputs, n_model = [], [], None

  def call(*args):
    inputs = args[0] if len(args) == 1 else list(args)
    return probe(inputs, training=False)

  all_layers = _all_layers(model)
  scope_layers: Dict[str, str] = {}
  with _recording_layer_scopes(all_layers, scope_layers), \
      _grouped_convolutions_as_plain_ops():
    concrete = tf.function(call).get_concrete_function(*specs)
  graph = concrete.graph
  flat_outputs = [_unwrap_output_identity(t)
                  for t in tf.nest.flatten(concrete.structured_outputs)]
  input_ops = [t.op for t in graph.inputs[:len(specs)]]
  layer_output_ops: Dict[str, List[tf.Operation]] = {}
  if n_model is None:
    output_ops = [t.op for t in flat_outputs]
  else:
    model_outputs = flat_outputs[:n_model]
    rest = flat_outputs[n_model:]
    out_tensors = rest[:len(extra_outputs)]
    in_tensors = rest[len(extra_outputs):]
    output_ops = ([t.op for t in out_tensors] if output_layers
                  else [t.op for t in model_outputs])
    for name, tensor in zip(list(output_layers or []), out_tensors):
      layer_output_ops.setdefault(name, []).append(tensor.op)
    for name, tensor in zip(list(input_layers or []), in_tensors):
      layer_output_ops.setdefault(name, []).append(tensor.op)
  return TracedModel(
      model=model,
      concrete_function=concrete,
      graph=graph,
      input_ops=input_ops,
      output_ops=_dedupe(output_ops),
      layer_output_ops=layer_output_ops,
      _variable_layers=_variable_layer_map(model),
      _layer_names=tuple(layer.name for layer in all_layers),
      _scope_layers=scope_layers,
  )


@contextlib.contextmanager
def _grouped_convolutions_as_plain_ops():
  """Within this context Keras traces a grouped convolution as one `Conv2D` op.

  Keras 3 on TensorFlow runs a convolution with `groups > 1` in a nested
  `tf.function(jit_compile=True)` (TF's grouped kernels are missing on CPU),
  which traces to a `StatefulPartitionedCall` hiding the convolution from
  MorphNet. The trace is only analysed, never run, so here it calls
  `tf.nn.convolution` directly: a `Conv2D` whose filter sees C_in / g input
  channels, which `grouped_convolution_op_handler` and the resource
  functions understand. If this Keras has no such backend function the
  trace is left as is (function calls are then rejected by name).
  """
  try:
    from keras.src.backend.tensorflow import nn as tf_backend_nn  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  original = getattr(tf_backend_nn, 'conv', None)
  if original is None:
    yield
    return

  @functools.wraps(original)
  def conv(inputs, kernel, strides=1, padding='valid', data_format=None,
           dilation_rate=1):
    data_format = data_format or keras.config.image_data_format()
    rank = len(inputs.shape)
    if (data_format != 'channels_last' or rank not in (3, 4)
        or inputs.shape[-1] is None or inputs.shape[-1] == kernel.shape[-2]):
      return original(inputs, kernel, strides=strides, padding=padding,
                      data_format=data_format, dilation_rate=dilation_rate)
    return tf.nn.convolution(
        inputs, kernel, strides, padding.upper(),
        data_format='NWC' if rank == 3 else 'NHWC', dilations=dilation_rate)

  tf_backend_nn.conv = conv
  try:
    yield
  finally:
    tf_backend_nn.conv = original


def _unwrap_output_identity(tensor):
  """The tensor a function output `Identity` (added by tf.function) copies."""
  if tensor.op.type == 'Identity' and re.fullmatch(r'Identity(_\d+)?', tensor.op.name):
    return tensor.op.inputs[0]
  return tensor


def input_boundary_ops(traced: TracedModel, input_layers: Optional[Sequence[str]]):
  """Ops of the input boundary: the named layers' outputs, or None."""
  if not input_layers:
    return None
  ops = []
  for name in input_layers:
    ops.extend(traced.layer_output_ops[name])
  return _dedupe(ops)


def _dedupe(ops):
  seen, result = set(), []
  for op in ops:
    if op not in seen:
      seen.add(op)
      result.append(op)
  return result
