"""Structure tests for the raw-op model stubs (spec 7); manager tests use them elsewhere."""

import numpy as np
import pytest
import tensorflow as tf

from morph_net.testing import add_concat_model_stub
from morph_net.testing import grouping_concat_model_stub
from morph_net.testing import stub_layers
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
