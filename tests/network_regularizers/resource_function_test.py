"""Tests for resource_function: FLOPs, model size, activations, memory, latency.

The ops live in a tf.compat.v1 graph fed with an image of shape [1, 11, 13, 17],
either through a placeholder of shape [1, None, None, 17] (dynamic spatial dims:
coefficients are computed at run time) or through a fully static placeholder.

Shapes used below (stride 2, SAME):
  conv:  7x5 kernel, 17 -> 19 channels, output 6x7 = 42 positions, K = 35;
  tconv: 7x5 kernel, 17 -> 29 channels, output 22x26 = 572, input 11x13 = 143;
  fc:    19 -> 23;
  dw:    3x2 depthwise on a 6x7x10 map (stride 1), K = 6;
  conv3d: 2x3x3 kernel, VALID, on 4x6x7x3 -> 3x4x5x5 (60 positions), K = 18.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from morph_net.network_regularizers import resource_function as rf

# (batch_size, A_in, A_out, R_in, R_out)
GRID = [(1, 17, 19, 17.0, 19.0), (32, 4, 9, 3.0, 7.0)]


class _Net:
  """The test graph; `evaluate` runs a value (tensor or number) in a session."""

  def __init__(self, dynamic: bool, dtype=tf.float32):
    self.graph = tf.Graph()
    with self.graph.as_default():
      def placeholder(name, shape, dynamic_shape):
        return tf.compat.v1.placeholder(
            dtype, dynamic_shape if dynamic else shape, name=name)

      def weights(name, shape):
        return tf.compat.v1.get_variable(
            name, shape, dtype=dtype, use_resource=True)

      self.image = placeholder('image', [1, 11, 13, 17], [1, None, None, 17])
      self.dw_input = placeholder('dw_input', [1, 6, 7, 10], [1, None, None, 10])
      self.input3d = placeholder('input3d', [1, 4, 6, 7, 3],
                                 [1, None, None, None, 3])
      self.fc_input = tf.compat.v1.placeholder(dtype, [1, 19], name='fc_input')
      self.conv = tf.nn.conv2d(
          self.image, weights('conv_w', [7, 5, 17, 19]), strides=2,
          padding='SAME', name='conv').op
      self.conv_b = tf.nn.conv2d(
          self.image, weights('conv_b_w', [7, 5, 17, 11]), strides=2,
          padding='SAME', name='conv_b').op
      self.tconv = tf.nn.conv2d_transpose(
          self.image, weights('tconv_w', [7, 5, 29, 17]),
          output_shape=[1, 22, 26, 29], strides=2, padding='SAME',
          name='tconv').op
      self.fc = tf.matmul(self.fc_input, weights('fc_w', [19, 23]),
                          name='fc').op
      self.dw = tf.nn.depthwise_conv2d(
          self.dw_input, weights('dw_w', [3, 2, 10, 1]), [1, 1, 1, 1],
          'SAME', name='dw').op
      self.conv3d = tf.nn.conv3d(
          self.input3d, weights('conv3d_w', [2, 3, 3, 3, 5]),
          [1, 1, 1, 1, 1], 'VALID', name='conv3d').op
      self.concat = tf.concat(
          [self.conv.outputs[0], self.conv_b.outputs[0]], 3, name='concat').op
      self.relu = tf.nn.relu(self.conv.outputs[0], name='relu').op
      self.feed = {
          self.image: np.zeros([1, 11, 13, 17]),
          self.dw_input: np.zeros([1, 6, 7, 10]),
          self.input3d: np.zeros([1, 4, 6, 7, 3]),
          self.fc_input: np.zeros([1, 19]),
      }

  def evaluate(self, fn):
    """Calls fn() inside the graph and returns its value as a float."""
    with self.graph.as_default():
      value = fn()
      if not tf.is_tensor(value):
        return float(value)
      init = tf.compat.v1.global_variables_initializer()
      with tf.compat.v1.Session(graph=self.graph) as sess:
        sess.run(init)
        return float(sess.run(value, feed_dict=self.feed))


@pytest.fixture(scope='module', params=[True, False], ids=['dynamic', 'static'])
def net(request):
  return _Net(dynamic=request.param)


def _call(net, fn, op, is_regularization, params, as_tensors, **kwargs):
  """Evaluates fn(op, is_regularization, A_in, A_out, R_in, R_out, batch_size=B)."""
  batch, a_in, a_out, r_in, r_out = params

  def compute():
    values = (a_in, a_out, r_in, r_out)
    if as_tensors:
      values = tuple(tf.constant(float(v)) for v in values)
    return fn(op, is_regularization, *values, batch_size=batch, **kwargs)

  return net.evaluate(compute)


@pytest.mark.parametrize('as_tensors', [False, True], ids=['numbers', 'tensors'])
@pytest.mark.parametrize('params', GRID)
class TestBilinearFunctions:

  def test_conv(self, net, params, as_tensors):
    b, a_in, a_out, r_in, r_out = params
    call = lambda fn, is_reg: _call(net, fn, net.conv, is_reg, params, as_tensors)
    # 2 * B * H_out * W_out * kh * kw * A_in * A_out = 2 * B * 42 * 35 * ...
    assert call(rf.flop_function, False) == pytest.approx(2 * b * 42 * 35 * a_in * a_out)
    assert call(rf.flop_function, True) == pytest.approx(
        2 * b * 42 * 35 * (a_in * r_out + a_out * r_in))
    # Input 11*13 = 143 per channel, weights 7*5 = 35, output 6*7 = 42; float32.
    assert call(rf.memory_function, False) == pytest.approx(
        (b * 143 * a_in + 35 * a_in * a_out + b * 42 * a_out) * 4)
    assert call(rf.memory_function, True) == pytest.approx(
        (b * 143 * r_in + 35 * (a_in * r_out + a_out * r_in) + b * 42 * r_out) * 4)
    # The model size ignores the batch size.
    assert call(rf.model_size_function, False) == pytest.approx(35 * a_in * a_out)
    assert call(rf.model_size_function, True) == pytest.approx(
        35 * (a_in * r_out + a_out * r_in))
    assert call(rf.activation_count_function, False) == pytest.approx(a_out)
    assert call(rf.activation_count_function, True) == pytest.approx(r_out)

  def test_conv2d_transpose(self, net, params, as_tensors):
    b, a_in, a_out, r_in, r_out = params
    call = lambda fn, is_reg: _call(net, fn, net.tconv, is_reg, params, as_tensors)
    # Costed like the forward conv mapping 22x26 back to 11x13: 2 * B * 143 * 35.
    assert call(rf.flop_function, False) == pytest.approx(2 * b * 143 * 35 * a_in * a_out)
    assert call(rf.flop_function, True) == pytest.approx(
        2 * b * 143 * 35 * (a_in * r_out + a_out * r_in))
    # Input (inputs[2]) 143, weights 35, output 22*26 = 572; the output-shape
    # vector (inputs[0]) is not counted.
    assert call(rf.memory_function, False) == pytest.approx(
        (b * 143 * a_in + 35 * a_in * a_out + b * 572 * a_out) * 4)
    assert call(rf.memory_function, True) == pytest.approx(
        (b * 143 * r_in + 35 * (a_in * r_out + a_out * r_in) + b * 572 * r_out) * 4)
    assert call(rf.model_size_function, False) == pytest.approx(35 * a_in * a_out)

  def test_matmul(self, net, params, as_tensors):
    b, a_in, a_out, r_in, r_out = params
    call = lambda fn, is_reg: _call(net, fn, net.fc, is_reg, params, as_tensors)
    assert call(rf.flop_function, False) == pytest.approx(2 * b * a_in * a_out)
    assert call(rf.flop_function, True) == pytest.approx(
        2 * b * (a_in * r_out + a_out * r_in))
    # [1, 19] input and [1, 23] output have no spatial dims (empty product 1).
    assert call(rf.memory_function, False) == pytest.approx(
        (b * a_in + a_in * a_out + b * a_out) * 4)
    assert call(rf.memory_function, True) == pytest.approx(
        (b * r_in + (a_in * r_out + a_out * r_in) + b * r_out) * 4)
    assert call(rf.model_size_function, False) == pytest.approx(a_in * a_out)
    assert call(rf.model_size_function, True) == pytest.approx(
        a_in * r_out + a_out * r_in)
    assert call(rf.activation_count_function, False) == pytest.approx(a_out)

  def test_depthwise(self, net, params, as_tensors):
    b, a_in, a_out, r_in, r_out = params
    call = lambda fn, is_reg: _call(net, fn, net.dw, is_reg, params, as_tensors)
    # 2 * B * 42 positions * (3*2) kernel, once per output channel.
    assert call(rf.flop_function, False) == pytest.approx(2 * b * 42 * 6 * a_out)
    assert call(rf.flop_function, True) == pytest.approx(2 * b * 42 * 6 * (r_in + r_out))
    assert call(rf.model_size_function, False) == pytest.approx(6 * a_out)
    assert call(rf.model_size_function, True) == pytest.approx(6 * (r_in + r_out))
    # Memory treats the [3, 2, 10, 1] weights bilinearly (as the original).
    assert call(rf.memory_function, False) == pytest.approx(
        (b * 42 * a_in + 6 * a_in * a_out + b * 42 * a_out) * 4)

  def test_conv3d(self, net, params, as_tensors):
    b, a_in, a_out, r_in, r_out = params
    call = lambda fn, is_reg: _call(net, fn, net.conv3d, is_reg, params, as_tensors)
    # Output 3*4*5 = 60 positions, kernel 2*3*3 = 18.
    assert call(rf.flop_function, False) == pytest.approx(2 * b * 60 * 18 * a_in * a_out)
    assert call(rf.model_size_function, True) == pytest.approx(
        18 * (a_in * r_out + a_out * r_in))
    # Conv3D weights are not in WEIGHTS_INDEX_DICT: counted as an input tensor
    # with payload dims[1:-1] = 3*3*3 = 27. Input 4*6*7 = 168, output 60.
    assert call(rf.memory_function, False) == pytest.approx(
        (b * 168 * a_in + b * 27 * a_in + b * 60 * a_out) * 4)

  def test_concat(self, net, params, as_tensors):
    b, a3, a4, _, _ = params
    concat_params = (b, a3 + a4, a3 + a4, 0.0, 0.0)
    call = lambda fn: _call(net, fn, net.concat, False, concat_params, as_tensors)
    assert call(rf.flop_function) == 0
    assert call(rf.model_size_function) == 0
    assert call(rf.activation_count_function) == 0
    # The inputs are replaced by the output: 6*7 positions counted twice.
    assert call(rf.memory_function) == pytest.approx(
        (b * 42 * a3 + b * 42 * a4 + b * 42 * (a3 + a4)) * 4)

  @pytest.mark.parametrize('peak, bandwidth', [(1, 1), (1000, 2000), (1000, 20)])
  def test_latency(self, net, params, as_tensors, peak, bandwidth):
    b, a_in, a_out, r_in, r_out = params
    flop_cost = 2 * b * 42 * 35 * a_in * a_out
    flop_reg = 2 * b * 42 * 35 * (a_in * r_out + a_out * r_in)
    memory_cost = (b * 143 * a_in + 35 * a_in * a_out + b * 42 * a_out) * 4
    memory_reg = (b * 143 * r_in + 35 * (a_in * r_out + a_out * r_in) + b * 42 * r_out) * 4
    compute_time = flop_cost / peak
    memory_time = memory_cost / bandwidth
    expected_reg = (memory_reg / bandwidth if memory_time > compute_time
                    else flop_reg / peak)
    call = lambda is_reg: _call(
        net, rf.latency_function, net.conv, is_reg, params, as_tensors,
        peak_compute=peak, memory_bandwidth=bandwidth)
    assert call(False) == pytest.approx(max(compute_time, memory_time), rel=1e-5)
    assert call(True) == pytest.approx(expected_reg, rel=1e-5)


def test_latency_grid_exercises_both_resources():
  # B=1, A_in=17, A_out=19: FLOPs 2*42*35*17*19 = 949620, bytes
  # (143*17 + 35*17*19 + 42*19)*4 = 58136. (1000, 2000): 949.6 > 29.1, compute
  # bound; (1000, 20): 949.6 < 2906.8, memory bound.
  net = _Net(dynamic=False)
  compute_bound = rf.latency_function(net.conv, True, 17, 19, 17.0, 19.0, 1000, 2000)
  memory_bound = rf.latency_function(net.conv, True, 17, 19, 17.0, 19.0, 1000, 20)
  # Regularization: 2*42*35*(17*19 + 19*17)/1000 and
  # (143*17 + 35*(17*19 + 19*17) + 42*19)*4/20.
  assert compute_bound == pytest.approx(2 * 42 * 35 * 646 / 1000)
  assert memory_bound == pytest.approx((143 * 17 + 35 * 646 + 42 * 19) * 4 / 20)


def test_latency_of_non_flop_op_is_memory_only():
  net = _Net(dynamic=False)
  # Relu on the 6x7x19 conv output: input and output 42 positions each.
  cost = rf.latency_function(net.relu, False, 19, 19, 0.0, 0.0, 1, 1000)
  assert cost == pytest.approx((42 * 19 + 42 * 19) * 4 / 1000)
  assert rf.flop_function(net.relu, False, 19, 19, 0.0, 0.0) == 0
  assert rf.activation_count_function(net.relu, False, 19, 19, 0.0, 0.0) == 0


def test_latency_function_factory_binds_hardware_and_batch_size():
  net = _Net(dynamic=False)
  fn = rf.latency_function_factory('P100', 2)
  expected = rf.latency_function(net.conv, False, 17, 19, 0.0, 0.0, 9300, 732,
                                 batch_size=2)
  assert fn(net.conv, False, 17, 19, 0.0, 0.0) == expected
  # Compute bound: B * coeff * A_in * A_out / 9300 with B = 2 and
  # coeff = 2 * 42 * 35 (vs memory (2*143*17 + 35*17*19 + 2*42*19)*4/732).
  assert fn(net.conv, False, 17, 19, 0.0, 0.0) == pytest.approx(
      2 * (2 * 42 * 35) * 17 * 19 / 9300)


@pytest.mark.parametrize('hardware, batch_size', [('apple', 66), (None, 11)])
def test_latency_function_factory_rejects_unknown_hardware(hardware, batch_size):
  with pytest.raises(ValueError, match=r"Hardware .* must be in \['K80', 'P4'"):
    rf.latency_function_factory(hardware, batch_size)


@pytest.mark.parametrize('batch_size', [0, -3])
def test_latency_function_factory_rejects_non_positive_batch_size(batch_size):
  with pytest.raises(ValueError, match=f'Received: batch_size={batch_size}'):
    rf.latency_function_factory('V100', batch_size)


def test_hardware_tables():
  assert rf.PEAK_COMPUTE == {
      'K80': 8740, 'P4': 5500, 'T4': 8100, 'P100': 9300, 'V100': 125000,
      'TPUv2': 22500, 'FLOP_LATENCY': 1, 'MEMORY_LATENCY': 1e20}
  assert rf.MEMORY_BANDWIDTH == {
      'K80': 480, 'P4': 192, 'T4': 300, 'P100': 732, 'V100': 900,
      'TPUv2': 300, 'FLOP_LATENCY': 1e20, 'MEMORY_LATENCY': 1}


def _tf_flops(graph, op):
  """TensorFlow's own FLOP statistic of `op` (needs static shapes)."""
  return tf_ops.get_stats_for_node_def(graph, op.node_def, 'flops').value


def test_flop_coeff_matches_tensorflow_statistics():
  net = _Net(dynamic=False)
  g = net.graph
  # TF counts FLOPs of the whole op; MorphNet's coefficient is per pair of
  # (input, output) channels (per channel for depthwise convolutions).
  assert rf.flop_coeff(net.conv) == _tf_flops(g, net.conv) / (17 * 19)
  assert rf.flop_coeff(net.tconv) == _tf_flops(g, net.tconv) / (17 * 29)
  assert rf.flop_coeff(net.fc) == _tf_flops(g, net.fc) / (19 * 23)
  assert rf.flop_coeff(net.dw) == _tf_flops(g, net.dw) / 10
  assert rf.flop_coeff(net.conv3d) == _tf_flops(g, net.conv3d) / (3 * 5)
  # And the hand formulas: 2*42*35, 2*143*35, 2, 2*42*6, 2*60*18.
  assert rf.flop_coeff(net.conv) == 2940
  assert rf.flop_coeff(net.tconv) == 2 * 143 * 35
  assert rf.flop_coeff(net.fc) == 2.0
  assert rf.flop_coeff(net.dw) == 2 * 42 * 6
  assert rf.flop_coeff(net.conv3d) == 2 * 60 * 18
  assert rf.flop_coeff(net.relu) == 0.0


def test_flop_coeff_with_unknown_spatial_dims_is_computed_at_run_time():
  net = _Net(dynamic=True)
  with net.graph.as_default():
    coeff = rf.flop_coeff(net.conv)
  assert tf.is_tensor(coeff)
  assert net.evaluate(lambda: coeff) == 2940  # 2 * 6*7 * 7*5


def test_dynamic_shape_cannot_be_read_outside_its_graph():
  net = _Net(dynamic=True)
  with pytest.raises(ValueError, match="Received: tensor 'conv:0'.*read eagerly"):
    rf.flop_coeff(net.conv)


def test_num_weights_coeff():
  net = _Net(dynamic=True)
  assert rf.num_weights_coeff(net.conv) == 35  # 7*5
  assert rf.num_weights_coeff(net.tconv) == 35
  assert rf.num_weights_coeff(net.dw) == 6  # 3*2
  assert rf.num_weights_coeff(net.conv3d) == 18  # 2*3*3
  assert rf.num_weights_coeff(net.fc) == 1.0
  assert rf.num_weights_coeff(net.relu) == 0.0


def test_is_flop_op():
  net = _Net(dynamic=False)
  assert all(rf.is_flop_op(op) for op in
             (net.conv, net.tconv, net.fc, net.dw, net.conv3d))
  assert not rf.is_flop_op(net.relu)
  assert not rf.is_flop_op(net.concat)
  with pytest.raises(ValueError, match='conv_op must be a tf.Operation, not .*Tensor'):
    rf.is_flop_op(net.conv.outputs[0])


def test_memory_uses_dtype_byte_size():
  net = _Net(dynamic=False, dtype=tf.float16)
  # As the float32 conv, with 2 bytes per value: (143*17 + 35*17*19 + 42*19)*2.
  assert rf.memory_function(net.conv, False, 17, 19, 0.0, 0.0) == (
      (143 * 17 + 35 * 17 * 19 + 42 * 19) * 2)


def test_bilinear_helpers():
  net = _Net(dynamic=False)
  # coeff * B * A_in * A_out and coeff * B * (A_in * R_out + A_out * R_in).
  assert rf._calculate_bilinear_cost(net.conv, 3.0, 4, 5, 2) == 3 * 2 * 4 * 5
  assert rf._calculate_bilinear_regularization(
      net.conv, 3.0, 4, 5, 0.5, 0.25, 2) == 3 * 2 * (4 * 0.25 + 5 * 0.5)
  # Depthwise: coeff * B * A_out and coeff * B * (R_in + R_out).
  assert rf._calculate_bilinear_cost(net.dw, 3.0, 4, 5, 2) == 3 * 2 * 5
  assert rf._calculate_bilinear_regularization(
      net.dw, 3.0, 4, 5, 0.5, 0.25, 2) == 3 * 2 * 0.75


def test_flop_coeff_of_dilated_conv_uses_the_batch_to_space_output():
  # tf.nn.conv2d with dilations lowers to SpaceToBatchND -> Conv2D ->
  # BatchToSpaceND. The layer computes 11 x 13 output positions (SAME), so the
  # coefficient is 2 * S_out * K = 2 * (11 * 13) * (3 * 3) = 2574.
  graph = tf.Graph()
  with graph.as_default():
    image = tf.zeros([1, 11, 13, 4])
    kernel = tf.zeros([3, 3, 4, 6])
    out = tf.nn.atrous_conv2d(image, kernel, rate=2, padding='SAME')
    conv = [op for op in graph.get_operations() if op.type == 'Conv2D'][0]
    assert conv.inputs[0].op.type == 'SpaceToBatchND'
    assert out.shape.as_list() == [1, 11, 13, 6]
    assert rf.flop_coeff(conv) == 2 * 11 * 13 * 3 * 3


def test_memory_and_latency_are_tensors_in_a_v1_graph_with_static_shapes():
  # Issue 14, item 2: the original's callers `sess.run` these results, so in
  # a graph they are tensors even when every shape (and count) is static.
  with tf.Graph().as_default() as graph:
    image = tf.zeros([1, 11, 13, 17])
    conv = tf.nn.conv2d(image, tf.ones([7, 5, 17, 19]), 2, 'SAME')
    memory = rf.memory_function(conv.op, False, 17, 19, 17.0, 19.0)
    latency_cost = rf.latency_function(conv.op, False, 17, 19, 17.0, 19.0, 1000, 20)
    latency_reg = rf.latency_function(conv.op, True, 4, 9, 3.0, 7.0, 1000, 20)
    for result in (memory, latency_cost, latency_reg):
      assert isinstance(result, tf.Tensor) and result.dtype == tf.float32
      assert result.graph is graph
    with tf.compat.v1.Session() as sess:
      values = sess.run([memory, latency_cost, latency_reg])
  # Memory: (B*11*13*A_in + 7*5*A_in*A_out + B*6*7*A_out) * 4 bytes
  #       = (143*17 + 35*17*19 + 42*19) * 4 = 58136.
  np.testing.assert_allclose(values[0], (143 * 17 + 35 * 17 * 19 + 42 * 19) * 4)
  # Latency: max(FLOPs / 1000, bytes / 20) = max(2*42*35*17*19 / 1000, 58136 / 20).
  np.testing.assert_allclose(values[1], max(2 * 42 * 35 * 17 * 19 / 1000, 58136 / 20),
                             rtol=1e-6)
  # A_in=4, A_out=9: memory (143*4 + 35*36 + 42*9)*4/20 = 442 beats FLOPs
  # 2*42*35*36/1000 = 105.84, so the term is the memory one:
  # (143*R_in + 35*(A_in*R_out + A_out*R_in) + 42*R_out) * 4 / 20.
  np.testing.assert_allclose(
      values[2], (143 * 3 + 35 * (4 * 7 + 9 * 3) + 42 * 7) * 4 / 20, rtol=1e-6)


def test_memory_stays_a_number_eagerly_with_static_shapes():
  # Eagerly (e.g. a Keras cost read) values stay Python numbers.
  graph = tf.Graph()
  with graph.as_default():
    conv = tf.nn.conv2d(tf.zeros([1, 11, 13, 17]), tf.ones([7, 5, 17, 19]), 2, 'SAME')
  memory = rf.memory_function(conv.op, False, 17, 19, 17.0, 19.0)
  assert memory == (143 * 17 + 35 * 17 * 19 + 42 * 19) * 4
