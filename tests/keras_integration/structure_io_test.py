"""Tests of structure_io: reading, checking and writing structure files."""

import json
import os
import re

import numpy as np
import pytest

from morph_net.keras_integration import structure_io
from morph_net.tools import structure_exporter


def _write(tmp_path, content, name='alive_100'):
  path = tmp_path / name
  path.write_text(content) if isinstance(content, str) else path.write_bytes(content)
  return str(path)


def test_reads_an_exported_file(tmp_path):
  counts = {'conv1': 13, 'conv2': 0, 'dense': 7}
  path = _write(tmp_path, structure_exporter.format_structure(counts))
  assert structure_io.load_structure(path) == counts


def test_reads_masks_and_integral_floats():
  loaded = structure_io.load_structure({'a': [True, False, 1, 0]})
  np.testing.assert_array_equal(loaded['a'], [True, False, True, False])
  assert loaded['a'].dtype == bool
  assert structure_io.is_mask_structure(loaded)
  assert structure_io.load_structure({'a': 12.0, 'b': np.int64(3)}) == {'a': 12, 'b': 3}
  assert not structure_io.is_mask_structure({'a': 12})


def test_missing_file_names_it(tmp_path):
  path = str(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match=re.escape(f"structure file '{path}': no such file")):
    structure_io.load_structure(path)


def test_directory_instead_of_file(tmp_path):
  with pytest.raises(IsADirectoryError, match='it is a directory'):
    structure_io.load_structure(str(tmp_path))


def test_empty_file(tmp_path):
  path = _write(tmp_path, '  \n')
  with pytest.raises(ValueError, match=re.escape(f"The structure file '{path}' is empty")):
    structure_io.load_structure(path)


def test_truncated_file(tmp_path):
  content = structure_exporter.format_structure({'conv1': 13, 'conv2': 64})
  path = _write(tmp_path, content[:len(content) // 2])
  with pytest.raises(ValueError, match=re.escape(f"The structure file '{path}' is not valid "
                                                 'JSON (') + '.*truncated or corrupted'):
    structure_io.load_structure(path)


def test_binary_file(tmp_path):
  path = _write(tmp_path, b'\xff\xfe\x00garbage')
  with pytest.raises(ValueError, match='is not a UTF-8 text file'):
    structure_io.load_structure(path)


@pytest.mark.parametrize('content, match', [
    ('[1, 2]', r'must hold a JSON object \{layer name: width\}. Received: a JSON array'),
    ('{"conv1": "13"}', r"width of layer 'conv1' .* Received: '13' \(string\)"),
    ('{"conv1": true}', r"width of layer 'conv1' .* Received: True \(boolean\)"),
    ('{"conv1": null}', r"width of layer 'conv1' .* Received: None \(null\)"),
    ('{"conv1": 12.5}', r"width of layer 'conv1' .* must be a whole number. Received: 12.5"),
    ('{"conv1": -1}', r"width of layer 'conv1' .* must be >= 0. Received: -1"),
    ('{"conv1": [[true]]}', r"mask of layer 'conv1' .* shape \(1, 1\)"),
    ('{"conv1": [0.5, 1]}', r"mask of layer 'conv1' .* must hold booleans"),
    ('{"conv1": 3, "conv2": [true]}', r'mixes alive counts and per-channel masks'),
    ('{"": 3}', r"must be non-empty strings. Received: key ''"),
])
def test_bad_file_contents_name_the_file(tmp_path, content, match):
  path = _write(tmp_path, content)
  with pytest.raises(ValueError, match=match) as e:
    structure_io.load_structure(path)
  assert f"structure file '{path}'" in str(e.value)


@pytest.mark.parametrize('structure, error, match', [
    ({1: 3}, TypeError, r"non-empty strings. Received: key 1"),
    ({'a': '3'}, TypeError, r"width of layer 'a' in the structure dict"),
    ({'a': -2}, ValueError, r'must be >= 0'),
    ({'a': [2, 3]}, TypeError, r'must hold booleans'),
])
def test_bad_dicts(structure, error, match):
  with pytest.raises(error, match=match):
    structure_io.load_structure(structure)


def test_wrong_source_type():
  with pytest.raises(TypeError, match='Received: structure of type list'):
    structure_io.load_structure([('a', 3)])


def test_save_round_trip_is_atomic(tmp_path):
  path = str(tmp_path / 'out' / 'structure.json')
  structure_io.save_structure(path, {'b': 2, 'a': np.int64(5)})
  with open(path) as f:
    text = f.read()
  assert text == '{\n  "a": 5,\n  "b": 2\n}'  # sorted keys, indent 2, no newline at the end
  assert structure_io.load_structure(path) == {'a': 5, 'b': 2}
  assert os.listdir(tmp_path / 'out') == ['structure.json']


def test_save_masks_as_lists(tmp_path):
  path = str(tmp_path / 'masks.json')
  structure_io.save_structure(path, {'a': np.array([True, False, True])})
  with open(path) as f:
    assert json.load(f) == {'a': [True, False, True]}


def test_save_rejects_bad_values(tmp_path):
  with pytest.raises(ValueError, match='must be >= 0'):
    structure_io.save_structure(str(tmp_path / 'x.json'), {'a': -1})
  assert not os.path.exists(tmp_path / 'x.json')
