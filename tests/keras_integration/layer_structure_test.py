"""Tests for exporting alive counts under Keras layer names (layer_structure)."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from morph_net.keras_integration import layer_structure
from morph_net.network_regularizers import flop_regularizer

layers = keras.layers
THRESHOLD = 0.1


def _model():
  """c0 (1x1, 3) -> bn0 -> sep (separable 3x3, 4) -> bn1 -> c2 (3x3, 5) -> bn2
  -> gap -> fc (Dense 2), with gammas leaving 2, 3 and 1 channels alive."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(3, 1, name='c0')(inputs)
  x = layers.BatchNormalization(name='bn0')(x)
  x = layers.SeparableConv2D(4, 3, padding='same', name='sep')(x)
  x = layers.BatchNormalization(name='bn1')(x)
  x = layers.Conv2D(5, 3, padding='same', name='c2')(x)
  x = layers.ReLU()(layers.BatchNormalization(name='bn2')(x))
  x = layers.GlobalAveragePooling2D(name='gap')(x)
  model = keras.Model(inputs, layers.Dense(2, name='fc')(x))
  for name, gamma in (('bn0', [1.0, 0.0, 1.0]), ('bn1', [1.0, 1.0, 0.0, 1.0]),
                      ('bn2', [0.0, 0.0, 1.0, 0.0, 0.0])):
    model.get_layer(name).gamma.assign(np.asarray(gamma, np.float32))
  return model


@pytest.fixture(scope='module')
def gamma_reg():
  return flop_regularizer.GammaFlopsRegularizer.from_keras_model(_model(), THRESHOLD)


def test_alive_counts_by_layer_name(gamma_reg):
  exporter = layer_structure.LayerStructureExporter(gamma_reg)
  # The depthwise part of `sep` has the channels of c0 (multiplier 1); `fc`
  # has no regularizer under a Gamma regularizer and is not exported.
  assert exporter.alive_counts() == {
      'c0': 2, 'sep/depthwise': 2, 'sep': 3, 'c2': 1}
  assert exporter.channel_counts() == {
      'c0': 3, 'sep/depthwise': 3, 'sep': 4, 'c2': 5}
  op_names = exporter.op_names
  assert set(op_names) == {'c0', 'sep/depthwise', 'sep', 'c2'}
  graph = gamma_reg.traced_model.graph
  assert graph.get_operation_by_name(op_names['sep']).type == 'Conv2D'
  assert graph.get_operation_by_name(op_names['sep/depthwise']).type == (
      'DepthwiseConv2dNative')


def test_alive_counts_follow_the_weights(gamma_reg):
  exporter = layer_structure.LayerStructureExporter(gamma_reg)
  model = gamma_reg.traced_model.model
  gamma = model.get_layer('bn2').gamma
  old = gamma.numpy()
  try:
    gamma.assign(np.ones(5, np.float32))
    assert exporter.alive_counts()['c2'] == 5
  finally:
    gamma.assign(old)
  assert exporter.alive_counts()['c2'] == 1


def test_without_matmul_and_depthwise(gamma_reg):
  exporter = layer_structure.LayerStructureExporter(
      gamma_reg, include_matmul_and_depthwise=False)
  assert exporter.alive_counts() == {'c0': 2, 'sep': 3, 'c2': 1}


def test_dense_layers_are_exported_under_group_lasso():
  model = _model()
  reg = flop_regularizer.GroupLassoFlopsRegularizer.from_keras_model(model, 1e-3)
  counts = layer_structure.LayerStructureExporter(reg).alive_counts()
  assert counts['fc'] == 2
  assert counts['c2'] == 5


def test_key_by_op(gamma_reg):
  exporter = layer_structure.LayerStructureExporter(gamma_reg, key_by='op')
  counts = exporter.alive_counts()
  assert len(counts) == 4
  assert all(name.startswith(('functional', 'model')) for name in counts)
  by_layer = layer_structure.LayerStructureExporter(gamma_reg)
  assert {by_layer.op_names[k]: v for k, v in by_layer.alive_counts().items()} == counts


def test_bad_key_by(gamma_reg):
  with pytest.raises(ValueError, match=r"key_by must be one of \('layer', 'op'\). "
                     r"Received: key_by='name'"):
    layer_structure.LayerStructureExporter(gamma_reg, key_by='name')


def test_layer_keys_need_a_keras_built_regularizer():
  graph = tf.Graph()
  with graph.as_default():
    image = tf.compat.v1.placeholder(tf.float32, [1, 8, 8, 3])
    kernel = tf.compat.v1.get_variable('k', [1, 1, 3, 4], use_resource=True)
    gamma = tf.compat.v1.get_variable('g', initializer=tf.ones([4]), use_resource=True)
    beta = tf.compat.v1.get_variable('b', initializer=tf.zeros([4]), use_resource=True)
    x = tf.nn.conv2d(image, kernel, 1, 'SAME')
    x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)
    reg = flop_regularizer.GammaFlopsRegularizer([x.op], THRESHOLD)
    with pytest.raises(ValueError, match=r"key_by='layer' needs a regularizer built with "
                       r"from_keras_model.*use key_by='op'"):
      layer_structure.LayerStructureExporter(reg)
    exporter = layer_structure.LayerStructureExporter(reg, key_by='op')
    assert list(exporter.op_names) == ['Conv2D']


def test_save_writes_json_under_learned_structure(gamma_reg, tmp_path):
  exporter = layer_structure.LayerStructureExporter(gamma_reg)
  path = exporter.save(str(tmp_path), 12)
  assert path == os.path.join(str(tmp_path), 'learned_structure', 'alive_12')
  with open(path) as f:
    text = f.read()
  assert json.loads(text) == {'c0': 2, 'sep/depthwise': 2, 'sep': 3, 'c2': 1}
  assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)
  # Given counts are written as they are.
  path = exporter.save(str(tmp_path), 13, alive_counts={'c0': 1})
  with open(path) as f:
    assert json.load(f) == {'c0': 1}


def test_failed_write_keeps_the_previous_file(gamma_reg, tmp_path, monkeypatch):
  exporter = layer_structure.LayerStructureExporter(gamma_reg)
  path = exporter.save(str(tmp_path), 5, alive_counts={'c0': 3})

  def failing_replace(src, dst):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(OSError, match='disk full'):
    exporter.save(str(tmp_path), 5)
  monkeypatch.undo()
  with open(path) as f:
    assert json.load(f) == {'c0': 3}
  # No temporary file is left behind.
  assert os.listdir(os.path.dirname(path)) == ['alive_5']


def test_unwritable_base_dir(gamma_reg, tmp_path):
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('x')
  exporter = layer_structure.LayerStructureExporter(gamma_reg)
  with pytest.raises(OSError, match='Cannot create the learned-structure directory.*'
                     'writable directory'):
    exporter.save(str(not_a_dir), 1)
