"""Tests for ProbabilisticGroupingRegularizer (spec 1.8 and 8.2).

Expected values by hand, with the spec's vectors:
r1 = [0.1, 0.3, 0.6, 0.2], r2 = [0.2, 0.4, 0.5, 0.1], r3 = [0.3, 0.2, 0.0, 0.25]
1 - (1 - r1)(1 - r2)(1 - r3):
  1 - 0.9 * 0.8 * 0.7  = 0.496
  1 - 0.7 * 0.6 * 0.8  = 0.664
  1 - 0.4 * 0.5 * 1.0  = 0.8
  1 - 0.8 * 0.9 * 0.75 = 0.46
alive = OR of [F,T,T,F], [F,T,F,T], [F,T,F,T] = [F,T,T,T].
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import probabilistic_grouping_regularizer as pgr
from morph_net.testing import op_regularizer_stub


class _ProbabilisticStub(op_regularizer_stub.OpRegularizerStub):
  is_probabilistic = True


R1 = _ProbabilisticStub([0.1, 0.3, 0.6, 0.2], [False, True, True, False])
R2 = _ProbabilisticStub([0.2, 0.4, 0.5, 0.1], [False, True, False, True])
R3 = _ProbabilisticStub([0.3, 0.2, 0.0, 0.25], [False, True, False, True])
EXPECTED_REG = [0.496, 0.664, 0.8, 0.46]
EXPECTED_ALIVE = [False, True, True, True]


def test_grouping_of_three():
  group = pgr.ProbabilisticGroupingRegularizer([R1, R2, R3])
  np.testing.assert_allclose(group.regularization_vector.numpy(), EXPECTED_REG,
                             rtol=1e-6)
  np.testing.assert_array_equal(group.alive_vector.numpy(), EXPECTED_ALIVE)
  assert group.is_probabilistic is True


@pytest.mark.parametrize('nesting', [
    lambda: pgr.ProbabilisticGroupingRegularizer(
        [pgr.ProbabilisticGroupingRegularizer([R1, R2]), R3]),
    lambda: pgr.ProbabilisticGroupingRegularizer(
        [R1, pgr.ProbabilisticGroupingRegularizer([R3, R2])]),
])
def test_nesting_order_does_not_matter(nesting):
  group = nesting()
  np.testing.assert_allclose(group.regularization_vector.numpy(), EXPECTED_REG,
                             rtol=1e-6)
  np.testing.assert_array_equal(group.alive_vector.numpy(), EXPECTED_ALIVE)


def test_cached_per_graph():
  group = pgr.ProbabilisticGroupingRegularizer([R1, R2])
  graph = tf.Graph()
  with graph.as_default():
    first = group.regularization_vector
    assert group.regularization_vector is first
    assert group.alive_vector is group.alive_vector
    with tf.compat.v1.Session() as sess:
      value = sess.run(first)
  # 1 - (1 - r1)(1 - r2) = 1 - [0.72, 0.42, 0.2, 0.72].
  np.testing.assert_allclose(value, [0.28, 0.58, 0.8, 0.28], rtol=1e-6)


def test_needs_two_regularizers():
  with pytest.raises(ValueError, match='Groups must be of at least size 2.'):
    pgr.ProbabilisticGroupingRegularizer([R1])


def test_members_must_be_probabilistic():
  plain = op_regularizer_stub.OpRegularizerStub([0.1] * 4, [True] * 4)
  with pytest.raises(ValueError, match='Regularizer is not probabilistic.'):
    pgr.ProbabilisticGroupingRegularizer([R1, plain])
