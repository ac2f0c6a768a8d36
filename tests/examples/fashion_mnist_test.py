"""Fashion-MNIST loader: IDX parsing, clear errors, and the real files where installed."""

import gzip
import os

import numpy as np
import pytest

from morph_net.examples import fashion_mnist


def _write_idx(path, array, magic):
  array = np.asarray(array, dtype=np.uint8)
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def _fake_dataset(directory, n_train=6, n_test=4):
  rng = np.random.default_rng(0)
  arrays = {
      'train_images': rng.integers(0, 256, (n_train, 28, 28)),
      'train_labels': np.arange(n_train) % 10,
      'test_images': rng.integers(0, 256, (n_test, 28, 28)),
      'test_labels': (np.arange(n_test) + 3) % 10,
  }
  for key, array in arrays.items():
    magic = 0x803 if key.endswith('images') else 0x801
    _write_idx(os.path.join(directory, fashion_mnist.FILES[key]), array, magic)
  return arrays


def test_reads_idx_files_scaled_to_unit_range(tmp_path):
  arrays = _fake_dataset(tmp_path)
  (x_train, y_train), (x_test, y_test) = fashion_mnist.load_fashion_mnist(str(tmp_path))
  assert x_train.shape == (6, 28, 28, 1) and x_test.shape == (4, 28, 28, 1)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  # Pixel p (0..255) becomes p / 255.
  np.testing.assert_allclose(x_train[..., 0] * 255.0, arrays['train_images'], atol=1e-4)
  np.testing.assert_array_equal(y_train, arrays['train_labels'])
  np.testing.assert_array_equal(y_test, arrays['test_labels'])


def test_limits_are_seeded_subsets(tmp_path):
  _fake_dataset(tmp_path, n_train=10)
  (x_a, y_a), _ = fashion_mnist.load_fashion_mnist(str(tmp_path), train_limit=4, seed=3)
  (x_b, y_b), _ = fashion_mnist.load_fashion_mnist(str(tmp_path), train_limit=4, seed=3)
  (x_all, y_all), _ = fashion_mnist.load_fashion_mnist(str(tmp_path))
  assert x_a.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(x_a, x_b)
  # Every kept example is one of the originals, with its own label.
  for image, label in zip(x_a, y_a):
    index = int(np.flatnonzero((x_all == image).all(axis=(1, 2, 3)))[0])
    assert y_all[index] == label
  with pytest.raises(ValueError, match=r'Received: train_limit=0'):
    fashion_mnist.load_fashion_mnist(str(tmp_path), train_limit=0)


def test_missing_files_name_the_install_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'apt-get install -y dataset-fashion-mnist'):
    fashion_mnist.load_fashion_mnist(str(tmp_path))
  assert not fashion_mnist.is_available(str(tmp_path))


def test_environment_variable_selects_the_directory(tmp_path, monkeypatch):
  _fake_dataset(tmp_path)
  monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path))
  assert fashion_mnist.resolve_dir() == str(tmp_path)
  (x_train, _), _ = fashion_mnist.load_fashion_mnist()
  assert len(x_train) == 6


def test_wrong_magic_and_truncation_are_clear_errors(tmp_path):
  _fake_dataset(tmp_path)
  labels = os.path.join(tmp_path, fashion_mnist.FILES['train_labels'])
  _write_idx(labels, np.zeros((6, 28, 28)), 0x803)  # images where labels belong
  with pytest.raises(ValueError, match=r'magic number 0x00000803, expected 0x00000801'):
    fashion_mnist.load_fashion_mnist(str(tmp_path))
  images = os.path.join(tmp_path, fashion_mnist.FILES['train_images'])
  _write_idx(labels, np.zeros(6), 0x801)
  with gzip.open(images, 'rb') as f:
    data = f.read()
  with gzip.open(images, 'wb') as f:
    f.write(data[:-100])  # header says 6*28*28 bytes; 100 fewer are there
  with pytest.raises(ValueError, match=r'truncated or corrupt'):
    fashion_mnist.load_fashion_mnist(str(tmp_path))


def test_mismatched_counts(tmp_path):
  _fake_dataset(tmp_path)
  _write_idx(os.path.join(tmp_path, fashion_mnist.FILES['test_labels']), np.zeros(3), 0x801)
  with pytest.raises(ValueError, match=r'4 test images but 3 test labels'):
    fashion_mnist.load_fashion_mnist(str(tmp_path))


@pytest.mark.skipif(not fashion_mnist.is_available(),
                    reason='dataset-fashion-mnist is not installed')
def test_real_files():
  (x_train, y_train), (x_test, y_test) = fashion_mnist.load_fashion_mnist()
  # The release: 60,000 training and 10,000 test images, balanced classes
  # (6,000 and 1,000 per class).
  assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
  assert np.bincount(y_train).tolist() == [6000] * 10
  assert np.bincount(y_test).tolist() == [1000] * 10
  assert x_train.min() == 0.0 and x_train.max() == 1.0
