"""Tests for op_handler_util (spec 1.5 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_handler_util
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes


class FakeOp:
  """A hashable stand-in for a tf.Operation (name, type, inputs, outputs)."""

  def __init__(self, name, op_type='Identity', inputs=(), outputs=()):
    self.name = name
    self.type = op_type
    self.inputs = list(inputs)
    self.outputs = list(outputs)

  def __repr__(self):
    return self.name


class FakeTensor:

  def __init__(self, op):
    self.op = op


class FakeManager:
  """Records the calls a handler makes on an OpRegularizerManager.

  Slices are created from the real op sizes (one slice per op unless set with
  `set_slices`); groups are only what the test sets with `set_group`: the
  recorded `group_op_slices` calls do not change them.
  """

  def __init__(self, ops, non_passthrough=(), sources=()):
    self.ops = set(ops)
    self.non_passthrough = set(non_passthrough)
    self.sources = set(sources)
    self.slices = {}
    self.groups = {}
    self.calls = []

  def get_op_slices(self, op):
    if op not in self.slices:
      size = op_handler_util.get_op_size(op)
      self.slices[op] = [orm.OpSlice(op, orm.Slice(0, size))] if size else []
    return self.slices[op]

  def set_slices(self, op, sizes):
    starts = np.cumsum([0] + list(sizes))[:-1]
    self.slices[op] = [orm.OpSlice(op, orm.Slice(int(s), n))
                       for s, n in zip(starts, sizes)]
    return self.slices[op]

  def set_group(self, ops):
    """Puts every slice of `ops` in one new (source-less) group."""
    group = orm.OpGroup()
    for op in ops:
      for op_slice in self.get_op_slices(op):
        self.groups[op_slice] = group
    return group

  def get_op_group(self, op_slice):
    return self.groups.get(op_slice)

  def is_passthrough(self, op):
    return op not in self.non_passthrough

  def is_source_op(self, op):
    return op in self.sources

  def group_op_slices(self, op_slices, omit_source_op_slices=None):
    self.calls.append(('group_op_slices', list(op_slices)))

  def create_op_group_for_op_slice(self, op_slice, is_source=True):
    self.calls.append(('create_op_group_for_op_slice', op_slice, is_source))
    self.groups[op_slice] = orm.OpGroup(
        op_slice, omit_source_op_slices=[] if is_source else [op_slice])

  def slice_op(self, op, sizes):
    self.calls.append(('slice_op', op, list(sizes)))

  def process_ops(self, ops):
    self.calls.append(('process_ops', list(ops)))

  def process_ops_last(self, ops):
    self.calls.append(('process_ops_last', list(ops)))

  def calls_named(self, name):
    return [call[1:] for call in self.calls if call[0] == name]


def conv_bn_relu_net(image, var):
  """input identity -> conv (5 filters) -> fused BN -> ReLU (scope conv1)."""
  image = tf.identity(image, name='input')
  with tf.name_scope('conv1'):
    x = tf.nn.conv2d(image, var('w1', np.ones([3, 3, 3, 5])), 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var('gamma1', np.ones(5)), var('beta1', np.zeros(5)), is_training=True)
    return tf.nn.relu(x)


def conv_bn_relu_ops(mode):
  """Builds conv_bn_relu_net; returns (built, conv, bn, gamma read, beta read, relu)."""
  built = graph_modes.build(mode, conv_bn_relu_net, [1, 7, 7, 3])
  relu = built.op('conv1/Relu')
  bn = relu.inputs[0].op
  return built, bn.inputs[0].op, bn, bn.inputs[1].op, bn.inputs[2].op, relu


# ---- get_input_ops / get_output_ops -------------------------------------------


def test_get_input_ops_of_batch_norm_skips_constants(mode):
  built, conv, bn, gamma, beta, relu = conv_bn_relu_ops(mode)
  manager = FakeManager(built.graph.get_operations())
  # Fused BN inputs: x, gamma, beta, mean, variance; mean/variance are empty
  # constants in training mode and are skipped.
  assert op_handler_util.get_input_ops(bn, manager) == [conv, gamma, beta]
  assert op_handler_util.get_output_ops(bn, manager) == [relu]


def test_get_input_ops_skips_weights_and_unknown_ops(mode):
  built, conv, bn, gamma, beta, _ = conv_bn_relu_ops(mode)
  manager = FakeManager(built.graph.get_operations())
  # Conv2D input 1 is the kernel: skipped by WEIGHTS_INDEX_DICT.
  assert op_handler_util.get_input_ops(conv, manager) == [conv.inputs[0].op]
  # Ops the manager does not know are skipped.
  manager.ops.discard(gamma)
  assert op_handler_util.get_input_ops(bn, manager) == [conv, beta]
  # Whitelisted indices only.
  assert op_handler_util.get_input_ops(bn, manager, whitelist_indices=[2]) == [beta]


def test_get_input_ops_fake_ops():
  a, b = FakeOp('a'), FakeOp('b')
  const = FakeOp('c', 'Const')
  add = FakeOp('add', 'AddN', inputs=[FakeTensor(a), FakeTensor(const),
                                      FakeTensor(b), FakeTensor(a)])
  manager = FakeManager([a, b, const, add])
  # Duplicates kept, constants dropped, input order preserved.
  assert op_handler_util.get_input_ops(add, manager) == [a, b, a]
  gumbel = FakeOp('g', 'GumbelPrefixFoo', inputs=[FakeTensor(a)])
  assert op_handler_util.get_input_ops(gumbel, manager) == []
  matmul = FakeOp('mm', 'MatMul', inputs=[FakeTensor(a), FakeTensor(b)])
  assert op_handler_util.get_input_ops(matmul, manager) == [a]


def test_get_output_ops_deduplicates():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.identity(tf.zeros([1, 3]))
    y = tf.add(x, x)
    z = tf.nn.relu(x)
  manager = FakeManager(graph.get_operations())
  assert op_handler_util.get_output_ops(x.op, manager) == [y.op, z.op]
  manager.ops.discard(y.op)
  assert op_handler_util.get_output_ops(x.op, manager) == [z.op]


def test_weights_index_constants():
  assert op_handler_util.OP_TYPES_WITH_MULTIPLE_OUTPUTS == ('SplitV',)
  assert op_handler_util.WEIGHTS_INDEX_DICT == {
      'Conv2D': 1, 'Conv2DBackpropInput': 1, 'DepthwiseConv2dNative': 1,
      'MatMul': 1}


def test_weights_are_input_1():
  graph = tf.Graph()
  with graph.as_default():
    image = tf.zeros([1, 4, 4, 3])
    kernel = tf.ones([1, 1, 3, 2], name='conv_kernel')
    conv = tf.nn.conv2d(image, kernel, 1, 'SAME')
    deconv = tf.nn.conv2d_transpose(
        image, tf.ones([1, 1, 2, 3], name='deconv_kernel'), [1, 4, 4, 2], 1)
    dw = tf.nn.depthwise_conv2d(image, tf.ones([1, 1, 3, 1], name='dw_kernel'),
                                [1, 1, 1, 1], 'SAME')
    mm = tf.matmul(tf.zeros([1, 3]), tf.ones([3, 2], name='mm_kernel'))
    _, _, _ = tf.compat.v1.nn.fused_batch_norm(
        image, tf.ones([3], name='bn_gamma'), tf.zeros([3]), is_training=True)
  for op, kernel_name in ((conv.op, 'conv_kernel'), (deconv.op, 'deconv_kernel'),
                          (dw.op, 'dw_kernel'), (mm.op, 'mm_kernel')):
    index = op_handler_util.WEIGHTS_INDEX_DICT[op.type]
    assert op.inputs[index].op.name == kernel_name
  bn = graph.get_operation_by_name('FusedBatchNormV3')
  assert bn.inputs[1].op.name == 'bn_gamma'


# ---- sizes -----------------------------------------------------------------------


def test_get_op_size():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, 4, 4, 5])
    split = tf.split(x, [2, 3], axis=3)
    scalar = tf.constant(3.0)
  assert split[0].op.type == 'SplitV'
  # SplitV: sum of the outputs' channels = 2 + 3.
  assert op_handler_util.get_op_size(split[0].op) == 5
  assert op_handler_util.get_op_size(x.op) == 5
  assert op_handler_util.get_op_size(scalar.op) == 0


def test_get_op_size_unknown_channels_warns_once():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, None], name='dynamic')
    y = tf.compat.v1.placeholder(tf.float32, None, name='unknown_rank')
  with mock.patch.object(op_handler_util.logging, 'warning') as warning:
    assert op_handler_util.get_op_size(x.op) == 0
    assert op_handler_util.get_op_size(x.op) == 0
    assert warning.call_count == 1
    assert 'dynamic' in warning.call_args[0]
    assert op_handler_util.get_op_size(y.op) == 0
    assert warning.call_count == 2


def test_separate_same_size_ops():
  graph = tf.Graph()
  with graph.as_default():
    ops = [tf.zeros([1, size], name=f'op{i + 1}').op
           for i, size in enumerate([3, 3, 5, 0, 3, 2])]
  # Reference op1 (size 3) over op2..op6 of sizes [3, 5, 0, 3, 2]: size 0 dropped.
  same, different = op_handler_util.separate_same_size_ops(ops[0], ops[1:])
  assert same == [ops[1], ops[4]]
  assert different == [ops[2], ops[5]]


def test_get_total_slice_size():
  sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9]
  assert op_handler_util.get_total_slice_size(sizes, 0, 5) == 1 + 2 + 3 + 4 + 5
  assert op_handler_util.get_total_slice_size(sizes, 3, 3) == 4 + 5 + 6
  assert op_handler_util.get_total_slice_size(sizes, 5, 4) == 6 + 7 + 8 + 9
  assert op_handler_util.get_total_slice_size(sizes, 2, 1) == 3


# ---- alignment -------------------------------------------------------------------


@pytest.mark.parametrize('sizes, expected', [
    ([[5, 4, 2, 7], [9, 4, 5], [18]], [5, 4, 2, 2, 5]),
    ([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], [1, 2, 2, 1, 3, 1, 2, 2, 1]),
    ([[5], [1, 1, 1, 1, 1]], [1, 1, 1, 1, 1]),
    ([[10]], [10]),
    ([[2, 5], [3, 4]], [2, 1, 4]),
])
def test_get_aligned_sizes(sizes, expected):
  assert op_handler_util.get_aligned_sizes(sizes) == expected


def test_get_aligned_sizes_errors():
  with pytest.raises(ValueError, match='Cannot align empty op slice lists.'):
    op_handler_util.get_aligned_sizes([])
  with pytest.raises(ValueError, match=r'Total size for op slices do not match: '
                     r'\[\[2, 5\], \[3, 3\]\]. Received totals \[7, 6\]'):
    op_handler_util.get_aligned_sizes([[2, 5], [3, 3]])


def test_get_num_slices():
  assert op_handler_util._get_num_slices([[1, 2], [3], [1, 1, 1]]) == 3


def test_slice_lists_helpers():
  a, b, c = FakeOp('a'), FakeOp('b'), FakeOp('c')
  manager = FakeManager([a, b, c])
  a_slices = manager.set_slices(a, [2, 3])
  b_slices = manager.set_slices(b, [5])
  manager.slices[c] = []
  assert op_handler_util.get_op_slices([a, c, b], manager) == [a_slices, b_slices]
  assert op_handler_util.get_op_slice_sizes([a_slices, b_slices]) == [[2, 3], [5]]
  assert op_handler_util.get_concat_input_op_slices([a, c, b], manager) == [
      a_slices + b_slices]
  # Inputs [2, 3] and outputs [1, 4] with the op [5]: boundaries {1, 2, 5}.
  assert op_handler_util.get_aligned_op_slice_sizes(
      b_slices, [a_slices], [manager.set_slices(c, [1, 4])]) == [1, 1, 3]


def test_reslice_concat_ops():
  ops = [FakeOp('in1'), FakeOp('in2'), FakeOp('in3')]
  manager = FakeManager(ops)
  manager.set_slices(ops[0], [5])
  manager.set_slices(ops[1], [3, 3])
  manager.set_slices(ops[2], [7])
  # Stacked 5 | 3 3 | 7 against aligned [5, 4, 2, 2, 5]: in1 matches; in2
  # (6 channels) takes 4 + 2; in3 (7 channels) takes 2 + 5.
  op_handler_util.reslice_concat_ops(ops, [5, 4, 2, 2, 5], manager)
  assert manager.calls_named('slice_op') == [(ops[1], [4, 2]), (ops[2], [2, 5])]


def test_reslice_concat_ops_error():
  ops = [FakeOp('in1'), FakeOp('in2')]
  manager = FakeManager(ops)
  manager.set_slices(ops[0], [3])
  manager.set_slices(ops[1], [4])
  # in1 (3 channels) cannot be covered by whole entries of [2, 2, 3].
  with pytest.raises(ValueError, match='Could not properly slice op: in1'):
    op_handler_util.reslice_concat_ops(ops, [2, 2, 3], manager)


def test_reslice_ops():
  a, b, c = FakeOp('a'), FakeOp('b'), FakeOp('c')
  manager = FakeManager([a, b, c])
  manager.set_slices(a, [3, 2])
  manager.set_slices(b, [1, 2, 2])
  manager.slices[c] = []
  op_handler_util.reslice_ops([a, b, c], [1, 2, 2], manager)
  # b already aligned, c empty: only a is sliced.
  assert manager.calls_named('slice_op') == [(a, [1, 2, 2])]


# ---- groups ----------------------------------------------------------------------


def test_get_ops_without_groups_and_passthrough():
  a, b, c = FakeOp('a'), FakeOp('b'), FakeOp('c')
  manager = FakeManager([a, b, c], non_passthrough=[b])
  a_slices = manager.set_slices(a, [2, 3])
  manager.set_slices(b, [4])
  manager.slices[c] = []
  manager.groups[a_slices[0]] = orm.OpGroup(a_slices[0])
  manager.set_group([b])
  # a has an ungrouped second slice; c (size 0) never qualifies.
  assert op_handler_util.get_ops_without_groups([a, b, c], manager) == [a]
  assert op_handler_util.remove_non_passthrough_ops([a, b, c], manager) == [a, c]


def test_get_source_op_slices(mode):
  _, conv, bn, _, _, relu = conv_bn_relu_ops(mode)
  graph_manager = _real_manager(relu)
  bn_slice = graph_manager.get_op_slices(bn)[0]
  relu_slice = graph_manager.get_op_slices(relu)[0]
  conv_slice = graph_manager.get_op_slices(conv)[0]
  graph_manager.create_op_group_for_op_slice(bn_slice)
  graph_manager.create_op_group_for_op_slice(relu_slice)
  graph_manager.create_op_group_for_op_slice(conv_slice, is_source=False)
  assert op_handler_util._get_source_op_slices(
      [bn_slice, relu_slice, conv_slice, bn_slice], graph_manager) == [
          bn_slice, relu_slice]


def _real_manager(output_op):
  """An OpRegularizerManager on `output_op` with no source: nothing grouped."""
  return orm.OpRegularizerManager([output_op], op_handlers.get_gamma_op_handler_dict())


def test_group_op_with_inputs_and_outputs_ungrouped(mode):
  built, conv, bn, gamma, beta, relu = conv_bn_relu_ops(mode)
  manager = FakeManager(built.graph.get_operations())
  slices = {op: manager.get_op_slices(op) for op in (conv, bn, gamma, relu)}
  changed = op_handler_util.group_op_with_inputs_and_outputs(
      bn, [slices[conv], slices[gamma]], [slices[relu]], [5], manager)
  # BN has no group: one call with op, inputs and outputs.
  assert manager.calls_named('group_op_slices') == [
      ([slices[bn][0], slices[conv][0], slices[gamma][0], slices[relu][0]],)]
  assert changed is False


def test_group_op_with_inputs_and_outputs_merges(mode):
  built, conv, bn, gamma, _, relu = conv_bn_relu_ops(mode)
  manager = FakeManager(built.graph.get_operations())
  for op in (conv, bn, gamma, relu):
    manager.set_group([op])
  slices = {op: manager.get_op_slices(op)[0] for op in (conv, bn, gamma, relu)}
  changed = op_handler_util.group_op_with_inputs_and_outputs(
      bn, [[slices[conv]], [slices[gamma]]], [[slices[relu]]], [5], manager)
  # (a) merge with the outputs, then (b) with the inputs.
  assert manager.calls_named('group_op_slices') == [
      ([slices[bn], slices[relu]],), ([slices[bn], slices[conv], slices[gamma]],)]
  assert changed is True


def test_group_op_with_inputs_and_outputs_nothing_to_do(mode):
  built, conv, bn, gamma, _, relu = conv_bn_relu_ops(mode)
  manager = FakeManager(built.graph.get_operations())
  manager.set_group([conv, bn, gamma, relu])
  slices = {op: manager.get_op_slices(op) for op in (conv, bn, gamma, relu)}
  changed = op_handler_util.group_op_with_inputs_and_outputs(
      bn, [slices[conv]], [slices[relu]], [5], manager)
  assert manager.calls == []
  assert changed is False


def test_overregularization_warning(mode):
  _, conv, bn, _, _, relu = conv_bn_relu_ops(mode)
  manager = _real_manager(relu)
  bn_slice = manager.get_op_slices(bn)[0]
  conv_slice = manager.get_op_slices(conv)[0]
  manager.create_op_group_for_op_slice(bn_slice)
  manager.create_op_group_for_op_slice(conv_slice)
  with mock.patch.object(op_handler_util.logging, 'warning') as warning:
    op_handler_util.group_op_with_inputs_and_outputs(
        bn, [[conv_slice]], [], [5], manager)
  assert warning.call_count == 1
  assert 'Potential overregularization near' in warning.call_args[0][0]
  assert warning.call_args[0][1] == bn.name
  assert manager.get_op_group(bn_slice) is manager.get_op_group(conv_slice)


def test_group_aligned_input_output_slices_cases(mode):
  built, conv, bn, gamma, beta, relu = conv_bn_relu_ops(mode)
  ops = built.graph.get_operations()
  inputs = [[orm.OpSlice(conv, orm.Slice(0, 5))]]
  outputs = [[orm.OpSlice(relu, orm.Slice(0, 5))]]
  bn_slice = orm.OpSlice(bn, orm.Slice(0, 5))

  # 1. Nothing pending: grouped with inputs and outputs.
  manager = FakeManager(ops)
  op_handler_util.group_aligned_input_output_slices(
      bn, [], [], inputs, outputs, [5], manager)
  assert manager.calls == [('group_op_slices', [bn_slice, inputs[0][0], outputs[0][0]])]

  # 2. Outputs pending: grouped with inputs only, outputs queued.
  manager = FakeManager(ops)
  op_handler_util.group_aligned_input_output_slices(
      bn, [], [relu], inputs, outputs, [5], manager)
  assert manager.calls == [('group_op_slices', [bn_slice, inputs[0][0]]),
                           ('process_ops', [relu])]

  # 3. Inputs pending: everything queued, the op last.
  manager = FakeManager(ops)
  op_handler_util.group_aligned_input_output_slices(
      bn, [gamma, beta], [relu], inputs, outputs, [5], manager)
  assert manager.calls == [('process_ops', [relu, gamma, beta]),
                           ('process_ops_last', [bn])]


def test_group_match():
  slices = [orm.OpSlice(FakeOp('conv1/BatchNorm/FusedBatchNormV3'), orm.Slice(0, 3)),
            orm.OpSlice(FakeOp('conv1/Relu'), orm.Slice(0, 3))]
  assert op_handler_util.group_match('BatchNorm', slices)
  assert not op_handler_util.group_match('conv2', slices)
  assert op_handler_util.group_match('conv2|Relu', slices)
  assert not op_handler_util.group_match('', slices)
