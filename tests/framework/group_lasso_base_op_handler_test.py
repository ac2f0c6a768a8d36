"""Tests for GroupLassoBaseSourceOpHandler subclasses written as the original allows."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from morph_net.framework import group_lasso_base_op_handler
from morph_net.framework import op_handlers
from morph_net.framework import op_regularizer_manager as orm


class _NoSuperInitConvHandler(group_lasso_base_op_handler.GroupLassoBaseSourceOpHandler):
  """Sets the two attributes create_regularizer reads, without super().__init__."""

  def __init__(self, threshold):  # pylint: disable=super-init-not-called
    self._threshold = threshold
    self._l1_fraction = 0.0

  def _reduce_dims(self, op):
    del op  # Unused.
    return (0, 1, 2)


def test_subclass_without_super_init_groups_and_regularizes():
  # Issue 14, item 8: the original's assign_grouping reads no state set in
  # __init__, so such a subclass works there.
  with tf.Graph().as_default():
    image = tf.ones([1, 4, 4, 3])
    # Output channel 0 has weights 2.0, channel 1 weights 0.5.
    kernel = tf.compat.v1.get_variable(
        'kernel', initializer=np.stack([np.full([1, 1, 3], 2.0), np.full([1, 1, 3], 0.5)],
                                       axis=-1).astype(np.float32), use_resource=True)
    conv = tf.nn.conv2d(image, kernel, 1, 'SAME', name='conv')
    relu = tf.nn.relu(conv, name='relu')
    handlers = op_handlers.get_group_lasso_op_handler_dict()
    handlers.register('Conv2D', _NoSuperInitConvHandler(threshold=1.0))
    manager = orm.OpRegularizerManager([relu.op], handlers)
    assert manager.get_op_group(manager.get_op_slices(relu.op)[0]) is manager.get_op_group(
        manager.get_op_slices(conv.op)[0])
    regularizer = manager.get_regularizer(relu.op)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      reg, alive = sess.run([regularizer.regularization_vector, regularizer.alive_vector])
  # Group lasso with l1_fraction 0: sqrt(mean over (h, w, in) of w^2) per channel:
  # sqrt(2.0^2) = 2.0 and sqrt(0.5^2) = 0.5; alive iff > threshold 1.0.
  np.testing.assert_allclose(reg, [2.0, 0.5], rtol=1e-6)
  np.testing.assert_array_equal(alive, [True, False])
