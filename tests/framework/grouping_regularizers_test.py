"""Tests for MaxGroupingRegularizer, L2GroupingRegularizer and lazy_square (spec 8.2)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import grouping_regularizers
from morph_net.op_regularizers import group_lasso_regularizer
from morph_net.testing import op_regularizer_stub

CONTEXTS = ('graph', 'eager', 'function')

R1, A1 = [0.1, 0.3, 0.6, 0.2], [False, True, True, False]
R2, A2 = [0.2, 0.4, 0.5, 0.1], [False, True, False, True]
R3, A3 = [0.3, 0.2, 0.0, 0.25], [False, True, False, True]
# sqrt(r1^2 + r2^2 + r3^2) per channel:
# sqrt(.01+.04+.09), sqrt(.09+.16+.04), sqrt(.36+.25+0), sqrt(.04+.01+.0625).
EXPECTED_L2 = [math.sqrt(0.14), math.sqrt(0.29), math.sqrt(0.61), math.sqrt(0.1125)]


def _evaluate_in(context, fn):
  """Runs `fn` in a fresh TF1 graph + session, eagerly, or in a tf.function."""
  if context == 'graph':
    with tf.Graph().as_default():
      tensors = fn()
      with tf.compat.v1.Session() as sess:
        return sess.run(tensors)
  if context == 'function':
    fn = tf.function(fn)
  return tf.nest.map_structure(lambda t: t.numpy(), fn())


def _stubs():
  return [op_regularizer_stub.OpRegularizerStub(r, a)
          for r, a in ((R1, A1), (R2, A2), (R3, A3))]


def _vectors(reg):
  return lambda: (reg.regularization_vector, reg.alive_vector)


def test_max_grouping_in_every_context():
  reg = grouping_regularizers.MaxGroupingRegularizer(_stubs())
  for context in CONTEXTS:  # The same object serves every context.
    reg_vector, alive = _evaluate_in(context, _vectors(reg))
    np.testing.assert_allclose(reg_vector, [0.3, 0.4, 0.6, 0.25])  # max of r1, r2, r3
    np.testing.assert_array_equal(alive, [False, True, True, True])  # a1 | a2 | a3


@pytest.mark.parametrize('threshold, expected_alive', [
    (0.25, [True, True, True, True]),  # every norm > 0.25 (smallest 0.335)
    (0.5, [False, True, True, False]),  # 0.374 and 0.335 are below 0.5
])
def test_l2_grouping_in_every_context(threshold, expected_alive):
  reg = grouping_regularizers.L2GroupingRegularizer(_stubs(), threshold)
  for context in CONTEXTS:
    reg_vector, alive = _evaluate_in(context, _vectors(reg))
    np.testing.assert_allclose(reg_vector, EXPECTED_L2, rtol=1e-6)
    np.testing.assert_array_equal(alive, expected_alive)


def test_l2_default_threshold_is_strict_at_0_01():
  assert grouping_regularizers.DEFAULT_THRESHOLD == 0.01
  # Norms sqrt(0.006^2 + 0.008^2) = 0.01 (not > 0.01) and sqrt(0 + 0.02^2) = 0.02.
  reg = grouping_regularizers.L2GroupingRegularizer([
      op_regularizer_stub.OpRegularizerStub([0.006, 0.0], [True, True]),
      op_regularizer_stub.OpRegularizerStub([0.008, 0.02], [True, True]),
  ])
  reg_vector, alive = _evaluate_in('eager', _vectors(reg))
  np.testing.assert_allclose(reg_vector, [0.01, 0.02], rtol=1e-6)
  np.testing.assert_array_equal(alive, [False, True])


@pytest.mark.parametrize('context', CONTEXTS)
@pytest.mark.parametrize('group_cls', [grouping_regularizers.MaxGroupingRegularizer,
                                       grouping_regularizers.L2GroupingRegularizer])
def test_results_independent_of_nesting_order(context, group_cls):
  s1, s2, s3 = _stubs()
  flat = group_cls([s1, s2, s3])
  left = group_cls([group_cls([s1, s2]), s3])
  right = group_cls([s1, group_cls([s3, s2])])
  flat_values = _evaluate_in(context, _vectors(flat))
  for nested in (left, right):
    reg_vector, alive = _evaluate_in(context, _vectors(nested))
    np.testing.assert_allclose(reg_vector, flat_values[0], rtol=1e-6)
    np.testing.assert_array_equal(alive, flat_values[1])


@pytest.mark.parametrize('group_cls', [grouping_regularizers.MaxGroupingRegularizer,
                                       grouping_regularizers.L2GroupingRegularizer])
@pytest.mark.parametrize('count', [0, 1])
def test_groups_need_two_members(group_cls, count):
  with pytest.raises(ValueError, match=r'Groups must be of at least size 2\. '
                     rf'Received: {count} regularizer'):
    group_cls(_stubs()[:count])


def test_graph_mode_returns_the_same_tensors():
  reg = grouping_regularizers.L2GroupingRegularizer(_stubs())
  with tf.Graph().as_default():
    assert reg.regularization_vector is reg.regularization_vector
    assert reg.alive_vector is reg.alive_vector


def test_lazy_square_of_sqrt_in_a_graph_is_the_radicand():
  with tf.Graph().as_default():
    radicand = tf.constant([4.0, 9.0])
    assert grouping_regularizers.lazy_square(tf.sqrt(radicand)) is radicand
    plain = tf.constant([2.0, 3.0])
    squared = grouping_regularizers.lazy_square(plain)
    assert squared.op.type == 'Square'
    with tf.compat.v1.Session() as sess:
      np.testing.assert_allclose(sess.run(squared), [4.0, 9.0])


def test_lazy_square_in_a_tf_function_and_eagerly():
  @tf.function
  def radicand_ops():
    radicand = tf.constant([4.0, 9.0]) + 0.0
    result = grouping_regularizers.lazy_square(tf.sqrt(radicand))
    return tf.constant(result is radicand), result

  is_radicand, value = radicand_ops()
  assert is_radicand.numpy()
  np.testing.assert_allclose(value.numpy(), [4.0, 9.0])
  np.testing.assert_allclose(
      grouping_regularizers.lazy_square(tf.sqrt(tf.constant([4.0, 9.0]))).numpy(),
      [4.0, 9.0], rtol=1e-6)


def test_l2_grouping_of_group_lasso_in_a_graph_skips_the_sqrt():
  # Group lasso norms are RMS values sqrt(mean(w^2)); L2 grouping of two of them
  # in a TF1 graph squares them lazily: sqrt(mean(w1^2) + mean(w2^2)).
  with tf.Graph().as_default():
    w1 = tf.constant([[3.0], [4.0]])  # mean(w1^2) = (9 + 16) / 2 = 12.5
    w2 = tf.constant([[1.0], [1.0]])  # mean(w2^2) = 1
    members = [group_lasso_regularizer.GroupLassoRegularizer(w, (0,), 0.1)
               for w in (w1, w2)]
    grouped = grouping_regularizers.L2GroupingRegularizer(members)
    vector = grouped.regularization_vector
    op_types = [op.type for op in tf.compat.v1.get_default_graph().get_operations()]
    assert op_types.count('Sqrt') == 3  # two member RMS norms + the group norm
    assert op_types.count('Square') == 2  # w1^2 and w2^2 only: the RMS is not squared
    with tf.compat.v1.Session() as sess:
      np.testing.assert_allclose(sess.run(vector), [math.sqrt(13.5)], rtol=1e-6)
