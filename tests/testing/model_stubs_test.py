"""Structure tests for the raw-op model stubs (spec 7); manager tests use them elsewhere."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm
from morph_net.framework import output_non_passthrough_op_handler
from morph_net.testing import add_concat_model_stub
from morph_net.testing import grouping_concat_model_stub
from morph_net.testing import ladder_model_stub
from morph_net.testing import op_regularizer_stub
from morph_net.testing import stub_layers
from morph_net.tools import configurable_ops
from tests import graph_modes


def _op_names(stub):
  """The op names behind the scope keys of `stub.expected_alive()`."""
  names = []
  for key in stub.expected_alive():
    names += [key] if key.startswith(('concat', 'add')) else [key + '/Conv2D', key + '/Relu']
  return names


def test_add_concat_model_ops_and_shapes(monkeypatch):
  # The raw-op build (without tf_slim): constant kernels, Conv2D -> Relu.
  monkeypatch.setattr(stub_layers, 'slim', None)
  with tf.Graph().as_default() as graph:
    output = add_concat_model_stub.build_model()
  assert output.name == 'conv5/Relu'
  # 17x19 image, 3x3 stride-2 SAME conv: ceil(17/2) x ceil(19/2) = 9 x 10, 3 filters.
  assert output.outputs[0].shape.as_list() == [1, 9, 10, 3]
  sizes = {name: graph.get_operation_by_name(name).outputs[0].shape[-1]
           for name in _op_names(add_concat_model_stub)}
  # conv1 7 + conv2 5 = 12 channels for concat, conv4 and add.
  assert sizes == {'conv1/Conv2D': 7, 'conv1/Relu': 7, 'conv2/Conv2D': 5, 'conv2/Relu': 5,
                   'conv3/Conv2D': 4, 'conv3/Relu': 4, 'conv4/Conv2D': 12, 'conv4/Relu': 12,
                   'conv5/Conv2D': 3, 'conv5/Relu': 3, 'concat': 12, 'add': 12}
  assert graph.get_operation_by_name('concat').type == 'ConcatV2'
  assert graph.get_operation_by_name('add').type == 'AddV2'


def test_add_concat_expected_values():
  reg = add_concat_model_stub.expected_regularization()
  alive = add_concat_model_stub.expected_alive()
  # max(concat(conv1, conv2), conv4), element by element.
  grouped_reg = [0.1, 0.3, 0.6, 0.37, 0.4, 0.32, 0.8, 0.22, 0.25, 0.11, 0.55, 0.45]
  # OR of [F,T,T,F,T,F,T | T,F,T,F,F] and [F,T,F,T,T,F,T,F,F,T,F,F].
  grouped_alive = [False, True, True, True, True, False, True, True, False, True, False,
                   False]
  # Keyed by scope, as the original's (not by op name).
  assert sorted(reg) == sorted(alive) == ['add', 'concat', 'conv1', 'conv2', 'conv3',
                                          'conv4', 'conv5']
  for name in ('concat', 'add', 'conv4'):
    np.testing.assert_allclose(reg[name], grouped_reg)
    np.testing.assert_array_equal(alive[name], grouped_alive)
  np.testing.assert_allclose(reg['conv1'], grouped_reg[:7])
  np.testing.assert_array_equal(alive['conv2'], grouped_alive[7:])
  np.testing.assert_allclose(reg['conv3'], [0.07, 0.27, 0.17, 0.37])
  np.testing.assert_array_equal(alive['conv5'], [False, True, False])


def test_grouping_concat_model_ops_and_values(monkeypatch):
  monkeypatch.setattr(stub_layers, 'slim', None)
  with tf.Graph().as_default() as graph:
    output = grouping_concat_model_stub.build_model()
  assert output.name == 'concat2'
  # concat1 stacks two 17-row maps on axis 1; concat2 two 19-column maps on axis 2.
  assert output.outputs[0].shape.as_list() == [1, 34, 38, 4]
  assert graph.get_operation_by_name('concat1').outputs[0].shape.as_list() == [1, 34, 19, 3]
  reg = grouping_concat_model_stub.expected_regularization()
  alive = grouping_concat_model_stub.expected_alive()
  for name in ('conv1', 'conv2', 'concat1'):
    np.testing.assert_allclose(reg[name], [0.15, 0.3, 0.6])  # max(conv1, conv2)
    np.testing.assert_array_equal(alive[name], [True, True, True])  # [F,T,T] | [T,F,T]
  for name in ('conv3', 'conv4', 'concat2'):
    np.testing.assert_allclose(reg[name], [0.07, 100.87, 0.57, 1.57])  # max(conv3, conv4)
    np.testing.assert_array_equal(alive[name], [False, True, True, True])


@pytest.mark.parametrize('stub', [add_concat_model_stub, grouping_concat_model_stub])
def test_build_with_variables_in_both_modes(mode, stub):
  built = graph_modes.build(
      mode, lambda image, var: stub.build_model(image, var).outputs[0], [1, 17, 19, 3])
  for name in _op_names(stub):
    assert built.op(name) is not None
  kernel = built.op('conv2/Conv2D').inputs[1]
  assert kernel.op.type in ('ReadVariableOp', 'Identity')


# ---- issue 14, item 6: the stubs as the original's tests use them ---------------


class _MockRegSourceOpHandler(
    output_non_passthrough_op_handler.OutputNonPassthroughOpHandler):
  """A Conv2D source whose regularizer is the `MOCK_REG_DICT` stub of its scope.

  The scope is the first component of the op name; a slice of the op gets the
  same range of the stub's values.
  """

  def __init__(self, mock_reg_dict):
    self._mock_reg_dict = mock_reg_dict

  @property
  def is_source_op(self):
    return True

  def assign_grouping(self, op, op_reg_manager):
    for op_slice in op_reg_manager.get_op_slices(op):
      if op_reg_manager.get_op_group(op_slice) is None:
        op_reg_manager.create_op_group_for_op_slice(op_slice)
    super().assign_grouping(op, op_reg_manager)

  def create_regularizer(self, op_slice):
    stub = self._mock_reg_dict[op_slice.op.name.split('/')[0]]
    begin, size = op_slice.slice
    reg, alive = stub._regularization_values, stub._alive_values
    return op_regularizer_stub.OpRegularizerStub(reg[begin:begin + size],
                                                 alive[begin:begin + size])


@pytest.fixture(params=['raw', 'slim'])
def conv_kind(request, monkeypatch):
  """'slim': tf-slim convolutions (skipped without tf_slim); 'raw': raw ops."""
  if request.param == 'slim':
    pytest.importorskip('tf_slim')
  else:
    monkeypatch.setattr(stub_layers, 'slim', None)
  return request.param


@pytest.mark.parametrize('stub', [add_concat_model_stub, grouping_concat_model_stub,
                                  ladder_model_stub])
def test_expected_vectors_keyed_by_scope_match_the_manager(conv_kind, stub):
  # The original's manager tests: group the stub model with a source handler
  # giving each conv its MOCK_REG_DICT stub, then compare the regularizer of
  # `<scope>/Conv2D` (or of the concat / add op) with expected_*()[scope].
  with tf.Graph().as_default() as graph:
    output = stub.build_model()
    handlers = op_handlers.get_gamma_op_handler_dict()
    handlers.register('Conv2D', _MockRegSourceOpHandler(stub.MOCK_REG_DICT))
    manager = orm.OpRegularizerManager([output], handlers)
    names, tensors = [], []
    for key in stub.expected_alive():
      op_name = key if key.startswith(('concat', 'add')) else key + '/Conv2D'
      if key == 'upscale':
        op_name = 'upscale/conv2d_transpose'
      regularizer = manager.get_regularizer(graph.get_operation_by_name(op_name))
      names.append(key)
      tensors.append((regularizer.regularization_vector, regularizer.alive_vector))
    with tf.compat.v1.Session() as sess:
      values = sess.run(tensors)
  for key, (reg, alive) in zip(names, values):
    np.testing.assert_allclose(reg, stub.expected_regularization()[key], err_msg=key)
    np.testing.assert_array_equal(alive, stub.expected_alive()[key], err_msg=key)


def test_mock_reg_dict_and_image_stub():
  for stub in (add_concat_model_stub, grouping_concat_model_stub):
    assert sorted(stub.MOCK_REG_DICT) == sorted(stub.REG_STUB)
    conv1 = stub.MOCK_REG_DICT['conv1']
    with tf.Graph().as_default():
      with tf.compat.v1.Session() as sess:
        reg, alive = sess.run([conv1.regularization_vector, conv1.alive_vector])
    np.testing.assert_allclose(reg, stub.REG_STUB['conv1'])
    np.testing.assert_array_equal(alive, stub.ALIVE_STUB['conv1'])
  with tf.Graph().as_default():
    image = add_concat_model_stub.image_stub()
    assert image.shape.as_list() == [1, 17, 19, 3]


def test_ladder_model_shapes(monkeypatch):
  monkeypatch.setattr(stub_layers, 'slim', None)
  with tf.Graph().as_default() as graph:
    output = ladder_model_stub.build_model()
  assert output.name == 'add3'
  # SAME 3x3 convs keep 17x19; the stride-2 transposed conv doubles it: 34x38.
  assert output.outputs[0].shape.as_list() == [1, 34, 38, 3]
  assert graph.get_operation_by_name('upscale/conv2d_transpose').type == (
      'Conv2DBackpropInput')
  assert ladder_model_stub.expected_alive()['add2'].tolist() == [False, True, True]


def test_build_model_honours_slim_arg_scope():
  slim = pytest.importorskip('tf_slim')
  # As the original's tests: an arg_scope on the layer function the stub calls
  # (here a batch norm replacing the biases; tf-slim's own batch_norm needs
  # tf_keras, so configurable_ops' slim-named one is used).
  with tf.Graph().as_default() as graph:
    with slim.arg_scope([slim.conv2d], normalizer_fn=configurable_ops.batch_norm,
                        normalizer_params={'scale': True}):
      add_concat_model_stub.build_model()
  op_names = {op.name for op in graph.get_operations()}
  for scope in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
    assert f'{scope}/BatchNorm/FusedBatchNormV3' in op_names
    assert f'{scope}/BiasAdd' not in op_names
