"""Tests for ProbGatingRegularizer (spec section 2).

regularization = mask (regularize_on_mask) or sigmoid(logits); alive =
(mask or sigmoid(logits)) >= alive_threshold, inclusive. Probabilities are
written as sigmoid(l) = 1 / (1 + exp(-l)).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from morph_net.framework import lazy_evaluation
from morph_net.op_regularizers import prob_gating_regularizer
from tests import graph_modes

LOGITS = [0.0, -3.0, 3.0, -2.5]  # sigmoid: 0.5, 0.0474, 0.9526, 0.0759
MASK = [0.1, 0.5, 0.0999, 0.0]


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _vectors(reg):
  return [reg.regularization_vector, reg.alive_vector]


@pytest.mark.parametrize('regularize_on_mask, mask_as_alive_vector, expected_reg, expected_alive', [
    # Mask: [0.1, 0.5, 0.0999, 0.0] >= 0.1 (inclusive) -> T, T, F, F.
    (True, True, MASK, [True, True, False, False]),
    # The regularization is sigmoid(logits); aliveness still from the mask.
    (False, True, _sigmoid(LOGITS), [True, True, False, False]),
    # sigmoid(logits) = [0.5, 0.0474, 0.9526, 0.0759] >= 0.1 -> T, F, T, F.
    (True, False, MASK, [True, False, True, False]),
    (False, False, _sigmoid(LOGITS), [True, False, True, False]),
])
def test_vectors(mode, regularize_on_mask, mask_as_alive_vector, expected_reg,
                 expected_alive):
  def net_fn(image, var):
    return var('logits', LOGITS), var('mask', MASK)

  built = graph_modes.build(mode, net_fn, [1])
  logits, mask = built.variables['logits'], built.variables['mask']
  reg = prob_gating_regularizer.ProbGatingRegularizer(
      logits, mask, regularize_on_mask=regularize_on_mask, alive_threshold=0.1,
      mask_as_alive_vector=mask_as_alive_vector)
  reg_vector, alive = built.evaluate(lambda: _vectors(reg))
  np.testing.assert_allclose(reg_vector, expected_reg, rtol=1e-5)
  np.testing.assert_array_equal(alive, expected_alive)
  assert reg.is_probabilistic is True


def test_alive_threshold_is_inclusive():
  reg = prob_gating_regularizer.ProbGatingRegularizer(
      tf.Variable([0.0, 0.0]), tf.constant([0.25, 0.2499]), alive_threshold=0.25)
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False])


def test_probability_alive_vector():
  # sigmoid([0, -3, 3]) = [0.5, 0.047, 0.953]; >= 0.1 -> T, F, T, whatever
  # the mask says.
  reg = prob_gating_regularizer.ProbGatingRegularizer(
      tf.Variable([0.0, -3.0, 3.0]), tf.zeros([3]), mask_as_alive_vector=False)
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [True, False, True])


def test_logits_read_in_a_graph_are_converted_to_the_variable():
  graph = tf.Graph()
  with graph.as_default():
    variable = tf.compat.v1.get_variable(
        'logits', initializer=tf.constant([1.0, -1.0]), use_resource=True)
    read = tf.identity(variable.read_value())
    reg = prob_gating_regularizer.ProbGatingRegularizer(
        read, tf.constant([1.0, 0.0]), regularize_on_mask=False)
  assert reg._logits is variable


def test_gradient_of_probabilities():
  logits = tf.Variable([0.0, 1.0, -2.0])
  reg = prob_gating_regularizer.ProbGatingRegularizer(
      logits, tf.zeros([3]), regularize_on_mask=False)
  with tf.GradientTape() as tape:
    total = tf.reduce_sum(reg.regularization_vector)
  # d sigmoid(l) / dl = s * (1 - s).
  s = _sigmoid([0.0, 1.0, -2.0])
  np.testing.assert_allclose(tape.gradient(total, logits).numpy(), s * (1 - s),
                             rtol=1e-5)


def test_lazy_slices_and_callable_masks():
  logits = tf.Variable([4.0, -4.0, 0.0, 2.0])
  calls = []

  class Mask:
    shape = tf.TensorShape([4])

    def __call__(self):
      calls.append(1)
      return tf.constant([1.0, 0.0, 0.05, 0.3])

  reg = prob_gating_regularizer.ProbGatingRegularizer(
      lazy_evaluation.LazySlice(logits, 1, 2),
      lazy_evaluation.LazySlice(Mask(), 1, 2))
  assert calls == []  # Nothing is read at construction.
  np.testing.assert_allclose(reg.regularization_vector.numpy(), [0.0, 0.05])
  np.testing.assert_array_equal(reg.alive_vector.numpy(), [False, False])
  logits.assign([4.0, 3.0, 5.0, 2.0])
  reg_prob = prob_gating_regularizer.ProbGatingRegularizer(
      lazy_evaluation.LazySlice(logits, 1, 2), Mask(), regularize_on_mask=False)
  np.testing.assert_allclose(reg_prob.regularization_vector.numpy(),
                             _sigmoid([3.0, 5.0]), rtol=1e-6)


@pytest.mark.parametrize('logits, mask, match', [
    ([[1.0, 2.0]], [1.0, 2.0], 'logits tensor should be 1D.'),
    (1.0, [1.0], 'logits tensor should be 1D.'),
    ([1.0, 2.0], [[1.0, 2.0]], 'mask tensor should be 1D.'),
])
def test_rank_errors(logits, mask, match):
  with pytest.raises(ValueError, match=match):
    prob_gating_regularizer.ProbGatingRegularizer(tf.constant(logits), tf.constant(mask))


def test_callable_mask_without_shape():
  with pytest.raises(TypeError, match='mask must be a tensor, a variable'):
    prob_gating_regularizer.ProbGatingRegularizer(
        tf.Variable([1.0]), lambda: tf.constant([1.0]))
