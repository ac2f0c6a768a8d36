"""Tests for concat_op_handler (spec 1.6 ConcatOpHandler, 8.1 and 8.2)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import batch_norm_source_op_handler
from morph_net.framework import concat_op_handler
from morph_net.framework import conv_source_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from tests import graph_modes

_GAMMA_THRESHOLD = 0.1


def _conv(image, var, name, filters, kernel_value=1.0):
  """A 1x1 conv of `image` to `filters` channels, in name scope `name`."""
  in_channels = image.shape[-1]
  with tf.name_scope(name):
    kernel = var(name + '_kernel',
                 np.full([1, 1, in_channels, filters], kernel_value, np.float32))
    return tf.nn.conv2d(image, kernel, 1, 'SAME')


def _batch_norm(x, var, name, gamma):
  with tf.name_scope(name):
    gamma = np.asarray(gamma, np.float32)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, var(name + '_gamma', gamma), var(name + '_beta', np.zeros_like(gamma)),
        is_training=True)
    return y


def _relu(x, name):
  with tf.name_scope(name):
    return tf.nn.relu(x)


def _concat_net(sizes=(5, 6, 7), axis=3):
  """convN (sizes) -> reluN -> concat(axis) -> bn -> relu4."""
  def net_fn(image, var):
    relus = [_relu(_conv(image, var, f'conv{i}', size), f'relu{i}')
             for i, size in enumerate(sizes, 1)]
    concat = tf.concat(relus, axis=axis, name='concat')
    channels = concat.shape[-1]
    return _relu(_batch_norm(concat, var, 'bn', np.ones(channels)), 'relu4')
  return net_fn


def _fresh_manager(built):
  """A real manager that knows every op of `built` and has grouped nothing.

  The gamma dict has no source, so constructing it groups nothing; the ops are
  then made known to it as a crawl would, so that handlers can be driven one
  op at a time and their calls on the manager observed.
  """
  manager = orm.OpRegularizerManager(
      [built.output.op], op_handlers.get_gamma_op_handler_dict())
  manager._all_ops = set(built.graph.get_operations())
  return manager


def _group_whole(manager, op):
  """Gives every slice of `op` its own group."""
  for op_slice in manager.get_op_slices(op):
    manager.create_op_group_for_op_slice(op_slice)


def _slices(op, sizes):
  result, start = [], 0
  for size in sizes:
    result.append(orm.OpSlice(op, orm.Slice(start, size)))
    start += size
  return result


def _sizes(manager, op):
  return [op_slice.slice.size for op_slice in manager.get_op_slices(op)]


def _vectors(manager, op):
  """Regularization and alive vectors of `op`, read in the current context.

  A multi-slice op gets a ConcatRegularizer, whose constructor reads its
  members' vectors: in a TF1 graph it must be created inside that graph.
  """
  reg = manager.get_regularizer(op)
  return reg.regularization_vector, reg.alive_vector


def _gamma_dict():
  handler_dict = op_handlers.get_gamma_op_handler_dict()
  handler_dict['FusedBatchNormV3'] = (
      batch_norm_source_op_handler.BatchNormSourceOpHandler(_GAMMA_THRESHOLD))
  return handler_dict


class TestProperties:

  def test_is_passthrough_non_source(self):
    handler = concat_op_handler.ConcatOpHandler()
    assert handler.is_source_op is False
    assert handler.is_passthrough is True

  def test_create_regularizer_raises(self):
    with pytest.raises(NotImplementedError, match='Not a source op'):
      concat_op_handler.ConcatOpHandler().create_regularizer(None)


class TestGetConcatOpAxis:

  @pytest.mark.parametrize('axis', [3, 1, 2, -1])
  def test_axis(self, mode, axis):
    built = graph_modes.build(mode, _concat_net((6, 6, 6), axis), [1, 17, 19, 3])
    assert concat_op_handler._get_concat_op_axis(built.op('concat')) == axis

  def test_non_constant_axis_raises(self):
    graph = tf.Graph()
    with graph.as_default():
      axis = tf.compat.v1.placeholder(tf.int32, [], name='axis')
      x = tf.zeros([1, 2, 2, 3])
      concat = tf.concat([x, x], axis=axis, name='concat')
    with pytest.raises(ValueError, match='concat axis must be a constant'):
      concat_op_handler._get_concat_op_axis(concat.op)


class TestAssignGroupingWithSpiedManager:
  """Handler-level tests: calls made on a real manager (spec 8.2)."""

  def _setup(self, mode, sizes=(5, 6, 7), axis=3):
    built = graph_modes.build(mode, _concat_net(sizes, axis), [1, 17, 19, 3])
    manager = _fresh_manager(built)
    ops = {name: built.op(name) for name in (
        'relu1/Relu', 'relu2/Relu', 'relu3/Relu', 'concat',
        'bn/FusedBatchNormV3')}
    return built, manager, ops

  def test_aligned_groups_each_slice_with_its_input_and_bn(self, mode):
    _, manager, ops = self._setup(mode)
    concat, bn = ops['concat'], ops['bn/FusedBatchNormV3']
    inputs = [ops['relu1/Relu'], ops['relu2/Relu'], ops['relu3/Relu']]
    for input_op in inputs:
      _group_whole(manager, input_op)
    # Concat and BN already sliced like the stacked inputs [5, 6, 7].
    manager.slice_op(concat, [5, 6, 7])
    manager.slice_op(bn, [5, 6, 7])
    _group_whole(manager, bn)

    with mock.patch.object(manager, 'group_op_slices',
                           wraps=manager.group_op_slices) as group_spy, \
        mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy, \
        mock.patch.object(manager, 'process_ops_last') as last_spy:
      concat_op_handler.ConcatOpHandler().assign_grouping(concat, manager)

    slice_spy.assert_not_called()
    last_spy.assert_not_called()
    expected = [
        mock.call([concat_slice, input_op_slice, bn_slice])
        for concat_slice, input_op_slice, bn_slice in zip(
            _slices(concat, [5, 6, 7]),
            [s for op in inputs for s in manager.get_op_slices(op)],
            _slices(bn, [5, 6, 7]))]
    assert group_spy.call_args_list == expected
    groups = [manager.get_op_group(s) for s in _slices(concat, [5, 6, 7])]
    assert len({id(g) for g in groups}) == 3

  def test_bn_presliced_reslices_inputs_bn_and_concat(self, mode):
    _, manager, ops = self._setup(mode)
    concat, bn = ops['concat'], ops['bn/FusedBatchNormV3']
    relu1, relu2, relu3 = ops['relu1/Relu'], ops['relu2/Relu'], ops['relu3/Relu']
    for input_op in (relu1, relu2, relu3):
      _group_whole(manager, input_op)
    manager.slice_op(bn, [9, 4, 5])
    _group_whole(manager, bn)

    with mock.patch.object(manager, 'group_op_slices',
                           wraps=manager.group_op_slices) as group_spy, \
        mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy:
      concat_op_handler.ConcatOpHandler().assign_grouping(concat, manager)

    # Stacked inputs [5 | 6 | 7] aligned with BN [9, 4, 5]: boundaries
    # {5, 11, 18} U {9, 13, 18} = {5, 9, 11, 13, 18} -> [5, 4, 2, 2, 5];
    # relu1 (5) already fits, relu2 (6) -> [4, 2], relu3 (7) -> [2, 5].
    assert slice_spy.call_args_list == [
        mock.call(relu2, [4, 2]),
        mock.call(relu3, [2, 5]),
        mock.call(bn, [5, 4, 2, 2, 5]),
        mock.call(concat, [5, 4, 2, 2, 5]),
    ]
    input_slices = (_slices(relu1, [5]) + _slices(relu2, [4, 2])
                    + _slices(relu3, [2, 5]))
    concat_slices = _slices(concat, [5, 4, 2, 2, 5])
    bn_slices = _slices(bn, [5, 4, 2, 2, 5])
    group_spy.assert_has_calls([
        mock.call([c, i, b])
        for c, i, b in zip(concat_slices, input_slices, bn_slices)])
    groups = []
    for c, i, b in zip(concat_slices, input_slices, bn_slices):
      group = manager.get_op_group(c)
      assert group is not None
      assert manager.get_op_group(i) is group
      assert manager.get_op_group(b) is group
      groups.append(group)
    assert len({id(g) for g in groups}) == 5

  def test_pending_input_is_queued_and_concat_requeued_last(self, mode):
    _, manager, ops = self._setup(mode)
    concat, bn = ops['concat'], ops['bn/FusedBatchNormV3']
    _group_whole(manager, ops['relu1/Relu'])
    _group_whole(manager, ops['relu3/Relu'])
    _group_whole(manager, bn)

    with mock.patch.object(manager, 'group_op_slices') as group_spy, \
        mock.patch.object(manager, 'process_ops') as process_spy, \
        mock.patch.object(manager, 'process_ops_last') as last_spy:
      concat_op_handler.ConcatOpHandler().assign_grouping(concat, manager)

    # The BN is still resliced to [5, 6, 7] (splitting its own group), but the
    # concat is not grouped with anything.
    for call in group_spy.call_args_list:
      assert concat not in [op_slice.op for op_slice in call.args[0]]
    assert all(manager.get_op_group(s) is None
               for s in manager.get_op_slices(concat))
    process_spy.assert_called_once_with([ops['relu2/Relu']])
    last_spy.assert_called_once_with([concat])

  def test_ungrouped_output_grouped_with_inputs_then_queued(self, mode):
    _, manager, ops = self._setup(mode)
    concat, bn = ops['concat'], ops['bn/FusedBatchNormV3']
    inputs = [ops['relu1/Relu'], ops['relu2/Relu'], ops['relu3/Relu']]
    for input_op in inputs:
      _group_whole(manager, input_op)

    with mock.patch.object(manager, 'process_ops') as process_spy, \
        mock.patch.object(manager, 'process_ops_last') as last_spy:
      concat_op_handler.ConcatOpHandler().assign_grouping(concat, manager)

    # Inputs done, output pending: the concat groups with its inputs only,
    # then the BN is queued.
    process_spy.assert_called_once_with([bn])
    last_spy.assert_not_called()
    for concat_slice, input_op in zip(_slices(concat, [5, 6, 7]), inputs):
      assert manager.get_op_group(concat_slice) is manager.get_op_group(
          manager.get_op_slices(input_op)[0])
    assert manager.get_op_group(manager.get_op_slices(bn)[0]) is None

  def test_axis2_concat_groups_like_elementwise(self, mode):
    _, manager, ops = self._setup(mode, sizes=(6, 6, 6), axis=2)
    concat, bn = ops['concat'], ops['bn/FusedBatchNormV3']
    inputs = [ops['relu1/Relu'], ops['relu2/Relu'], ops['relu3/Relu']]
    for op in inputs + [bn]:
      _group_whole(manager, op)

    with mock.patch.object(manager, 'group_op_slices',
                           wraps=manager.group_op_slices) as group_spy, \
        mock.patch.object(manager, 'slice_op', wraps=manager.slice_op) as slice_spy:
      concat_op_handler.ConcatOpHandler().assign_grouping(concat, manager)

    slice_spy.assert_not_called()
    group_spy.assert_called_once_with(
        [orm.OpSlice(op, orm.Slice(0, 6)) for op in [concat] + inputs + [bn]])


class TestEndToEnd:
  """Real OpRegularizerManager runs over concats (spec 8.1)."""

  def test_bn_before_concat(self, mode):
    gamma_left = [0.5, -0.05]
    gamma_right = [0.3, 0.0, -2.0]

    def net_fn(image, var):
      left = _relu(_batch_norm(_conv(image, var, 'left', 2), var, 'bn_left',
                               gamma_left), 'relu_left')
      right = _relu(_batch_norm(_conv(image, var, 'right', 3), var, 'bn_right',
                                gamma_right), 'relu_right')
      concat = tf.concat([left, right], axis=3, name='concat')
      return _conv(concat, var, 'out', 4)

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
    concat = built.op('concat')
    assert _sizes(manager, concat) == [2, 3]
    concat_slices = manager.get_op_slices(concat)
    left_bn = manager.get_op_slices(built.op('bn_left/FusedBatchNormV3'))
    right_bn = manager.get_op_slices(built.op('bn_right/FusedBatchNormV3'))
    assert manager.get_op_group(concat_slices[0]) is manager.get_op_group(left_bn[0])
    assert manager.get_op_group(concat_slices[1]) is manager.get_op_group(right_bn[0])
    assert manager.get_op_group(concat_slices[0]) is not manager.get_op_group(
        concat_slices[1])
    regularization, alive = built.evaluate(lambda: _vectors(manager, concat))
    # [|gamma_left|, |gamma_right|]; alive iff |gamma| > 0.1.
    np.testing.assert_allclose(regularization, [0.5, 0.05, 0.3, 0.0, 2.0])
    np.testing.assert_array_equal(alive, [True, False, True, False, True])

  def test_bn_after_concat(self, mode):
    gamma = [1.0, 0.05, 0.2, 0.3, 0.0, 0.5, 0.01]

    def net_fn(image, var):
      left = _relu(_conv(image, var, 'left', 3), 'relu_left')
      right = _relu(_conv(image, var, 'right', 4), 'relu_right')
      concat = tf.concat([left, right], axis=3, name='concat')
      return _relu(_batch_norm(concat, var, 'bn', gamma), 'relu_out')

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
    concat, bn = built.op('concat'), built.op('bn/FusedBatchNormV3')
    assert _sizes(manager, concat) == [3, 4]
    assert _sizes(manager, bn) == [3, 4]
    for index, side in enumerate(('left', 'right')):
      group = manager.get_op_group(manager.get_op_slices(concat)[index])
      assert group is not None
      assert manager.get_op_group(manager.get_op_slices(bn)[index]) is group
      for name in (f'relu_{side}/Relu', f'{side}/Conv2D'):
        assert manager.get_op_group(
            manager.get_op_slices(built.op(name))[0]) is group
    assert manager.get_op_group(orm.OpSlice(concat, orm.Slice(0, 7))) is None
    left_reg = manager.get_regularizer(built.op('left/Conv2D'))
    right_reg = manager.get_regularizer(built.op('right/Conv2D'))
    left_values, right_values = built.evaluate(
        lambda: (left_reg.regularization_vector, right_reg.regularization_vector))
    # |gamma[:3]| and |gamma[3:]|.
    np.testing.assert_allclose(left_values, [1.0, 0.05, 0.2])
    np.testing.assert_allclose(right_values, [0.3, 0.0, 0.5, 0.01])

  def test_nested_concats(self, mode):
    def net_fn(image, var):
      convs = [_relu(_conv(image, var, f'conv{i}', 1), f'relu{i}')
               for i in range(1, 11)]
      concat_a = tf.concat([tf.concat(convs[0:3], 3), tf.concat(convs[3:7], 3)], 3)
      concat_b = tf.concat([tf.concat(convs[7:9], 3), convs[9]], 3)
      concat = tf.concat([concat_a, concat_b], 3)
      return _batch_norm(concat, var, 'bn', np.arange(1.0, 11.0))

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
    bn_slices = manager.get_op_slices(built.op('bn/FusedBatchNormV3'))
    assert bn_slices == _slices(built.op('bn/FusedBatchNormV3'), [1] * 10)
    groups = [manager.get_op_group(s) for s in bn_slices]
    assert all(group is not None for group in groups)
    assert len({id(g) for g in groups}) == 10
    for i, group in enumerate(groups, 1):
      conv_slices = manager.get_op_slices(built.op(f'conv{i}/Conv2D'))
      assert manager.get_op_group(conv_slices[0]) is group

  @pytest.mark.parametrize('depth', [5, 7])
  def test_concat_with_unregularized_input(self, mode, depth):
    # conv2 filters all equal v_j: RMS over (kh, kw, C_in) = |v_j|; threshold
    # 0.5 makes them alive [T, F, T, F, F].
    filter_values = np.array([1.0, 0.2, 2.0, 0.0, 0.4], np.float32)

    def net_fn(image, var):
      with tf.name_scope('conv2'):
        kernel = var('conv2_kernel', np.tile(filter_values, [1, 1, 3, 1]))
        conv2 = tf.nn.conv2d(image, kernel, 1, 'SAME')
      constant = tf.constant(np.zeros([1, 17, 19, depth], np.float32))
      unregularized = tf.add(tf.identity(constant), 3.0)
      concat = tf.concat([unregularized, conv2], axis=3, name='concat')
      return tf.add(concat, concat, name='concat_sum')

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    handler_dict = op_handlers.get_group_lasso_op_handler_dict()
    handler_dict['Conv2D'] = conv_source_op_handler.ConvSourceOpHandler(0.5)
    manager = orm.OpRegularizerManager([built.output.op], handler_dict)
    for name in ('concat', 'concat_sum'):
      regularization, alive = built.evaluate(
          lambda name=name: _vectors(manager, built.op(name)))
      # `depth` unregularized channels (zeros, alive) then conv2's norms.
      np.testing.assert_array_equal(
          alive, [True] * depth + [True, False, True, False, False])
      np.testing.assert_allclose(
          regularization, [0.0] * depth + [1.0, 0.2, 2.0, 0.0, 0.4], rtol=1e-6)

  def test_channel_concat_and_add_of_same_inputs(self, mode):
    def net_fn(image, var):
      c1 = _relu(_batch_norm(_conv(image, var, 'c1', 10), var, 'bn1',
                             np.ones(10)), 'relu1')
      c2 = _relu(_batch_norm(_conv(image, var, 'c2', 10), var, 'bn2',
                             np.ones(10)), 'relu2')
      concat = tf.concat([c1, c2], axis=3, name='concat')
      add = tf.add(c1, c2, name='add')
      return concat, add

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    manager = orm.OpRegularizerManager(
        [t.op for t in built.outputs], _gamma_dict())
    concat = built.op('concat')
    group = manager.get_op_group(manager.get_op_slices(built.op('c1/Conv2D'))[0])
    assert group is not None
    for name in ('c2/Conv2D', 'relu1/Relu', 'relu2/Relu', 'add'):
      assert manager.get_op_group(manager.get_op_slices(built.op(name))[0]) is group
    assert _sizes(manager, concat) == [10, 10]
    assert all(manager.get_op_group(s) is group
               for s in manager.get_op_slices(concat))

  def test_axis2_concat_groups_inputs_without_slicing(self, mode):
    def net_fn(image, var):
      c1 = _relu(_batch_norm(_conv(image, var, 'c1', 5), var, 'bn1',
                             [1.0, 0.0, 2.0, 0.0, 0.0]), 'relu1')
      c2 = _relu(_batch_norm(_conv(image, var, 'c2', 5), var, 'bn2',
                             [0.0, 0.0, 0.0, 3.0, 0.0]), 'relu2')
      concat = tf.concat([c1, c2], axis=2, name='concat')
      return _relu(concat, 'relu_out')

    built = graph_modes.build(mode, net_fn, [1, 17, 19, 3])
    manager = orm.OpRegularizerManager([built.output.op], _gamma_dict())
    concat = built.op('concat')
    assert _sizes(manager, concat) == [5]
    group = manager.get_op_group(manager.get_op_slices(concat)[0])
    for name in ('c1/Conv2D', 'c2/Conv2D'):
      assert manager.get_op_group(manager.get_op_slices(built.op(name))[0]) is group
    regularization, alive = built.evaluate(lambda: _vectors(manager, concat))
    # Both BNs are sources of one group: element-wise max of |gamma| / OR.
    np.testing.assert_allclose(regularization, [1.0, 0.0, 2.0, 3.0, 0.0])
    np.testing.assert_array_equal(alive, [True, False, True, True, False])


def test_get_input_output_op_slices_is_an_overridable_method():
  # Issue 14, item 8: as in the original, a method that subclasses may
  # override; assign_grouping calls it before and after reslicing.
  calls = []

  class _RecordingConcatOpHandler(concat_op_handler.ConcatOpHandler):

    def _get_input_output_op_slices(self, input_ops, output_ops, op_reg_manager):
      calls.append(([op.name for op in input_ops], [op.name for op in output_ops]))
      return super()._get_input_output_op_slices(input_ops, output_ops, op_reg_manager)

  with tf.Graph().as_default():
    image = tf.zeros([1, 4, 4, 3])
    conv1 = tf.nn.conv2d(image, tf.ones([1, 1, 3, 2]), 1, 'SAME', name='conv1')
    conv2 = tf.nn.conv2d(image, tf.ones([1, 1, 3, 5]), 1, 'SAME', name='conv2')
    concat = tf.concat([conv1, conv2], 3, name='concat')
    relu = tf.nn.relu(concat, name='relu')
    manager = orm.OpRegularizerManager([], op_handlers.get_gamma_op_handler_dict())
    manager._dfs_for_source_ops([relu.op])  # the handlers only see crawled ops
    for op in (conv1.op, conv2.op, concat.op, relu.op):
      manager.create_op_group_for_op_slice(manager.get_op_slices(op)[0], is_source=False)
    _RecordingConcatOpHandler().assign_grouping(concat.op, manager)
    # 2 + 5 stacked channels: the concat is sliced [2, 5] and slice i groups
    # with the i-th input.
    concat_slices = manager.get_op_slices(concat.op)
    assert [s.slice.size for s in concat_slices] == [2, 5]
    assert manager.get_op_group(concat_slices[0]) is manager.get_op_group(
        manager.get_op_slices(conv1.op)[0])
    assert manager.get_op_group(concat_slices[1]) is manager.get_op_group(
        manager.get_op_slices(conv2.op)[0])
  assert calls == [(['conv1', 'conv2'], ['relu'])] * 2
