"""Tests for hardware descriptions: register, save/load, validate, and the costs.

Tiny network for the hand-computed costs (float32, batch 1, 8x8 image, SAME):
image [1,8,8,3] -> depthwise 3x3 (3 channels) -> conv 3x3, 3->4 -> fused BN -> ReLU.
* depthwise: FLOPs = 2 * 64 * 9 * 3 = 3456; bytes = (64*3 [in] + 9*3*3
  [weights, bilinear A_in*A_out] + 64*3 [out]) * 4 = 1860.
* conv: FLOPs = 2 * 64 * 9 * 3 * 4 = 13824; bytes = (64*3 + 9*3*4 + 64*4) * 4 = 2224.
* fused BN and ReLU: bytes = (64*4 + 64*4) * 4 = 2048 each, no FLOPs.
Latency (ns) = max(FLOPs / (peak * efficiency[op type]), bytes / bandwidth).
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.network_regularizers import hardware
from morph_net.network_regularizers import latency_regularizer
from morph_net.network_regularizers import resource_function as rf
from tests import graph_modes
from tests.network_regularizers.logistic_sigmoid_regularizer_test import (
    FLOP_COSTS, IMAGE_SHAPE, _outputs, gated_four_conv_net)

TINY_IMAGE = [1, 8, 8, 3]
DATASHEET = {'K80': (8740, 480), 'P4': (5500, 192), 'T4': (8100, 300),
             'P100': (9300, 732), 'V100': (125000, 900), 'TPUv2': (22500, 300)}


@pytest.fixture(autouse=True)
def _clean_registry():
  before = set(hardware._REGISTRY)
  yield
  for name in set(hardware._REGISTRY) - before:
    hardware.unregister(name)


def tiny_net(image, var):
  dw = tf.nn.depthwise_conv2d(image, var('dw/kernel', np.ones([3, 3, 3, 1])),
                              [1, 1, 1, 1], 'SAME', name='dw')
  conv = tf.nn.conv2d(dw, var('conv/kernel', np.ones([3, 3, 3, 4])), 1, 'SAME',
                      name='conv')
  bn, _, _ = tf.compat.v1.nn.fused_batch_norm(
      conv, var('bn/gamma', np.ones([4])), var('bn/beta', np.zeros([4])),
      is_training=True, name='bn')
  return tf.nn.relu(bn, name='relu')


# ---------------------------------------------------------------------------
# Validation.


def test_valid_description_and_defaults():
  hw = hardware.Hardware('cpu', peak_compute=100, memory_bandwidth=10,
                         op_efficiency={'DepthwiseConv2dNative': 0.25})
  assert (hw.peak_compute, hw.memory_bandwidth) == (100.0, 10.0)
  assert hw.efficiency('DepthwiseConv2dNative') == 0.25
  assert hw.efficiency('Conv2D') == 1.0  # not listed: peak
  assert hw.effective_peak_compute('DepthwiseConv2dNative') == 25.0


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(peak_compute=0), ValueError, r'peak_compute must be a finite number > 0 '
     r'\(GFLOP/s\)\. Received: peak_compute=0\.0'),
    (dict(peak_compute=-5), ValueError, r'Received: peak_compute=-5\.0'),
    (dict(peak_compute=math.inf), ValueError, r'Received: peak_compute=inf'),
    (dict(peak_compute=math.nan), ValueError, r'Received: peak_compute=nan'),
    (dict(peak_compute='fast'), TypeError, r"peak_compute must be a number .* "
     r"Received: peak_compute='fast'"),
    (dict(peak_compute=True), TypeError, r'Received: peak_compute=True'),
    (dict(memory_bandwidth=0), ValueError, r'memory_bandwidth must be a finite number > 0 '
     r'\(GB/s\)\. Received: memory_bandwidth=0\.0'),
    (dict(memory_bandwidth=None), TypeError, r'Received: memory_bandwidth=None'),
    (dict(name=''), ValueError, r"name must be a non-empty string\. Received: name=''"),
    (dict(name=7), TypeError, r'Received: name=7'),
    (dict(op_efficiency={'Relu': 0.5}), ValueError, r"op_efficiency keys must be FLOP op "
     r"types, one of \['Conv2D'.*Received: op_efficiency key 'Relu'"),
    (dict(op_efficiency={'Conv2D': 0}), ValueError,
     r"op_efficiency\['Conv2D'\] must be a finite number > 0 .* "
     r"Received: op_efficiency\['Conv2D'\]=0\.0"),
    (dict(op_efficiency={'MatMul': 1.5}), ValueError,
     r"op_efficiency\['MatMul'\] must be in \(0, 1\].*Received: "
     r"op_efficiency\['MatMul'\]=1\.5\. Raise peak_compute instead"),
    (dict(op_efficiency=[0.5]), TypeError, r'op_efficiency must be a mapping'),
    (dict(measurements={'x': math.nan}), ValueError, r'measurements must be JSON'),
])
def test_bad_fields_are_named(kwargs, error, match):
  fields = dict(name='cpu', peak_compute=100, memory_bandwidth=10)
  fields.update(kwargs)
  with pytest.raises(error, match=match):
    hardware.Hardware(**fields)


# ---------------------------------------------------------------------------
# Registry.


def test_register_get_and_unregister():
  hw = hardware.register(hardware.Hardware('my_cpu', 100, 10))
  assert hardware.get('my_cpu') is hw
  assert hardware.registered_names()[-1] == 'my_cpu'
  hardware.register(hardware.Hardware('my_cpu', 100, 10))  # same again: fine
  with pytest.raises(ValueError, match=r"different hardware is already registered as "
                     r"'my_cpu'\. Pass overwrite=True"):
    hardware.register(hardware.Hardware('my_cpu', 200, 10))
  hardware.register(hardware.Hardware('my_cpu', 200, 10), overwrite=True)
  assert hardware.get('my_cpu').peak_compute == 200
  hardware.unregister('my_cpu')
  with pytest.raises(ValueError, match=r"Hardware my_cpu must be in \['K80'.*"
                     r"Received: hardware='my_cpu'.*hardware\.register"):
    hardware.get('my_cpu')
  with pytest.raises(ValueError, match=r"No user-registered hardware is named 'my_cpu'"):
    hardware.unregister('my_cpu')


def test_datasheet_entries_keep_the_originals_numbers():
  for name, (peak, bandwidth) in DATASHEET.items():
    hw = hardware.get(name)
    assert (hw.peak_compute, hw.memory_bandwidth) == (peak, bandwidth)
    assert dict(hw.op_efficiency) == {}
  assert hardware.registered_names()[:8] == [
      'K80', 'P4', 'T4', 'P100', 'V100', 'TPUv2', 'FLOP_LATENCY', 'MEMORY_LATENCY']
  with pytest.raises(ValueError, match=r"'V100' is a datasheet entry .* fixed"):
    hardware.register(hardware.Hardware('V100', 1, 1), overwrite=True)
  with pytest.raises(TypeError, match=r'register\(\) takes a Hardware'):
    hardware.register({'name': 'x'})
  assert rf.PEAK_COMPUTE['V100'] == 125000 and rf.MEMORY_BANDWIDTH['V100'] == 900


def test_names_added_to_the_original_tables_still_work():
  # The original's way: add your numbers to both dicts.
  rf.PEAK_COMPUTE['table_cpu'], rf.MEMORY_BANDWIDTH['table_cpu'] = 50, 5
  try:
    assert (hardware.get('table_cpu').peak_compute,
            hardware.get('table_cpu').memory_bandwidth) == (50, 5)
  finally:
    del rf.PEAK_COMPUTE['table_cpu'], rf.MEMORY_BANDWIDTH['table_cpu']


# ---------------------------------------------------------------------------
# Files.


def test_save_and_load_round_trip(tmp_path):
  hw = hardware.Hardware('my_cpu', 123.5, 12.25,
                         op_efficiency={'DepthwiseConv2dNative': 0.125, 'MatMul': 1},
                         description='by hand', measurements={'repeats': 3})
  path = tmp_path / 'sub' / 'my_cpu.json'
  hardware.save(hw, str(path))
  assert os.listdir(path.parent) == ['my_cpu.json']  # no temporary file left
  content = json.loads(path.read_text())
  assert content == {
      'format': 'morph_net.hardware', 'version': 1, 'name': 'my_cpu',
      'peak_compute': 123.5, 'memory_bandwidth': 12.25,
      'op_efficiency': {'DepthwiseConv2dNative': 0.125, 'MatMul': 1.0},
      'description': 'by hand', 'measurements': {'repeats': 3}}
  assert hardware.load(str(path)) == hw
  assert hardware.load(path) == hw  # os.PathLike
  assert hardware.resolve(str(path)) == hw  # a path where a name goes
  assert hardware.resolve(path) == hw


def test_descriptions_copy_and_pickle():
  hw = hardware.Hardware('p', 1, 2, op_efficiency={'Conv2D': 0.5}, measurements={'a': [1]})
  assert pickle.loads(pickle.dumps(hw)) == hw
  assert copy.deepcopy(hw) == hw
  efficiency = {'Conv2D': 0.5}
  hw = hardware.Hardware('p', 1, 2, op_efficiency=efficiency)
  efficiency['Conv2D'] = 0.1  # the description keeps its own copy
  assert hw.efficiency('Conv2D') == 0.5


def test_hand_written_minimal_file(tmp_path):
  path = tmp_path / 'hw.json'
  path.write_text('{"name": "mine", "peak_compute": 10, "memory_bandwidth": 2}')
  assert hardware.load(str(path)) == hardware.Hardware('mine', 10, 2)


@pytest.mark.parametrize('content, match', [
    ('{"name": "x", "peak_compute": 1, "memory_bandwidth": 1, "bandwith": 3}',
     r"Unknown field\(s\) \['bandwith'\].*Accepted fields"),
    ('{"name": "x", "peak_compute": 1}', r"lacks the field\(s\) \['memory_bandwidth'\]"),
    ('{"name": "x", "peak_compute": -1, "memory_bandwidth": 1}',
     r'Received: peak_compute=-1\.0'),
    ('{"name": "x", "peak_compute": "1", "memory_bandwidth": 1}',
     r"Received: peak_compute='1'"),
    ('{"format": "other", "name": "x", "peak_compute": 1, "memory_bandwidth": 1}',
     r"format='other'; expected 'morph_net.hardware'"),
    ('{"version": 9, "name": "x", "peak_compute": 1, "memory_bandwidth": 1}',
     r'version=9; this morph_net reads version 1'),
    ('{"name": "x", "peak_', r'is not valid JSON'),
    ('[1, 2]', r'must be a JSON object'),
])
def test_bad_files_are_rejected_with_the_file_and_field(tmp_path, content, match):
  path = tmp_path / 'bad.json'
  path.write_text(content)
  with pytest.raises(ValueError, match=match) as info:
    hardware.load(str(path))
  assert str(path) in str(info.value)


def test_missing_file():
  with pytest.raises(ValueError, match=r"No hardware JSON file at 'nowhere\.json'.*"
                     r"morphnet calibrate"):
    hardware.resolve('nowhere.json')


# ---------------------------------------------------------------------------
# Costs by hand.


def _tiny_costs(mode, hw, batch_size=1):
  built = graph_modes.build(mode, tiny_net, TINY_IMAGE)
  reg = latency_regularizer.GammaLatencyRegularizer(
      [built.output.op], gamma_threshold=0.1, hardware=hw, batch_size=batch_size)
  names = ['dw', 'conv', 'bn', 'relu']
  costs = built.evaluate(lambda: [reg.get_cost([built.op(n)]) for n in names]
                         + [reg.get_cost()])
  return reg, dict(zip(names + ['total'], costs))


def test_registered_hardware_gives_the_roofline_cost_by_hand(mode):
  hardware.register(hardware.Hardware('hand', peak_compute=100, memory_bandwidth=10))
  reg, costs = _tiny_costs(mode, 'hand')
  assert reg.cost_name == 'hand Latency'
  expected = {
      'dw': 1860 / 10,      # memory bound: 3456 / 100 = 34.56 < 186
      'conv': 2224 / 10,    # memory bound: 13824 / 100 = 138.24 < 222.4
      'bn': 2048 / 10,
      'relu': 2048 / 10,
  }
  for name, value in expected.items():
    assert costs[name] == pytest.approx(value, rel=1e-6), name
  assert costs['total'] == pytest.approx(sum(expected.values()), rel=1e-6)  # 818


@pytest.mark.parametrize('batch_size', [1, 2])
def test_per_op_efficiency_scales_the_compute_term(mode, batch_size):
  hw = hardware.Hardware('eff', peak_compute=100, memory_bandwidth=10,
                         op_efficiency={'Conv2D': 0.5, 'DepthwiseConv2dNative': 0.05,
                                        'MatMul': 0.1})
  _, costs = _tiny_costs(mode, hw, batch_size)
  b = batch_size
  expected = {
      # compute 3456 B / (100 * 0.05) = 691.2 B > memory (1536 B + 324) / 10
      'dw': 3456 * b / 5,
      # compute 13824 B / (100 * 0.5) = 276.48 B > memory (1792 B + 432) / 10
      'conv': 13824 * b / 50,
      'bn': 2048 * b / 10,
      'relu': 2048 * b / 10,
  }
  for name, value in expected.items():
    assert costs[name] == pytest.approx(value, rel=1e-6), name
  assert costs['total'] == pytest.approx(sum(expected.values()), rel=1e-6)


def test_calibrated_file_is_accepted_as_hardware(mode, tmp_path):
  path = str(tmp_path / 'cal.json')
  hardware.save(hardware.Hardware('cal', 100, 10, op_efficiency={'Conv2D': 0.5}), path)
  reg, costs = _tiny_costs(mode, path)
  assert reg.cost_name == 'cal Latency'
  assert costs['conv'] == pytest.approx(13824 / 50, rel=1e-6)


def test_group_lasso_and_logistic_sigmoid_take_a_hardware(mode):
  # FLOP-only hardware (infinite bandwidth): latency = FLOPs / effective peak.
  # Conv2D at efficiency 0.25 of peak 1 GFLOP/s costs 4 ns per FLOP.
  hw = hardware.Hardware('flops4', peak_compute=1, memory_bandwidth=1e20,
                         op_efficiency={'Conv2D': 0.25})
  built = graph_modes.build(mode, gated_four_conv_net(), IMAGE_SHAPE)
  reg = latency_regularizer.LogisticSigmoidLatencyRegularizer(_outputs(built), hw)
  assert reg.cost_name == 'flops4 Latency'
  assert built.evaluate(reg.get_cost) == pytest.approx(4 * sum(FLOP_COSTS), rel=1e-6)
  built = graph_modes.build(mode, tiny_net, TINY_IMAGE)
  lasso = latency_regularizer.GroupLassoLatencyRegularizer(
      [built.output.op], threshold=1e-3, hardware=hw)
  # The conv's kernel is all ones: every channel alive. 13824 FLOPs * 4;
  # depthwise at efficiency 1: 3456 FLOPs.
  assert lasso.cost_name == 'flops4 Latency'
  assert built.evaluate(lasso.get_cost) == pytest.approx(13824 * 4 + 3456, rel=1e-6)


def test_from_keras_model_with_hardware():
  # Dense 5 -> 3 (MatMul): 2 * 5 * 3 = 30 FLOPs per example; bytes = input
  # 5*4 + weights 15*4 + output 3*4 = 92 at batch 1; 4*20 + 60 + 4*12 = 188 at 4.
  model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name='d')])
  compute_bound = hardware.Hardware('kc', peak_compute=10, memory_bandwidth=46,
                                    op_efficiency={'MatMul': 0.5})
  reg = latency_regularizer.GroupLassoLatencyRegularizer.from_keras_model(
      model, threshold=0.0, hardware=compute_bound)
  assert float(reg.get_cost()) == pytest.approx(30 / 5)  # > 92 / 46 = 2
  reg = latency_regularizer.GroupLassoLatencyRegularizer.from_keras_model(
      model, threshold=0.0, hardware=compute_bound, batch_size=4)
  assert float(reg.get_cost()) == pytest.approx(120 / 5)  # > 188 / 46 = 4.09
  memory_bound = hardware.Hardware('km', peak_compute=10, memory_bandwidth=4)
  reg = latency_regularizer.GroupLassoLatencyRegularizer.from_keras_model(
      model, threshold=0.0, hardware=memory_bound)
  assert float(reg.get_cost()) == pytest.approx(92 / 4)  # > 30 / 10 = 3
  assert reg.cost_name == 'km Latency'


def test_unknown_hardware_still_lists_the_datasheet_names():
  with pytest.raises(ValueError, match=r"Hardware H100 must be in \['K80', 'P4', 'T4', "
                     r"'P100', 'V100', 'TPUv2', 'FLOP_LATENCY', 'MEMORY_LATENCY'\]\. "
                     r"Received: hardware='H100'"):
    rf.latency_function_factory('H100', 1)
