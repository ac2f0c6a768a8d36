"""Tests for tpu_util (spec 8.2): mapping graph tensors back to variables."""

import pytest
import tensorflow as tf

from morph_net.framework import tpu_util
from tests import graph_modes


def _bn_net(extra_identity):
  def net(image, var):
    with tf.name_scope('bn'):
      gamma = var('gamma', [1.0, 2.0, 3.0])
      if extra_identity:
        gamma = tf.identity(gamma)
      return tf.compat.v1.nn.fused_batch_norm(
          image, gamma, var('beta', [0.0] * 3), is_training=True)[0]
  return net


@pytest.fixture(autouse=True)
def _clean_var_store():
  tpu_util.var_store.clear()
  yield
  tpu_util.var_store.clear()


@pytest.mark.parametrize('extra_identity', [False, True])
def test_resource_gamma_read_converts_to_the_variable(mode, extra_identity):
  built = graph_modes.build(mode, _bn_net(extra_identity), [1, 2, 2, 3])
  gamma_tensor = built.op('bn/FusedBatchNormV3').inputs[1]
  read = gamma_tensor
  while read.op.type == 'Identity':
    read = read.op.inputs[0]
  assert read.op.type == 'ReadVariableOp'
  variable = tpu_util.maybe_convert_to_variable(gamma_tensor)
  assert variable is built.variables['gamma']
  if mode == graph_modes.GRAPH:
    # Same underlying resource handle op.
    assert variable.handle.op is read.op.inputs[0].op


def test_non_resource_gamma_is_unchanged():
  with tf.Graph().as_default():
    gamma = tf.compat.v1.get_variable(
        'gamma', initializer=tf.ones([3]), use_resource=False)
    bn = tf.compat.v1.nn.fused_batch_norm(
        tf.zeros([1, 2, 2, 3]), gamma, tf.zeros([3]), is_training=True)[0]
    gamma_tensor = bn.op.inputs[1]
    assert tpu_util.maybe_convert_to_variable(gamma_tensor) is gamma_tensor


def test_non_read_tensor_and_non_tensors_are_unchanged(mode):
  def net(image, var):
    del var
    return tf.nn.relu(image)

  built = graph_modes.build(mode, net, [1, 2])
  assert tpu_util.maybe_convert_to_variable(built.output) is built.output
  variable = tf.Variable([1.0])
  assert tpu_util.maybe_convert_to_variable(variable) is variable
  assert tpu_util.maybe_convert_to_variable(None) is None


def test_get_variable_name():
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable(
        'scope_var', initializer=tf.ones([2]), use_resource=True)
    read = tf.identity(variable).op.inputs[0].op
    assert read.type == 'ReadVariableOp'
    assert tpu_util.get_variable_name(read) == 'scope_var'


def test_write_to_variable_fail_if_exists():
  with tf.Graph().as_default():
    tensor = tf.constant([1.0, 2.0], name='mask')
    tpu_util.write_to_variable(tensor, fail_if_exists=True)
    with pytest.raises(ValueError):
      tpu_util.write_to_variable(tensor, fail_if_exists=True)


def test_write_to_variable_reuses_the_variable():
  with tf.Graph().as_default():
    tensor = tf.constant([1.0, 2.0], name='mask')
    first = tpu_util.write_to_variable(tensor, fail_if_exists=False)
    second = tpu_util.write_to_variable(tensor, fail_if_exists=False)
    assert tpu_util.var_store[first] is tpu_util.var_store[second]
    assert tpu_util.var_store[first].name == 'tpu_util__mask:0'
    assert tpu_util.is_intermediate_var(tpu_util.var_store[first])
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(first)  # runs the assign through the control dependency
      assert sess.run(tpu_util.var_store[first]).tolist() == [1.0, 2.0]


def test_write_to_variable_rejects_a_variable():
  with pytest.raises(ValueError, match='Expected tf.Tensor but got'):
    tpu_util.write_to_variable(tf.Variable([1.0]))


def test_run_on_cpu_reads_the_stored_variable():
  with tf.Graph().as_default():
    tensor = tf.constant([1.0], name='t')
    result = tpu_util.write_to_variable(tensor)
    assert not tpu_util.is_on_cpu()
    assert tpu_util.read_from_variable(result) is result
    with tpu_util.run_on_cpu():
      assert tpu_util.is_on_cpu()
      assert tpu_util.read_from_variable(result) is tpu_util.var_store[result]
      assert tpu_util.maybe_convert_to_variable(result) is tpu_util.var_store[result]
    assert not tpu_util.is_on_cpu()


def test_write_to_variable_fail_if_exists_inside_a_reuse_scope():
  # Issue 14, item 3: the variable lives at the root variable scope, whose
  # reuse flag (False) applies even inside variable_scope('', reuse=True):
  # the original entered the root VariableScope object, not the string ''.
  with tf.Graph().as_default():
    tensor = tf.constant([1.0, 2.0], name='mask')
    with tf.compat.v1.variable_scope('outer'):
      first = tpu_util.write_to_variable(tensor, fail_if_exists=True)
    # Top level: the enclosing 'outer' scope does not prefix the name.
    assert tpu_util.var_store[first].name == 'tpu_util__mask:0'
    with tf.compat.v1.variable_scope('', reuse=True):
      with pytest.raises(ValueError, match='tpu_util__mask already exists'):
        tpu_util.write_to_variable(tensor, fail_if_exists=True)
      second = tpu_util.write_to_variable(tensor, fail_if_exists=False)
    assert tpu_util.var_store[second] is tpu_util.var_store[first]
