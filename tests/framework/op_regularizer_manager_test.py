"""Tests for OpRegularizerManager, OpSlice, Slice and OpGroup (spec 1.3, 1.4, 8.1)."""

from __future__ import annotations

import ast
import re
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import errors
from morph_net.framework import generic_regularizers
from morph_net.framework import grouping_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import output_non_passthrough_op_handler
from morph_net.testing import op_regularizer_stub
from tests import graph_modes

IMAGE_SHAPE = [1, 17, 19, 3]


# ---- helpers ---------------------------------------------------------------------


class _StubConvSourceOpHandler(
    output_non_passthrough_op_handler.OutputNonPassthroughOpHandler):
  """A conv source (grouping like group lasso) with stub regularizers.

  Args:
    stubs: op-name prefix (e.g. 'conv1/') -> (regularization values, alive
      values); a slice gets the matching range of the values.
  """

  def __init__(self, stubs):
    self._stubs = stubs

  @property
  def is_source_op(self):
    return True

  def assign_grouping(self, op, op_reg_manager):
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        op_reg_manager.create_op_group_for_op_slice(op_slice)
    super().assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice):
    for prefix, (reg, alive) in self._stubs.items():
      if op_slice.op.name.startswith(prefix):
        begin, size = op_slice.slice
        return op_regularizer_stub.OpRegularizerStub(
            np.asarray(reg)[begin:begin + size], np.asarray(alive)[begin:begin + size])
    raise ValueError(f'No stub for {op_slice.op.name}')


def _stub_handlers(stubs):
  handlers = op_handlers.get_group_lasso_op_handler_dict()
  handlers.register('Conv2D', _StubConvSourceOpHandler(stubs))
  return handlers


def _gamma_handlers(threshold=0.5):
  handlers = op_handlers.get_gamma_op_handler_dict()
  handlers.register('FusedBatchNormV3',
                    batch_norm_source_op_handler.BatchNormSourceOpHandler(threshold))
  return handlers


def _conv(x, var, scope, filters, kernel=(1, 1), stride=1, bn=False, gamma=None,
          relu=True):
  """conv2d (+ fused BN) (+ ReLU) in name scope `scope`."""
  with tf.name_scope(scope):
    kernel = var(f'{scope}_weights',
                 np.full(list(kernel) + [x.shape[-1], filters], 0.1))
    y = tf.nn.conv2d(x, kernel, stride, 'SAME')
    if bn:
      gamma = np.ones(filters) if gamma is None else gamma
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
          y, var(f'{scope}_gamma', gamma), var(f'{scope}_beta', np.zeros(filters)),
          is_training=True)
    if relu:
      y = tf.nn.relu(y)
  return y


def _group(manager, op, index=0):
  return manager.get_op_group(manager.get_op_slices(op)[index])


def _values(built, regularizer):
  return built.evaluate(lambda: (regularizer.regularization_vector,
                                 regularizer.alive_vector))


def _reg_values(built, manager, op):
  """Vectors of `manager.get_regularizer(op)`, created in the evaluation context."""
  def vectors():
    regularizer = manager.get_regularizer(op)
    return regularizer.regularization_vector, regularizer.alive_vector
  return built.evaluate(vectors)


def _identities(count, channels):
  """A graph with `count` identity ops of `channels` channels, and a manager."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf.zeros([1, channels])
    ops = [tf.identity(x, name=f'id{i + 1}').op for i in range(count)]
  manager = orm.OpRegularizerManager([ops[0]], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops.update(ops)
  return manager, ops


class _FakeOp:

  def __init__(self, name):
    self.name = name

  def __repr__(self):
    return self.name


# ---- Slice, OpSlice, OpGroup -----------------------------------------------------


def test_str():
  manager, ops = _identities(2, 3)
  assert str(orm.Slice(0, 3)) == '(0, 3)'
  slices = [manager.get_op_slices(op)[0] for op in ops]
  assert str(slices) == '[id1 (0, 3), id2 (0, 3)]'
  graph = tf.Graph()
  with graph.as_default():
    x = tf.identity(tf.zeros([3]))
    y = tf.identity(x)
  assert str([orm.OpSlice(x.op, orm.Slice(0, 3)), orm.OpSlice(y.op, orm.Slice(0, 3))]
             ) == '[Identity (0, 3), Identity_1 (0, 3)]'
  # Named tuples compare and hash by value.
  assert orm.OpSlice(x.op, orm.Slice(0, 3)) == orm.OpSlice(x.op, orm.Slice(0, 3))
  assert len({orm.OpSlice(x.op, orm.Slice(0, 3)), orm.OpSlice(x.op, orm.Slice(0, 3))}) == 1


def test_op_group_merging_and_index(monkeypatch):
  monkeypatch.setattr(orm.OpGroup, '_static_index', 0)
  slices = [orm.OpSlice(_FakeOp(f'op{i}'), None) for i in range(8)]
  groups = [orm.OpGroup(op_slice) for op_slice in slices]
  assert [group._index for group in groups] == list(range(8))
  assert groups[3].op_slices == [slices[3]]
  assert groups[3].source_op_slices == [slices[3]]

  # Merges of the 8 fresh groups get indices 8, 9, 10.
  merged_a = orm.OpGroup(op_groups=groups[:4])
  merged_b = orm.OpGroup(op_groups=groups[4:], omit_source_op_slices=[slices[5]])
  merged = orm.OpGroup(op_groups=[merged_b, merged_a, groups[0]])
  assert [merged_a._index, merged_b._index, merged._index] == [8, 9, 10]
  # Member and source order follow the merged groups; duplicates dropped;
  # omitted slices are not sources.
  assert merged.op_slices == slices[4:] + slices[:4]
  assert merged.source_op_slices == [slices[4], slices[6], slices[7]] + slices[:4]

  # A first op_slice comes first; it is not a source when omitted.
  group = orm.OpGroup(slices[7], op_groups=[groups[1]],
                      omit_source_op_slices=[slices[7]])
  assert group.op_slices == [slices[7], slices[1]]
  assert group.source_op_slices == [slices[1]]
  assert group._index == 11


# ---- get_op_slices, group_op_slices, slice_op ------------------------------------


def test_get_op_slices():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.identity(tf.zeros([1, 4, 4, 10]), name='x')
    split = tf.split(x, [3, 7], axis=3)
    scalar = tf.constant(1.0)
  manager = orm.OpRegularizerManager([x.op], op_handlers.get_gamma_op_handler_dict())
  assert manager.get_op_slices(x.op) == [orm.OpSlice(x.op, orm.Slice(0, 10))]
  # SplitV of 10 channels into [3, 7]: one slice of 3 + 7.
  assert manager.get_op_slices(split[0].op) == [
      orm.OpSlice(split[0].op, orm.Slice(0, 10))]
  assert manager.get_op_slices(scalar.op) == []
  assert manager.get_op_group(manager.get_op_slices(x.op)[0]) is None


def test_group_op_slices_all_at_once():
  manager, ops = _identities(8, 3)
  slices = [manager.get_op_slices(op)[0] for op in ops]
  manager.group_op_slices(slices)
  group = manager.get_op_group(slices[0])
  assert group.op_slices == slices
  assert all(manager.get_op_group(s) is group for s in slices)
  # Identity is not a source op type.
  assert group.source_op_slices == []


def test_group_op_slices_is_transitive():
  manager, ops = _identities(8, 3)
  slices = [manager.get_op_slices(op)[0] for op in ops]
  manager.group_op_slices(slices[:4])
  manager.group_op_slices(slices[4:])
  assert manager.get_op_group(slices[0]) is not manager.get_op_group(slices[4])
  manager.group_op_slices([slices[2], slices[5]])
  group = manager.get_op_group(slices[0])
  assert group.op_slices == slices
  assert all(manager.get_op_group(s) is group for s in slices)


def test_group_op_slices_sources():
  manager, ops = _identities(3, 3)
  slices = [manager.get_op_slices(op)[0] for op in ops]
  manager.create_op_group_for_op_slice(slices[0])
  manager.create_op_group_for_op_slice(slices[1], is_source=False)
  assert manager.get_op_group(slices[1]).source_op_slices == []
  manager.group_op_slices(slices)
  assert manager.get_op_group(slices[2]).source_op_slices == [slices[0]]
  manager.group_op_slices(slices[1:], omit_source_op_slices=[slices[0]])
  assert manager.get_op_group(slices[2]).source_op_slices == []


def test_slice_op_splits_whole_group():
  manager, ops = _identities(9, 3)
  slices = [manager.get_op_slices(op)[0] for op in ops]
  manager.group_op_slices(slices[:4])
  manager.group_op_slices(slices[4:8])
  group_5_8 = manager.get_op_group(slices[4])

  manager.slice_op(ops[0], [1, 2])
  for op in ops[:4]:
    assert manager.get_op_slices(op) == [orm.OpSlice(op, orm.Slice(0, 1)),
                                         orm.OpSlice(op, orm.Slice(1, 2))]
  first_pieces = [manager.get_op_slices(op)[0] for op in ops[:4]]
  second_pieces = [manager.get_op_slices(op)[1] for op in ops[:4]]
  assert manager.get_op_group(first_pieces[0]).op_slices == first_pieces
  assert manager.get_op_group(second_pieces[0]).op_slices == second_pieces
  # The old whole slices no longer have a group.
  assert manager.get_op_group(slices[0]) is None
  # Identities 5-8 are untouched.
  for op, op_slice in zip(ops[4:8], slices[4:8]):
    assert manager.get_op_slices(op) == [op_slice]
    assert manager.get_op_group(op_slice) is group_5_8

  # An ungrouped op is sliced alone and its pieces stay ungrouped.
  manager.slice_op(ops[8], [2, 1])
  assert manager.get_op_slices(ops[8]) == [orm.OpSlice(ops[8], orm.Slice(0, 2)),
                                           orm.OpSlice(ops[8], orm.Slice(2, 1))]
  assert all(manager.get_op_group(s) is None for s in manager.get_op_slices(ops[8]))


def test_slice_op_same_sizes_is_noop():
  manager, ops = _identities(2, 3)
  slices = [manager.get_op_slices(op)[0] for op in ops]
  manager.group_op_slices(slices)
  group = manager.get_op_group(slices[0])
  manager.slice_op(ops[0], [3])
  assert manager.get_op_slices(ops[0]) == [slices[0]]
  assert manager.get_op_group(slices[0]) is group


def test_slice_op_multiple_slices():
  manager, ops = _identities(3, 20)
  op1, op2, op3 = ops
  manager.slice_op(op1, [4, 3, 7, 6])
  manager.slice_op(op2, [3, 7, 10])
  manager.slice_op(op3, [2, 2, 2, 2, 3, 7, 2])
  s1, s2, s3 = (manager.get_op_slices(op) for op in ops)
  # The 3-slices grouped together and the 7-slices grouped together; only
  # op1's slices are sources.
  manager.create_op_group_for_op_slice(s1[1])
  manager.create_op_group_for_op_slice(s1[2])
  manager.group_op_slices([s1[1], s2[0], s3[4]])
  manager.group_op_slices([s1[2], s2[1], s3[5]])
  assert manager.get_op_group(s2[0]).source_op_slices == [s1[1]]

  manager.slice_op(op1, [4, 1, 2, 3, 4, 6])
  sizes = [[s.slice.size for s in manager.get_op_slices(op)] for op in ops]
  assert sizes == [[4, 1, 2, 3, 4, 6], [1, 2, 3, 4, 10],
                   [2, 2, 2, 2, 1, 2, 3, 4, 2]]
  # Pieces 1, 2 (of the 3-slices) and 3, 4 (of the 7-slices): four new groups,
  # each ordered [op1, op2, op3].
  for piece, (i1, i2, i3) in enumerate([(1, 0, 4), (2, 1, 5), (3, 2, 6), (4, 3, 7)]):
    members = [manager.get_op_slices(op1)[i1], manager.get_op_slices(op2)[i2],
               manager.get_op_slices(op3)[i3]]
    group = manager.get_op_group(members[0])
    assert group.op_slices == members, piece
    # Pieces of split slices regain source status from their op type only
    # (Identity is not a source type).
    assert group.source_op_slices == []
  # Unsplit slices keep their objects and groups.
  assert manager.get_op_slices(op2)[4] == orm.OpSlice(op2, orm.Slice(10, 10))
  assert manager.get_op_group(manager.get_op_slices(op1)[0]) is None


def test_slice_op_errors():
  manager, ops = _identities(1, 3)
  with pytest.raises(ValueError, match=r'Error with op: id1: Total size for op slices '
                     r'do not match: \[\[3\], \[2, 2\]\]'):
    manager.slice_op(ops[0], [2, 2])
  manager.slice_op(ops[0], [1, 2])
  with pytest.raises(ValueError,
                     match=r'Cannot slice op id1 from sizes \[1, 2\] to \[2, 1\]'):
    manager.slice_op(ops[0], [2, 1])


def test_slice_op_slice_helper():
  manager, ops = _identities(1, 10)
  manager.slice_op(ops[0], [2, 6, 2])
  middle = manager.get_op_slices(ops[0])[1]
  new_op_slice_group = [[], [], []]
  manager._slice_op_slice(middle, [1, 3, 2], 0, 3, new_op_slice_group)
  # The 6-slice at 2 becomes (2, 1), (3, 3), (6, 2).
  new_pieces = [orm.OpSlice(ops[0], orm.Slice(2, 1)), orm.OpSlice(ops[0], orm.Slice(3, 3)),
                orm.OpSlice(ops[0], orm.Slice(6, 2))]
  assert new_op_slice_group == [[piece] for piece in new_pieces]
  assert manager.get_op_slices(ops[0]) == (
      [orm.OpSlice(ops[0], orm.Slice(0, 2))] + new_pieces
      + [orm.OpSlice(ops[0], orm.Slice(8, 2))])


def test_slice_op_with_sizes_helper():
  manager, ops = _identities(1, 10)
  new_slices = manager._slice_op_with_sizes(
      ops[0], [1, 2, 3, 4], [True, False, True, False], [True] * 4)
  # Starts are the sums of the preceding sizes: 0, 1, 3, 6.
  assert new_slices == [orm.OpSlice(ops[0], orm.Slice(0, 1)),
                        orm.OpSlice(ops[0], orm.Slice(1, 2)),
                        orm.OpSlice(ops[0], orm.Slice(3, 3)),
                        orm.OpSlice(ops[0], orm.Slice(6, 4))]
  assert manager.get_op_slices(ops[0]) == new_slices
  assert manager.get_op_group(new_slices[0]).source_op_slices == [new_slices[0]]
  assert manager.get_op_group(new_slices[1]) is None
  assert manager.get_op_group(new_slices[2]).source_op_slices == [new_slices[2]]
  assert manager.get_op_group(new_slices[3]) is None


def test_get_source_slices_helper():
  manager, ops = _identities(1, 10)
  manager.slice_op(ops[0], [3, 7])
  first, second = manager.get_op_slices(ops[0])
  manager.create_op_group_for_op_slice(first)
  manager.create_op_group_for_op_slice(second, is_source=False)
  # New [1, 2 | 3, 4]: the pieces of the source 3-slice are sources.
  assert manager._get_source_slices([1, 2, 3, 4], [first, second]) == [
      True, True, False, False]


# ---- work queue ------------------------------------------------------------------


def _pop_all(manager):
  popped = []
  while manager._op_deque:
    popped.append(manager._op_deque.pop())
  return popped


def test_process_ops_is_lifo_and_deduplicates():
  manager, (id1, id2, bn) = _identities(3, 3)
  manager.process_ops([id1, id2, bn])
  manager.process_ops([id2, id1])
  assert _pop_all(manager) == [bn, id2, id1]


def test_process_ops_last():
  manager, (id1, id2, bn) = _identities(3, 3)
  manager.process_ops([id1])
  manager.process_ops_last([id2, bn])
  manager.process_ops_last([id1])
  assert _pop_all(manager) == [id1, id2, bn]


def test_process_ops_ignores_unknown_ops():
  manager, ops = _identities(2, 3)
  manager._all_ops.discard(ops[1])
  manager.process_ops(ops)
  assert list(manager._op_deque) == [ops[0]]
  # process_ops_last does not filter.
  manager.process_ops_last([ops[1]])
  assert list(manager._op_deque) == [ops[1], ops[0]]


# ---- crawling --------------------------------------------------------------------


def _dfs_net(image, var):
  relu1 = _conv(image, var, 'conv1', 5, bn=True)
  relu2 = _conv(image, var, 'conv2', 5, bn=True)
  add = tf.add(relu1, relu2, name='add')
  relu3 = _conv(add, var, 'conv3', 7, bn=True)
  concat = tf.concat([relu1, relu2], 3, name='concat')
  _conv(concat, var, 'conv4', 4, bn=True)  # Not on the output's path.
  return tf.identity(relu3, name='output')


def test_dfs_queues_sources_and_ops_are_the_grouped_ones(mode):
  built = graph_modes.build(mode, _dfs_net, IMAGE_SHAPE)
  queues = []
  dfs = orm.OpRegularizerManager._dfs_for_source_ops

  def recording_dfs(self, *args):
    dfs(self, *args)
    queues.append(list(self._op_deque))

  with mock.patch.object(orm.OpRegularizerManager, '_dfs_for_source_ops', recording_dfs):
    manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers())
  bn1, bn2, bn3 = (built.op(f'conv{i}/FusedBatchNormV3') for i in (1, 2, 3))
  assert queues == [[bn3, bn2, bn1]]
  names = {op.name for op in manager.ops}
  assert {'conv1/Conv2D', 'conv2/Relu', 'add', 'conv3/FusedBatchNormV3',
          'output'} <= names
  assert not any(name.startswith('conv4') or name == 'concat' for name in names)


def test_no_source_gives_no_ops(mode):
  built = graph_modes.build(mode, _dfs_net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')],
                                     op_handlers.get_gamma_op_handler_dict())
  assert manager.ops == set()
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is None


def test_input_boundary_stops_the_crawl(mode):
  built = graph_modes.build(mode, _dfs_net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers(),
                                     input_boundary=[built.op('add')])
  names = {op.name for op in manager.ops}
  assert 'conv3/Conv2D' in names
  assert not any(name.startswith(('conv1', 'conv2')) or name == 'add' for name in names)


# ---- get_regularizer -------------------------------------------------------------


def _index_stub(start, size):
  return op_regularizer_stub.OpRegularizerStub(np.arange(start, start + size),
                                               [True] * size)


def test_get_regularizer_pads_and_concatenates(mode):
  def net(image, var):
    del var
    tf.identity(tf.zeros([1, 3]), name='op2')
    return tf.identity(tf.zeros([1, 10]), name='op3')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  op2, op3 = built.op('op2'), built.op('op3')
  manager = orm.OpRegularizerManager([op3], op_handlers.get_gamma_op_handler_dict())
  slice2 = manager.get_op_slices(op2)[0]
  manager._op_regularizer_dict[slice2] = _index_stub(0, 3)
  assert manager.get_regularizer(op2) is manager._op_regularizer_dict[slice2]
  np.testing.assert_array_equal(
      _reg_values(built, manager, op2)[0], [0, 1, 2])

  manager.slice_op(op3, [1, 2, 3, 4])
  for op_slice in manager.get_op_slices(op3):
    # Index regularizers offset by 3: slice (start, size) -> [3 + start, ...].
    manager._op_regularizer_dict[op_slice] = _index_stub(3 + op_slice.slice.start_index,
                                                         op_slice.slice.size)
  np.testing.assert_array_equal(_reg_values(built, manager, op3)[0],
                                np.arange(3, 13))
  del manager._op_regularizer_dict[manager.get_op_slices(op3)[2]]
  reg, alive = _reg_values(built, manager, op3)
  # The third slice (3, 3) is padded with zeros, all alive.
  np.testing.assert_array_equal(reg, [3, 4, 5, 0, 0, 0, 9, 10, 11, 12])
  assert alive.all()

  graph_op = built.op('op3').inputs[0].op
  assert manager.get_regularizer(graph_op) is None


# ---- grouping through the handlers ------------------------------------------------


@pytest.mark.parametrize('combine', [
    tf.add, tf.math.divide, tf.multiply, tf.maximum, tf.minimum,
    tf.math.squared_difference])
def test_elementwise_ops_group_inputs(mode, combine):
  reg1, reg2 = np.random.rand(5), np.random.rand(5)
  stubs = {'conv1/': (reg1, reg1 > 0.5), 'conv2/': (reg2, reg2 > 0.5)}

  def net(image, var):
    conv1 = _conv(image, var, 'conv1', 5, relu=False)
    conv2 = _conv(image, var, 'conv2', 5, relu=False)
    return tf.nn.relu(combine(conv1, conv2), name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _stub_handlers(stubs))
  _, alive = _reg_values(built, manager, built.op('output'))
  # Max grouping: a channel is alive if it is alive in either conv.
  np.testing.assert_array_equal(alive, (reg1 > 0.5) | (reg2 > 0.5))


def test_cascading_adds_form_one_group(mode):
  def net(image, var):
    conv_input = _conv(image, var, 'conv_input', 17, bn=True)
    first = _conv(conv_input, var, 'conv_first', 17, bn=True)
    add_first = tf.add(first, conv_input, name='add_first')
    second = _conv(add_first, var, 'conv_second', 17, bn=True)
    return tf.add(conv_input, second, name='add_second')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('add_second')], _gamma_handlers())
  group = _group(manager, built.op('conv_input/Conv2D'))
  for name in ('conv_first/Conv2D', 'conv_second/Conv2D', 'add_first', 'add_second'):
    assert _group(manager, built.op(name)) is group, name
  assert len(group.source_op_slices) == 3


def test_broadcast_add(mode):
  def net(image, var):
    conv1 = _conv(image, var, 'conv1', 1, bn=True)
    conv2 = _conv(image, var, 'conv2', 10, bn=True)
    add = tf.add(conv1, conv2, name='add')
    return _conv(add, var, 'conv3', 13, bn=True)

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('conv3/Relu')], _gamma_handlers())
  group1 = _group(manager, built.op('conv1/Conv2D'))
  group2 = _group(manager, built.op('conv2/Conv2D'))
  group3 = _group(manager, built.op('conv3/Conv2D'))
  assert all(op_slice.slice.size == 1 for op_slice in group1.op_slices)
  assert _group(manager, built.op('add')) is group2
  assert len({id(group1), id(group2), id(group3)}) == 3
  lengths = [_reg_values(built, manager, built.op(name))[0].shape[0]
             for name in ('conv1/Conv2D', 'conv2/Conv2D', 'add', 'conv3/Conv2D')]
  assert lengths == [1, 10, 10, 13]


def test_channel_concat_and_add(mode):
  def net(image, var):
    net_input = tf.identity(image, name='input')
    conv1 = _conv(net_input, var, 'conv1', 10, bn=True)
    conv2 = _conv(net_input, var, 'conv2', 10, bn=True)
    concat = tf.concat([conv1, conv2], 3, name='concat')
    add = tf.add(conv1, conv2, name='add')
    return concat, add

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('concat'), built.op('add')],
                                     _gamma_handlers())
  group = _group(manager, built.op('conv1/Conv2D'))
  assert _group(manager, built.op('conv2/Conv2D')) is group
  assert _group(manager, built.op('add')) is group
  concat_slices = manager.get_op_slices(built.op('concat'))
  assert [s.slice for s in concat_slices] == [orm.Slice(0, 10), orm.Slice(10, 10)]
  assert all(manager.get_op_group(s) is group for s in concat_slices)
  assert _group(manager, built.op('input')) is not group


def test_concat_on_non_channel_axis(mode):
  def net(image, var):
    conv1 = _conv(image, var, 'conv1', 5, bn=True)
    conv2 = _conv(image, var, 'conv2', 5, bn=True)
    return tf.concat([conv1, conv2], 2, name='concat')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('concat')], _gamma_handlers())
  group = _group(manager, built.op('concat'))
  assert _group(manager, built.op('conv1/Conv2D')) is group
  assert _group(manager, built.op('conv2/Conv2D')) is group
  assert manager.get_op_slices(built.op('concat')) == [
      orm.OpSlice(built.op('concat'), orm.Slice(0, 5))]


def test_batch_norm_before_concat(mode):
  def net(image, var):
    left = _conv(image, var, 'left', 2, bn=True)
    right = _conv(image, var, 'right', 3, bn=True)
    return tf.concat([left, right], 3, name='concat')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('concat')], _gamma_handlers())
  assert _group(manager, built.op('concat'), 0) is _group(manager, built.op('left/Relu'))
  assert _group(manager, built.op('concat'), 1) is _group(manager, built.op('right/Relu'))


def test_batch_norm_after_concat(mode):
  def net(image, var):
    left = _conv(image, var, 'left', 3)
    right = _conv(image, var, 'right', 4)
    concat = tf.concat([left, right], 3, name='concat')
    with tf.name_scope('bn'):
      out, _, _ = tf.compat.v1.nn.fused_batch_norm(
          concat, var('bn_gamma', np.arange(1, 8)), var('bn_beta', np.zeros(7)),
          is_training=True)
    return tf.nn.relu(out, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers(0.5))
  concat, bn = built.op('concat'), built.op('bn/FusedBatchNormV3')
  for op in (concat, bn):
    assert [s.slice.size for s in manager.get_op_slices(op)] == [3, 4]
  for index, side in enumerate(('left', 'right')):
    group = _group(manager, built.op(f'{side}/Conv2D'))
    assert _group(manager, concat, index) is group
    assert _group(manager, bn, index) is group
    # The BN pieces are sources again after the split.
    assert group.source_op_slices == [manager.get_op_slices(bn)[index]]
  assert manager.get_op_group(orm.OpSlice(concat, orm.Slice(0, 7))) is None
  # |gamma| = [1..7]: left gets the first 3, right the last 4.
  np.testing.assert_allclose(
      _reg_values(built, manager, built.op('left/Conv2D'))[0], [1, 2, 3])
  np.testing.assert_allclose(
      _reg_values(built, manager, built.op('right/Conv2D'))[0], [4, 5, 6, 7])
  np.testing.assert_allclose(
      _reg_values(built, manager, bn)[0], np.arange(1, 8))


def test_nested_concats(mode):
  def net(image, var):
    convs = [_conv(image, var, f'conv{i}', 1) for i in range(1, 11)]
    left = tf.concat([tf.concat(convs[0:3], 3), tf.concat(convs[3:7], 3)], 3)
    right = tf.concat([tf.concat(convs[7:9], 3), tf.concat(convs[9:10], 3)], 3)
    concat = tf.concat([left, right], 3)
    with tf.name_scope('bn'):
      out, _, _ = tf.compat.v1.nn.fused_batch_norm(
          concat, var('bn_gamma', np.ones(10)), var('bn_beta', np.zeros(10)),
          is_training=True)
    return tf.nn.relu(out, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers())
  bn = built.op('bn/FusedBatchNormV3')
  bn_slices = manager.get_op_slices(bn)
  assert [s.slice for s in bn_slices] == [orm.Slice(i, 1) for i in range(10)]
  groups = [manager.get_op_group(s) for s in bn_slices]
  assert len({id(group) for group in groups}) == 10
  for i, group in enumerate(groups):
    assert _group(manager, built.op(f'conv{i + 1}/Conv2D')) is group


def _split_net(image, var):
  conv = _conv(image, var, 'conv', 10, bn=True)
  split = tf.split(conv, [5, 5], axis=3)
  conv_a = _conv(image, var, 'conv_a', 5, bn=True)
  conv_b = _conv(image, var, 'conv_b', 5, bn=True)
  return tf.add(split[0], conv_a, name='add_a'), tf.add(split[1], conv_b, name='add_b')


def test_split_groups_each_output_range(mode):
  # Beyond the original (which spun until the iteration limit): output j of
  # a channel split holds channels [5j, 5j + 5) of 'conv'.
  built = graph_modes.build(mode, _split_net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('add_a'), built.op('add_b')],
                                     _gamma_handlers(), iteration_limit=100)
  conv_relu = built.op('conv/Relu')
  assert [s.slice for s in manager.get_op_slices(conv_relu)] == [
      orm.Slice(0, 5), orm.Slice(5, 5)]
  group_a = _group(manager, built.op('add_a'))
  group_b = _group(manager, built.op('add_b'))
  assert group_a is not group_b
  assert _group(manager, conv_relu, 0) is group_a
  assert _group(manager, conv_relu, 1) is group_b
  assert _group(manager, built.op('conv_a/Relu')) is group_a
  assert _group(manager, built.op('conv_b/Relu')) is group_b


def test_stalled_grouping_hits_iteration_limit(mode):
  # A channel-changing op handled as element-wise (the original's default for
  # an unknown type) waits forever for an input of its own size.
  def net(image, var):
    conv = _conv(image, var, 'conv', 5, bn=True)
    tiled = tf.tile(conv, [1, 1, 1, 2], name='tile')
    return tf.add(tiled, _conv(image, var, 'conv_b', 10, bn=True), name='add')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  handlers = _gamma_handlers()
  handlers['Tile'] = grouping_op_handler.GroupingOpHandler()
  with pytest.raises(RuntimeError, match=r'OpRegularizerManager could not handle ops: '
                     r"\[.*'tile \(Tile\)'.*\]. .*iteration_limit=100"):
    orm.OpRegularizerManager([built.op('add')], handlers, iteration_limit=100)


def test_stalled_grouping_error_summarises_many_ops(mode):
  # 25 stalled Tile ops (as above): the error names MAX_OPS_LISTED ops, says
  # how many more there are and counts every type.
  branches = 25

  def net(image, var):
    outputs = []
    for i in range(branches):
      conv = _conv(image, var, f'conv{i}', 5, bn=True)
      tiled = tf.tile(conv, [1, 1, 1, 2], name=f'tile{i}')
      outputs.append(tf.add(tiled, _conv(image, var, f'conv_b{i}', 10, bn=True),
                            name=f'add{i}'))
    return tf.add_n(outputs, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  handlers = _gamma_handlers()
  handlers['Tile'] = grouping_op_handler.GroupingOpHandler()
  with pytest.raises(RuntimeError) as raised:
    orm.OpRegularizerManager([built.op('output')], handlers, iteration_limit=2000)
  message = str(raised.value)
  listed = re.search(r'could not handle ops: (\[.*?\]) and (\d+) more '
                     r'\((\d+) ops by type: ([^)]*)\)', message)
  assert listed, message
  names = ast.literal_eval(listed.group(1))
  assert len(names) == orm.MAX_OPS_LISTED
  total = int(listed.group(3))
  assert int(listed.group(2)) == total - orm.MAX_OPS_LISTED
  counts = dict(item.rsplit(' x', 1) for item in listed.group(4).split(', '))
  assert counts['Tile'] == str(branches)
  assert sum(int(c) for c in counts.values()) == total


@pytest.mark.parametrize('multiplier', [1, 2, 7])
@pytest.mark.parametrize('pointwise', [8, None])
def test_separable_conv(mode, multiplier, pointwise):
  gamma1 = np.arange(1, 6)
  channels = 5 * multiplier

  def net(image, var):
    conv1 = _conv(image, var, 'conv1', 5, bn=True, gamma=gamma1)
    with tf.name_scope('sep'):
      x = tf.nn.depthwise_conv2d(conv1, var('dw', np.ones([3, 3, 5, multiplier])),
                                 [1, 1, 1, 1], 'SAME', name='depthwise')
      if pointwise:
        x = tf.nn.conv2d(x, var('pw', np.ones([1, 1, channels, pointwise])), 1, 'SAME')
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          x, var('sep_gamma', np.full(x.shape[-1], 0.5)),
          var('sep_beta', np.zeros(x.shape[-1])), is_training=True)
      return tf.nn.relu(x, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('sep/output')], _gamma_handlers(0.1))
  depthwise, relu1 = built.op('sep/depthwise'), built.op('conv1/Relu')
  assert sum(s.slice.size for s in manager.get_op_slices(depthwise)) == channels
  for i in range(channels):
    group = _group(manager, depthwise, i if multiplier > 1 else 0)
    relu1_index = i // multiplier if multiplier > 1 else 0
    assert _group(manager, relu1, relu1_index) is group
    if not pointwise:
      assert _group(manager, built.op('sep/output'), i if multiplier > 1 else 0) is group
  reg, _ = _reg_values(built, manager, depthwise)
  # Output channel k takes gamma1[k // m]; without pointwise the BN after the
  # depthwise (gammas 0.5 < every gamma1) is max-grouped with it.
  np.testing.assert_allclose(reg, np.repeat(gamma1, multiplier))


def test_depthwise_channel_layout():
  # Channel c of the input holds the value c; identity 3x3 kernels (centre 1).
  image = np.tile(np.arange(5, dtype=np.float32), [1, 3, 3, 1])
  kernel = np.zeros([3, 3, 5, 2], np.float32)
  kernel[1, 1] = 1.0
  out = tf.nn.depthwise_conv2d(image, kernel, [1, 1, 1, 1], 'SAME').numpy()
  # Output channel k holds input channel k // 2.
  np.testing.assert_array_equal(out[0, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


@pytest.mark.parametrize('same_identity', [False, True])
def test_add_n(mode, same_identity):
  def net(image, var):
    conv = _conv(image, var, 'conv', 5, relu=False)
    if same_identity:
      identities = [tf.identity(conv, name='id')] * 4
    else:
      identities = [tf.identity(conv, name=f'id{i}') for i in range(4)]
    add_n = tf.add_n(identities, name='add_n')
    with tf.name_scope('bn'):
      out, _, _ = tf.compat.v1.nn.fused_batch_norm(
          add_n, var('bn_gamma', np.ones(5)), var('bn_beta', np.zeros(5)),
          is_training=True)
    return tf.nn.relu(out, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers())
  group = _group(manager, built.op('bn/FusedBatchNormV3'))
  names = ['conv/Conv2D', 'add_n', 'output'] + (
      ['id'] if same_identity else [f'id{i}' for i in range(4)])
  for name in names:
    assert _group(manager, built.op(name)) is group, name


def test_gather_is_passthrough(mode):
  stubs = {'conv/': (np.arange(10), [True] * 10)}

  def net(image, var):
    conv = _conv(image, var, 'conv', 10)
    return tf.gather(conv, [3, 1, 4, 0, 5, 9, 2, 6, 8, 7], axis=3, name='gather')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('gather')], _stub_handlers(stubs))
  # The permutation is not tracked: the gather gets the conv's [0..9].
  np.testing.assert_array_equal(
      _reg_values(built, manager, built.op('gather'))[0], np.arange(10))


@pytest.mark.parametrize('depth', [5, 7])
def test_concat_with_unregularized_input(mode, depth):
  alive2 = [True, False, True, False, False]
  stubs = {'conv2/': ([0.5, 0.1, 0.6, 0.2, 0.3], alive2)}

  def net(image, var):
    constant = tf.constant(np.zeros([1, 17, 19, depth], np.float32))
    unregularized = tf.add(tf.identity(constant), 3.0, name='unregularized')
    conv2 = _conv(image, var, 'conv2', 5)
    concat = tf.concat([unregularized, conv2], 3, name='concat')
    return tf.add(concat, concat, name='double')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('double')], _stub_handlers(stubs))
  for name in ('concat', 'double'):
    _, alive = _reg_values(built, manager, built.op(name))
    np.testing.assert_array_equal(alive, [True] * depth + alive2)


def test_skip_connection_sources(mode):
  def net(image, var):
    conv0 = _conv(image, var, 'conv0', 8, relu=False)
    with tf.name_scope('bn0'):
      x, _, _ = tf.compat.v1.nn.fused_batch_norm(
          conv0, var('g0', np.ones(8)), var('b0', np.zeros(8)), is_training=True)
    conv1 = _conv(tf.nn.relu(x), var, 'conv1', 8, relu=False)
    add_n = tf.add_n([conv0, conv1], name='add_n')
    with tf.name_scope('bn1'):
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
          add_n, var('g1', np.ones(8)), var('b1', np.zeros(8)), is_training=True)
    return tf.nn.relu(y, name='output')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')], _gamma_handlers())
  group = _group(manager, built.op('add_n'))
  for name in ('conv0/Conv2D', 'conv1/Conv2D', 'bn0/FusedBatchNormV3', 'output'):
    assert _group(manager, built.op(name)) is group
  assert set(group.source_op_slices) == {
      manager.get_op_slices(built.op('bn0/FusedBatchNormV3'))[0],
      manager.get_op_slices(built.op('bn1/FusedBatchNormV3'))[0]}


def test_products_share_a_regularizer(mode):
  stubs = {f'{scope}/{i}/': (np.random.rand(6), np.random.rand(6) > 0.5)
           for scope in ('parallel', 'parallel_1') for i in (1, 2)}

  def net(image, var):
    outputs = []
    for scope in ('parallel', 'parallel_1'):
      with tf.name_scope(scope):
        conv1 = _conv(image, var, '1', 6, relu=False)
        conv2 = _conv(image, var, '2', 6, relu=False)
        outputs.append(tf.multiply(conv1, conv2, name='product'))
    return outputs

  def var_with_scope(var):
    names = iter(range(100))
    return lambda name, value: var(f'{name}_{next(names)}', value)

  built = graph_modes.build(mode, lambda image, var: net(image, var_with_scope(var)),
                            IMAGE_SHAPE)
  manager = orm.OpRegularizerManager(
      [built.op('parallel/product'), built.op('parallel_1/product')],
      _stub_handlers(stubs))
  for scope in ('parallel', 'parallel_1'):
    reg = manager.get_regularizer(built.op(f'{scope}/1/Conv2D'))
    assert reg is not None
    assert manager.get_regularizer(built.op(f'{scope}/2/Conv2D')) is reg
    assert manager.get_regularizer(built.op(f'{scope}/product')) is reg


# ---- force_group, blacklist, iteration limit --------------------------------------


def _chain_net(sizes=(10, 10, 10)):
  def net(image, var):
    x = image
    for i, size in enumerate(sizes):
      x = _conv(x, var, f'conv{i + 1}', size, bn=True)
    return tf.identity(x, name='output')
  return net


def test_force_group(mode):
  built = graph_modes.build(mode, _chain_net(), IMAGE_SHAPE)
  output = [built.op('output')]
  manager = orm.OpRegularizerManager(output, _gamma_handlers())
  conv2, conv3 = built.op('conv2/Conv2D'), built.op('conv3/Conv2D')
  assert _group(manager, conv2) is not _group(manager, conv3)

  manager = orm.OpRegularizerManager(output, _gamma_handlers(),
                                     force_group=['conv2|conv3'])
  group = _group(manager, conv2)
  assert _group(manager, conv3) is group
  assert len(group.source_op_slices) == 2
  assert manager.get_regularizer(conv2) is manager.get_regularizer(conv3)
  assert _group(manager, built.op('conv1/Conv2D')) is not group


def test_force_group_errors(mode):
  def concat_net(image, var):
    conv1 = _conv(image, var, 'conv1', 5, bn=True)
    conv2 = _conv(image, var, 'conv2', 5, bn=True)
    concat = tf.concat([conv1, conv2], 3, name='concat')
    return _conv(concat, var, 'conv3', 10, bn=True)

  built = graph_modes.build(mode, concat_net, IMAGE_SHAPE)
  output = [built.op('conv3/Relu')]
  with pytest.raises(ValueError, match=r"Cannot force-group ops with more than 1 "
                     r"OpSlice: \['concat'\]"):
    orm.OpRegularizerManager(output, _gamma_handlers(), force_group=['conv3|concat'])
  with pytest.raises(ValueError, match="Regex 'nothing' did not match any ops."):
    orm.OpRegularizerManager(output, _gamma_handlers(), force_group=['nothing'])
  with pytest.raises(TypeError, match='force_group must be a list of regex. '
                     "Received: force_group='conv1'"):
    orm.OpRegularizerManager(output, _gamma_handlers(), force_group='conv1')

  built = graph_modes.build(mode, _chain_net((10, 10, 9)), IMAGE_SHAPE)
  with pytest.raises(ValueError, match=r"Cannot force-group ops with different sizes: "
                     r"\[.*'conv2/Conv2D'.*'conv3/Conv2D'.*\]"):
    orm.OpRegularizerManager([built.op('output')], _gamma_handlers(),
                             force_group=['conv2|conv3'])


def test_blacklist(mode):
  built = graph_modes.build(mode, _chain_net(), IMAGE_SHAPE)
  output = [built.op('output')]
  manager = orm.OpRegularizerManager(output, _gamma_handlers(),
                                     regularizer_blacklist=['conv2'])
  assert manager.get_regularizer(built.op('conv2/Conv2D')) is None
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is not None
  assert manager.get_regularizer(built.op('conv3/Conv2D')) is not None

  with pytest.raises(ValueError, match=r"Blacklist regex never used: 'oops'\."):
    orm.OpRegularizerManager(output, _gamma_handlers(), regularizer_blacklist=['oops'])
  with pytest.raises(ValueError, match=r"Blacklist regex never used: 'oops\|nope'\."):
    orm.OpRegularizerManager(output, _gamma_handlers(),
                             regularizer_blacklist=['oops', 'nope'])
  with pytest.raises(TypeError, match='regularizer_blacklist must be a list of regex.'):
    orm.OpRegularizerManager(output, _gamma_handlers(), regularizer_blacklist='conv2')


def test_blacklist_applies_to_whole_group(mode):
  def net(image, var):
    conv1 = _conv(image, var, 'conv1', 5, bn=True)
    conv2 = _conv(image, var, 'conv2', 5, bn=True)
    return tf.add(conv1, conv2, name='add')

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('add')], _gamma_handlers(),
                                     regularizer_blacklist=['conv1'])
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is None
  assert manager.get_regularizer(built.op('conv2/Conv2D')) is None
  assert manager.get_regularizer(built.op('add')) is None


def test_iteration_limit_zero_always_raises(mode):
  built = graph_modes.build(mode, _chain_net(), IMAGE_SHAPE)
  with pytest.raises(RuntimeError, match=r'OpRegularizerManager could not handle ops: '
                     r"\['conv3/FusedBatchNormV3 \(FusedBatchNormV3\)'"):
    orm.OpRegularizerManager([built.op('output')], _gamma_handlers(), iteration_limit=0)
  # Even with nothing to do.
  with pytest.raises(RuntimeError, match=r'could not handle ops: \[\]'):
    orm.OpRegularizerManager([built.op('output')],
                             op_handlers.get_gamma_op_handler_dict(), iteration_limit=0)


# ---- grouping regularizer --------------------------------------------------------


class _SumGroupingRegularizer(generic_regularizers.OpRegularizer):

  def __init__(self, regularizers):
    self.regularizers = regularizers

  @property
  def regularization_vector(self):
    return tf.add_n([r.regularization_vector for r in self.regularizers])

  @property
  def alive_vector(self):
    return tf.reduce_any(tf.stack([r.alive_vector for r in self.regularizers]), 0)


def test_custom_grouping_regularizer(mode):
  r1, r2, r3, r4 = ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8], [0.9, 1.0, 1.1, 1.2])
  stubs = {'conv1/': (r1, [True] * 3), 'conv2/': (r2, [True] * 3),
           'conv3/': (r3, [True] * 2), 'conv4/': (r4, [True] * 4)}

  def net(image, var):
    add = tf.add(_conv(image, var, 'conv1', 3), _conv(image, var, 'conv2', 3), name='add')
    concat = tf.concat([_conv(image, var, 'conv3', 2), _conv(image, var, 'conv4', 4)], 3,
                       name='concat')
    return add, concat

  built = graph_modes.build(mode, net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager(
      [built.op('add'), built.op('concat')], _stub_handlers(stubs),
      create_grouping_regularizer=_SumGroupingRegularizer)
  reg_add = manager.get_regularizer(built.op('add'))
  assert isinstance(reg_add, _SumGroupingRegularizer)
  assert manager.get_regularizer(built.op('conv1/Conv2D')) is reg_add
  assert manager.get_regularizer(built.op('conv2/Conv2D')) is reg_add
  # Summed: r1 + r2.
  np.testing.assert_allclose(_values(built, reg_add)[0], [0.5, 0.7, 0.9])
  reg3 = manager.get_regularizer(built.op('conv3/Conv2D'))
  reg4 = manager.get_regularizer(built.op('conv4/Conv2D'))
  assert reg3 is not reg4
  np.testing.assert_allclose(
      _reg_values(built, manager, built.op('concat'))[0], r3 + r4)


# ---- stub models (spec 7) --------------------------------------------------------

ADD_CONCAT_STUBS = {
    'conv1/': ([0.1, 0.3, 0.6, 0.2, 0.4, 0.0, 0.8], [False, True, True, False, True,
                                                    False, True]),
    'conv2/': ([0.15, 0.25, 0.05, 0.55, 0.45], [True, False, True, False, False]),
    'conv3/': ([0.07, 0.27, 0.17, 0.37], [False, False, True, True]),
    'conv4/': ([0.07, 0.27, 0.17, 0.37, 0.28, 0.32, 0.12, 0.22, 0.19, 0.11, 0.02, 0.06],
               [False, True, False, True, True, False, True, False, False, True, False,
                False]),
    'conv5/': ([0.24, 0.34, 0.29], [False, True, False]),
}


def _add_concat_net(image, var):
  conv1 = _conv(image, var, 'conv1', 7, kernel=(7, 5))
  conv2 = _conv(image, var, 'conv2', 5)
  concat = tf.concat([conv1, conv2], 3, name='concat')
  conv3 = _conv(concat, var, 'conv3', 4)
  conv4 = _conv(conv3, var, 'conv4', 12, kernel=(3, 3))
  add = tf.add(concat, conv4, name='add')
  return _conv(add, var, 'conv5', 3, kernel=(3, 3), stride=2)


def test_add_concat_model(mode):
  built = graph_modes.build(mode, _add_concat_net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('conv5/Conv2D')],
                                     _stub_handlers(ADD_CONCAT_STUBS))
  stubs = {k[:-1]: (np.asarray(r), np.asarray(a)) for k, (r, a) in ADD_CONCAT_STUBS.items()}
  # concat(conv1, conv2) is added to conv4: max / OR of the two.
  grouped_reg = np.maximum(np.concatenate([stubs['conv1'][0], stubs['conv2'][0]]),
                           stubs['conv4'][0])
  grouped_alive = np.logical_or(np.concatenate([stubs['conv1'][1], stubs['conv2'][1]]),
                                stubs['conv4'][1])
  expected = {
      'conv1': (grouped_reg[:7], grouped_alive[:7]),
      'conv2': (grouped_reg[7:], grouped_alive[7:]),
      'conv3': stubs['conv3'],
      'conv4': (grouped_reg, grouped_alive),
      'conv5': stubs['conv5'],
  }
  for name, (reg, alive) in expected.items():
    # The output boundary is conv5's Conv2D: its ReLU is not analysed.
    op_names = [f'{name}/Conv2D'] + ([f'{name}/Relu'] if name != 'conv5' else [])
    for op_name in op_names:
      actual_reg, actual_alive = _reg_values(built, manager, built.op(op_name))
      np.testing.assert_allclose(actual_reg, reg, err_msg=op_name)
      np.testing.assert_array_equal(actual_alive, alive, err_msg=op_name)
  for op_name in ('add', 'concat'):
    actual_reg, actual_alive = _reg_values(built, manager, built.op(op_name))
    np.testing.assert_allclose(actual_reg, grouped_reg)
    np.testing.assert_array_equal(actual_alive, grouped_alive)


GROUPING_CONCAT_STUBS = {
    'conv1/': ([0.1, 0.3, 0.6], [False, True, True]),
    'conv2/': ([0.15, 0.25, 0.05], [True, False, True]),
    'conv3/': ([0.07, 0.17, 0.57, 0.37], [False, False, True, True]),
    'conv4/': ([0.06, 100.87, 0.17, 1.57], [False, True, False, True]),
}


def _grouping_concat_net(image, var):
  conv1 = _conv(image, var, 'conv1', 3, kernel=(7, 5))
  conv2 = _conv(image, var, 'conv2', 3)
  concat1 = tf.concat([conv1, conv2], 1, name='concat1')
  conv3 = _conv(concat1, var, 'conv3', 4)
  conv4 = _conv(conv3, var, 'conv4', 4, kernel=(3, 3))
  return tf.concat([conv4, conv3], 2, name='concat2')


def test_grouping_concat_model(mode):
  built = graph_modes.build(mode, _grouping_concat_net, IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('concat2')],
                                     _stub_handlers(GROUPING_CONCAT_STUBS))
  stubs = {k[:-1]: (np.asarray(r), np.asarray(a))
           for k, (r, a) in GROUPING_CONCAT_STUBS.items()}
  # Concats on non-channel axes group their inputs: max / OR.
  expected12 = (np.maximum(stubs['conv1'][0], stubs['conv2'][0]),
                np.logical_or(stubs['conv1'][1], stubs['conv2'][1]))
  expected34 = (np.maximum(stubs['conv3'][0], stubs['conv4'][0]),
                np.logical_or(stubs['conv3'][1], stubs['conv4'][1]))
  for names, (reg, alive) in (
      (('conv1/Conv2D', 'conv1/Relu', 'conv2/Conv2D', 'concat1'), expected12),
      (('conv3/Conv2D', 'conv3/Relu', 'conv4/Conv2D', 'concat2'), expected34)):
    for name in names:
      actual_reg, actual_alive = _reg_values(built, manager, built.op(name))
      np.testing.assert_allclose(actual_reg, reg, err_msg=name)
      np.testing.assert_array_equal(actual_alive, alive, err_msg=name)
  assert (manager.get_regularizer(built.op('conv1/Conv2D'))
          is manager.get_regularizer(built.op('conv2/Conv2D')))


# ---- constructor arguments and handler lookup -------------------------------------


def test_output_boundary_errors():
  graph = tf.Graph()
  with graph.as_default():
    x = tf.identity(tf.zeros([1, 3]))
  handlers = op_handlers.get_gamma_op_handler_dict()
  # An empty boundary is accepted (next test); callers that need one check it.
  with pytest.raises(ValueError, match=r'output_boundary must be a non-empty list of '
                     r'tf.Operation. Received: output_boundary=\[\]'):
    orm.check_output_boundary([])
  assert orm.check_output_boundary((x.op,)) == [x.op]
  with pytest.raises(ValueError, match='Received: output_boundary=None'):
    orm.OpRegularizerManager(None, handlers)
  with pytest.raises(TypeError, match=r"not tensors. Received: the tensor 'Identity:0'; "
                     r'pass `tensor.op`'):
    orm.OpRegularizerManager([x], handlers)
  with pytest.raises(TypeError, match='output_boundary must be a list of tf.Operation'):
    orm.OpRegularizerManager(x.op, handlers)
  with pytest.raises(TypeError, match="Received: 'logits' of type str"):
    orm.OpRegularizerManager(['logits'], handlers)
  with pytest.raises(TypeError, match=r'input_boundary must contain tf.Operation objects, '
                     r'not tensors'):
    orm.OpRegularizerManager([x.op], handlers, input_boundary=[x])


def test_empty_output_boundary_builds_a_manager_for_direct_calls():
  # Issue 14, item 1: the original's handler tests build
  # OpRegularizerManager([]) (no crawl) and call its methods on ops directly.
  with tf.Graph().as_default():
    image = tf.constant(np.zeros(IMAGE_SHAPE, np.float32))
    conv = tf.nn.conv2d(image, tf.ones([1, 1, 3, 4]), 1, 'SAME', name='conv')
    gamma = tf.compat.v1.get_variable('gamma', initializer=[1.0, 2.0, 3.0, 4.0],
                                      use_resource=True)
    bn, _, _ = tf.compat.v1.nn.fused_batch_norm(conv, gamma, tf.zeros([4]),
                                                is_training=True, name='bn')
    relu = tf.nn.relu(bn, name='relu')
    handlers = op_handlers.get_gamma_op_handler_dict()
    handlers.register('FusedBatchNormV3',
                      batch_norm_source_op_handler.BatchNormSourceOpHandler(0.1))
    manager = orm.OpRegularizerManager([], handlers)
    assert manager.ops == set()
    assert not manager._op_deque  # nothing crawled, nothing queued
    assert manager.is_source_op(bn.op) and not manager.is_source_op(conv.op)
    assert manager.is_passthrough(relu.op) and not manager.is_passthrough(conv.op)
    # Lazily created: one slice covering the 4 channels.
    assert manager.get_op_slices(relu.op) == [orm.OpSlice(relu.op, orm.Slice(0, 4))]
    assert manager.get_regularizer(conv.op) is None
    conv_slice = manager.get_op_slices(conv.op)[0]
    group = manager.create_op_group_for_op_slice(conv_slice, is_source=False)
    assert group.source_op_slices == [] and manager.get_op_group(conv_slice) is group
    bn_slice = manager.get_op_slices(bn.op)[0]
    manager.group_op_slices([conv_slice, bn_slice])
    merged = manager.get_op_group(bn_slice)
    assert merged is manager.get_op_group(conv_slice)
    assert merged.op_slices == [conv_slice, bn_slice]
    assert merged.source_op_slices == [bn_slice]  # the BN handler is a source
    # Splitting conv splits its whole group: bn follows, in the same pieces.
    manager.slice_op(conv.op, [1, 3])
    assert [s.slice for s in manager.get_op_slices(bn.op)] == [orm.Slice(0, 1),
                                                              orm.Slice(1, 3)]
    # The crawl can still be run by hand: it records the ops and queues bn.
    manager._dfs_for_source_ops([relu.op])
    assert {conv.op, bn.op, relu.op} <= manager.ops
    assert list(manager._op_deque) == [bn.op]


def test_plain_dict_missing_type_raises_unsupported_op_error(mode):
  built = graph_modes.build(mode, _chain_net((4,)), IMAGE_SHAPE)
  handlers = {'FusedBatchNormV3': batch_norm_source_op_handler.BatchNormSourceOpHandler(
      0.5)}
  with pytest.raises(errors.UnsupportedOpError,
                     match=r"no op handler for this op type.*Received: op='conv1/"):
    orm.OpRegularizerManager([built.op('output')], handlers)


def test_none_handler_dict_finds_nothing(mode):
  built = graph_modes.build(mode, _chain_net((4,)), IMAGE_SHAPE)
  manager = orm.OpRegularizerManager([built.op('output')])
  assert manager.ops == set()
  assert manager._op_handler_dict == {}
