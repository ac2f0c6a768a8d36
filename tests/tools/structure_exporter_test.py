"""Tests for StructureExporter (spec 4.1 and 8.5) and its eager/atomic additions."""

import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from morph_net.op_regularizers import gamma_l1_regularizer
from morph_net.testing import op_regularizer_stub
from morph_net.tools import structure_exporter

ALIVE = {
    'X/c1/Conv2D': [True, False, True],
    'X/c2/Conv2D': [True, False, True, False],
    'X/c3/conv2d_transpose': [True, True, False, True, False],
    'X/c4/Conv3D': [True, False],
}
EXTRA_ALIVE = {
    'X/fc/MatMul': [True, True, False],
    'X/dw/depthwise': [False, True, True],
}


class FakeManager:
  """Stands in for an OpRegularizerManager: `ops` and `get_regularizer(op)`."""

  def __init__(self, ops, regularizers):
    self.ops = set(ops)
    self._regularizers = regularizers

  def get_regularizer(self, op):
    return self._regularizers.get(op.name)


def _build_ops():
  """Adds to the default graph one op of each interesting type, under scope X."""
  image = tf.zeros([1, 4, 4, 3])
  with tf.name_scope('X'):
    with tf.name_scope('c1'):
      c1 = tf.nn.conv2d(image, tf.ones([1, 1, 3, 3]), 1, 'SAME')
    with tf.name_scope('c2'):
      tf.nn.conv2d(c1, tf.ones([1, 1, 3, 4]), 1, 'SAME')
    with tf.name_scope('c3'):
      tf.nn.conv2d_transpose(c1, tf.ones([1, 1, 5, 3]), [1, 4, 4, 5], 1)
    with tf.name_scope('c4'):
      tf.nn.conv3d(tf.zeros([1, 2, 2, 2, 3]), tf.ones([1, 1, 1, 3, 2]),
                   [1, 1, 1, 1, 1], 'SAME')
    with tf.name_scope('c5'):  # a conv without a regularizer
      tf.nn.conv2d(c1, tf.ones([1, 1, 3, 6]), 1, 'SAME')
    with tf.name_scope('fc'):
      tf.matmul(tf.zeros([2, 3]), tf.ones([3, 3]))
    with tf.name_scope('dw'):
      tf.nn.depthwise_conv2d(image, tf.ones([1, 1, 3, 1]), [1, 1, 1, 1], 'SAME')
    tf.nn.relu(c1, name='relu')
  graph = tf.compat.v1.get_default_graph()
  names = list(ALIVE) + list(EXTRA_ALIVE) + ['X/c5/Conv2D', 'X/relu']
  return [graph.get_operation_by_name(n) for n in names]


def _stub_manager(ops):
  alive = dict(ALIVE, **EXTRA_ALIVE, **{'X/relu': [True]})
  regularizers = {name: op_regularizer_stub.OpRegularizerStub([0.0] * len(a), a)
                  for name, a in alive.items()}
  return FakeManager(ops, regularizers)


@pytest.fixture
def graph_exporter():
  """An exporter constructed inside a TF1 graph, with that graph."""
  graph = tf.Graph()
  with graph.as_default():
    exporter = structure_exporter.StructureExporter(_stub_manager(_build_ops()))
  return exporter, graph


def test_constants():
  assert structure_exporter.SUPPORTED_OPS == ['Conv2D', 'Conv2DBackpropInput', 'Conv3D']
  assert structure_exporter.ALIVE_FILENAME == 'alive'


def test_tensors_keys_and_values(graph_exporter):
  exporter, graph = graph_exporter
  with graph.as_default():
    tensors = exporter.tensors
    # Only Conv2D / Conv2DBackpropInput / Conv3D with a regularizer.
    assert set(tensors) == set(ALIVE)
    assert all(t.dtype == tf.bool for t in tensors.values())
    with tf.compat.v1.Session() as sess:
      values = sess.run(tensors)
  for name, alive in ALIVE.items():
    np.testing.assert_array_equal(values[name], alive)


def test_tensors_are_created_once_per_graph(graph_exporter):
  exporter, graph = graph_exporter
  with graph.as_default():
    first = exporter.tensors
    second = exporter.tensors
    assert all(first[k] is second[k] for k in first)
  # Read outside the graph, a graph-bound exporter returns its graph's tensors.
  outside = exporter.tensors
  assert all(outside[k] is first[k] for k in first)
  with tf.compat.v1.Session(graph=graph) as sess:
    np.testing.assert_array_equal(sess.run(outside['X/c1/Conv2D']), ALIVE['X/c1/Conv2D'])


def test_populated_values_and_files(graph_exporter, tmp_path):
  exporter, _ = graph_exporter
  base_dir = str(tmp_path / 'ee')
  exporter.populate_tensor_values({
      'X/c1/Conv2D': [True, True, True],
      'X/c2/Conv2D': [False, False, False, False],
      'X/c3/conv2d_transpose': [True] * 5,
      'X/c4/Conv3D': [True, False],
  })
  expected_19 = {'X/c1/Conv2D': 3, 'X/c2/Conv2D': 0, 'X/c3/conv2d_transpose': 5,
                 'X/c4/Conv3D': 1}
  assert exporter.get_alive_counts() == expected_19
  exporter.create_file_and_save_alive_counts(base_dir, 19)
  exporter.populate_tensor_values({
      'X/c1/Conv2D': [True, False, False],
      'X/c2/Conv2D': [True, True, True, True],
      'X/c3/conv2d_transpose': [False, True, False, True, False],
      'X/c4/Conv3D': [False, True],
  })
  expected_1009 = {'X/c1/Conv2D': 1, 'X/c2/Conv2D': 4, 'X/c3/conv2d_transpose': 2,
                   'X/c4/Conv3D': 1}
  assert exporter.get_alive_counts() == expected_1009
  exporter.create_file_and_save_alive_counts(base_dir, 1009)

  directory = tmp_path / 'ee' / 'learned_structure'
  assert sorted(os.listdir(directory)) == ['alive_1009', 'alive_19']
  # JSON, indent=2, sorted keys, no trailing newline.
  assert (directory / 'alive_19').read_text() == (
      '{\n  "X/c1/Conv2D": 3,\n  "X/c2/Conv2D": 0,\n'
      '  "X/c3/conv2d_transpose": 5,\n  "X/c4/Conv3D": 1\n}')
  assert (directory / 'alive_1009').read_text() == (
      '{\n  "X/c1/Conv2D": 1,\n  "X/c2/Conv2D": 4,\n'
      '  "X/c3/conv2d_transpose": 2,\n  "X/c4/Conv3D": 1\n}')


def test_regularizers_property(graph_exporter):
  exporter, _ = graph_exporter
  regularizers = exporter.regularizers
  assert set(regularizers) == set(ALIVE)
  assert all(isinstance(r, op_regularizer_stub.OpRegularizerStub)
             for r in regularizers.values())


def test_remove_common_prefix():
  with tf.Graph().as_default():
    exporter = structure_exporter.StructureExporter(
        _stub_manager(_build_ops()), remove_common_prefix=True)
    assert set(exporter.tensors) == {
        'c1/Conv2D', 'c2/Conv2D', 'c3/conv2d_transpose', 'c4/Conv3D'}


def test_include_matmul_and_depthwise():
  with tf.Graph().as_default():
    exporter = structure_exporter.StructureExporter(
        _stub_manager(_build_ops()), include_matmul_and_depthwise=True)
    assert set(exporter.tensors) == set(ALIVE) | set(EXTRA_ALIVE)
    assert exporter.tensors['X/dw/depthwise'].shape.as_list() == [3]
  with pytest.raises(TypeError):
    structure_exporter.StructureExporter(FakeManager([], {}), False, True)  # keyword-only


def test_op_without_regularizer_is_skipped_with_a_warning(caplog):
  with tf.Graph().as_default():
    with caplog.at_level(logging.WARNING):
      exporter = structure_exporter.StructureExporter(_stub_manager(_build_ops()))
  assert 'X/c5/Conv2D' not in exporter.tensors
  assert 'No regularizer found for: X/c5/Conv2D' in caplog.text


def test_populate_requires_the_same_keys(graph_exporter):
  exporter, _ = graph_exporter
  values = {name: alive for name, alive in ALIVE.items() if name != 'X/c4/Conv3D'}
  with pytest.raises(ValueError, match=r'`values` and `self.tensors` must have the same '
                     r"keys but are \['X/c1/Conv2D'.*\] and \[.*'X/c4/Conv3D'\]"):
    exporter.populate_tensor_values(values)


def test_graph_mode_requires_population(graph_exporter, tmp_path):
  exporter, graph = graph_exporter
  for context in (graph.as_default, tf.init_scope):  # in the graph, and eagerly
    with context():
      with pytest.raises(RuntimeError, match=r'^Tensor values not populated\.'):
        exporter.get_alive_counts()
      with pytest.raises(RuntimeError, match=r'^Tensor values not populated\.'):
        exporter.create_file_and_save_alive_counts(str(tmp_path), 1)
  with pytest.raises(RuntimeError, match='built inside a tf.compat.v1 graph'):
    exporter.compute_alive_counts()
  assert not os.listdir(tmp_path)


def _eager_exporter():
  """Exporter built eagerly on variable-backed regularizers (ops from a tf.Graph)."""
  with tf.Graph().as_default():
    ops = _build_ops()
  gammas = {name: tf.Variable([1.0 if a else 0.0 for a in alive])
            for name, alive in ALIVE.items()}
  regularizers = {name: gamma_l1_regularizer.GammaL1Regularizer(gamma, 0.5)
                  for name, gamma in gammas.items()}
  return structure_exporter.StructureExporter(FakeManager(ops, regularizers)), gammas


def test_eager_counts_without_session(tmp_path):
  exporter, gammas = _eager_exporter()
  # Gammas 1.0 where ALIVE is True, threshold 0.5: counts = number of True.
  expected = {'X/c1/Conv2D': 2, 'X/c2/Conv2D': 2, 'X/c3/conv2d_transpose': 3,
              'X/c4/Conv3D': 1}
  assert exporter.get_alive_counts() == expected
  assert exporter.compute_alive_counts() == expected
  gammas['X/c2/Conv2D'].assign([1.0, 1.0, 1.0, 1.0])
  # Not populated: every call reads the variables again.
  assert exporter.get_alive_counts()['X/c2/Conv2D'] == 4
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), np.int64(7))
  assert path == os.path.join(str(tmp_path), 'learned_structure', 'alive_7')
  assert '"X/c2/Conv2D": 4' in open(path).read()


def test_eager_populated_values_take_precedence():
  exporter, gammas = _eager_exporter()
  exporter.populate_tensor_values({k: v.numpy() for k, v in exporter.tensors.items()})
  gammas['X/c1/Conv2D'].assign([0.0, 0.0, 0.0])
  assert exporter.get_alive_counts()['X/c1/Conv2D'] == 2  # snapshot: [T, F, T]
  assert exporter.compute_alive_counts()['X/c1/Conv2D'] == 0  # evaluated now


def test_eager_exporter_inside_tf_function():
  exporter, _ = _eager_exporter()

  @tf.function
  def alive_total():
    return tf.add_n([tf.reduce_sum(tf.cast(t, tf.int32))
                     for t in exporter.tensors.values()])

  assert alive_total().numpy() == 2 + 2 + 3 + 1

  @tf.function
  def counts_in_function():
    exporter.get_alive_counts()
    return tf.constant(0)

  with pytest.raises(RuntimeError, match='Tensor values not populated'):
    counts_in_function()


def test_save_alive_counts_to_open_file(graph_exporter):
  exporter, _ = graph_exporter
  exporter.populate_tensor_values(ALIVE)
  f = io.StringIO()
  exporter.save_alive_counts(f)
  # Counts of ALIVE: 2, 2, 3, 1.
  assert f.getvalue() == structure_exporter.format_structure(
      {'X/c1/Conv2D': 2, 'X/c2/Conv2D': 2, 'X/c3/conv2d_transpose': 3, 'X/c4/Conv3D': 1})


def _write_previous(exporter, tmp_path):
  exporter.populate_tensor_values(ALIVE)
  path = exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  return path, open(path).read()


def _assert_only_previous(tmp_path, path, previous):
  assert os.listdir(tmp_path / 'learned_structure') == ['alive_5']
  assert open(path).read() == previous


def test_failed_replace_keeps_previous_file(graph_exporter, tmp_path, monkeypatch):
  exporter, _ = graph_exporter
  path, previous = _write_previous(exporter, tmp_path)
  exporter.populate_tensor_values({k: [False] * len(v) for k, v in ALIVE.items()})

  def failing_replace(src, dst):
    raise OSError('simulated failure')

  monkeypatch.setattr(structure_exporter.os, 'replace', failing_replace)
  with pytest.raises(OSError, match='simulated failure'):
    exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  _assert_only_previous(tmp_path, path, previous)


def test_failure_mid_write_keeps_previous_file(graph_exporter, tmp_path, monkeypatch):
  exporter, _ = graph_exporter
  path, previous = _write_previous(exporter, tmp_path)
  exporter.populate_tensor_values({k: [False] * len(v) for k, v in ALIVE.items()})
  real_fdopen = os.fdopen

  class HalfWriter:
    """Writes half of the content, then fails like a full disk."""

    def __init__(self, f):
      self._f = f

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self._f.close()

    def write(self, text):
      self._f.write(text[:len(text) // 2])
      self._f.flush()
      raise OSError('No space left on device')

  monkeypatch.setattr(structure_exporter.os, 'fdopen',
                      lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
  with pytest.raises(OSError, match='No space left'):
    exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  _assert_only_previous(tmp_path, path, previous)


def test_failure_computing_counts_keeps_previous_file(graph_exporter, tmp_path):
  exporter, _ = graph_exporter
  path, previous = _write_previous(exporter, tmp_path)
  exporter.populate_tensor_values({k: ['not a bool'] for k in ALIVE})  # cannot be summed
  with pytest.raises(TypeError):
    exporter.create_file_and_save_alive_counts(str(tmp_path), 5)
  _assert_only_previous(tmp_path, path, previous)


def test_unwritable_base_dir_names_the_path(graph_exporter, tmp_path):
  exporter, _ = graph_exporter
  exporter.populate_tensor_values(ALIVE)
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('x')
  directory = os.path.join(str(not_a_dir), 'learned_structure')
  with pytest.raises(OSError, match='Cannot create the learned-structure directory '
                     + repr(directory).replace('\\', '\\\\')):
    exporter.create_file_and_save_alive_counts(str(not_a_dir), 3)


def test_unwritable_directory_names_the_path(graph_exporter, tmp_path, monkeypatch):
  exporter, _ = graph_exporter
  exporter.populate_tensor_values(ALIVE)
  (tmp_path / 'learned_structure').mkdir()

  def denied(path, flags, mode=0o777):
    raise PermissionError(13, 'Permission denied', path)

  monkeypatch.setattr(structure_exporter.os, 'open', denied)
  directory = os.path.join(str(tmp_path), 'learned_structure')
  with pytest.raises(OSError, match='Cannot write the learned structure to directory '
                     + repr(directory).replace('\\', '\\\\')):
    exporter.create_file_and_save_alive_counts(str(tmp_path), 3)


@pytest.mark.parametrize('step', [1.5, '19', None])
def test_global_step_must_be_an_integer(graph_exporter, tmp_path, step):
  exporter, _ = graph_exporter
  exporter.populate_tensor_values(ALIVE)
  with pytest.raises(TypeError, match='global_step must be an integer. Received: '):
    exporter.create_file_and_save_alive_counts(str(tmp_path), step)


def test_format_structure():
  # indent=2, sorted keys, default=str, no trailing newline.
  assert structure_exporter.format_structure({'b': 2, 'a': 1}) == '{\n  "a": 1,\n  "b": 2\n}'
  assert structure_exporter.format_structure({'a': {1}}) == '{\n  "a": "{1}"\n}'
  assert structure_exporter.format_structure({}) == '{}'


@pytest.mark.parametrize('names, expected', [
    (['a/x', 'a/x'], ['x', 'x']),
    (['/x', '/x'], ['x', 'x']),
    (['abc/', 'abc/', 'abc/'], ['', '', '']),
    (['abc/x', 'abc/x', 'abd/x'], ['abc/x', 'abc/x', 'abd/x']),
    (['abc/x/', 'abc/y', 'abc/z/'], ['x/', 'y', 'z/']),
    (['a', 'a'], ['a', 'a']),
    (['a/b/c', 'a/b/d'], ['b/c', 'b/d']),  # one level only
])
def test_remove_common_prefix_fn(names, expected):
  fn = structure_exporter.get_remove_common_prefix_fn(names)
  assert [fn(n) for n in names] == expected


def test_remove_common_prefix_fn_of_nothing_is_identity():
  fn = structure_exporter.get_remove_common_prefix_fn(iter([]))
  assert fn('a/b') == 'a/b'


def test_compute_alive_counts():
  counts = structure_exporter._compute_alive_counts(
      {'a': [True, False, True], 'b': np.zeros(4, bool)})
  assert counts == {'a': 2, 'b': 0}
  assert all(type(c) is int for c in counts.values())
