"""The demo's data: scikit-learn's bundled digits, fixed stratified split."""

import numpy as np
import pytest

from morph_net.examples import digits

pytest.importorskip('sklearn')

# Images per class in sklearn's digits (its documentation: ~180 per class).
CLASS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_sizes_shapes_and_ranges():
  (x_train, y_train), (x_test, y_test) = digits.load_digits()
  # Test share per class: round(n / 4) (Python rounds halves to even):
  # 44.5->44, 45.5->46, 44.25->44, 45.75->46, 45.25->45, 45.5->46, 45.25->45,
  # 44.75->45, 43.5->44, 45->45: 450 in all; 1797 - 450 = 1347 for training.
  assert x_test.shape == (450, 8, 8, 1) and x_train.shape == (1347, 8, 8, 1)
  assert np.bincount(y_test).tolist() == [44, 46, 44, 46, 45, 46, 45, 45, 44, 45]
  assert (np.bincount(y_train) + np.bincount(y_test)).tolist() == CLASS_SIZES
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  # Pixels are 0..16 in the dataset: scaled by 1/16 into [0, 1], both ends used.
  assert x_train.min() == 0.0 and x_train.max() == 1.0
  assert set(np.unique(x_train * 16)) <= set(range(17))


def test_split_is_fixed_and_disjoint():
  first, second = digits.load_digits(), digits.load_digits()
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  train, test = digits.split_indices(np.repeat(np.arange(10), 180), 0.25, seed=0)
  assert not set(train) & set(test) and len(train) + len(test) == 1800
  other_train, _ = digits.split_indices(np.repeat(np.arange(10), 180), 0.25, seed=1)
  assert sorted(other_train) != sorted(train)


def test_train_limit_keeps_a_shuffled_prefix():
  (x_all, y_all), _ = digits.load_digits()
  (x, y), (x_test, _) = digits.load_digits(train_limit=100)
  assert x.shape == (100, 8, 8, 1) and x_test.shape == (450, 8, 8, 1)
  np.testing.assert_array_equal(y, y_all[:100])
  assert len(np.unique(y)) == 10  # shuffled: every class among the first 100


@pytest.mark.parametrize('kwargs, message', [
    (dict(test_fraction=0.0), 'test_fraction must be in'),
    (dict(test_fraction=1.5), 'test_fraction must be in'),
    (dict(train_limit=0), 'train_limit must be a positive integer'),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    digits.load_digits(**kwargs)
