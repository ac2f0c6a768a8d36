"""The demo's data: scikit-learn's bundled handwritten digits (no download).

`sklearn.datasets.load_digits` ships 1797 grayscale 8x8 images of the digits
0-9 (pixel values 0..16) inside the scikit-learn package. `load_digits` returns
them as float32 images in [0, 1] with shape (N, 8, 8, 1) and int32 labels,
split into a fixed, stratified train / test split (the same on every machine
and every run: the split is a seeded permutation of each class).

Example:

  (x_train, y_train), (x_test, y_test) = load_digits()
  x_train.shape  # (1347, 8, 8, 1)
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
# Pixel values of the bundled images are integers 0..16.
_MAX_PIXEL = 16.0

Split = Tuple[np.ndarray, np.ndarray]

INSTALL_HINT = ("The demo needs scikit-learn and matplotlib: "
                "pip install 'morph_net[demo]' (or pip install scikit-learn matplotlib).")


def _sklearn_digits():
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{INSTALL_HINT} ({e})') from e
  bunch = datasets.load_digits()
  return np.asarray(bunch.images), np.asarray(bunch.target)


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray,
                                                                                np.ndarray]:
  """A stratified split: `round(test_fraction * n_c)` test examples per class c.

  Args:
    labels: 1-D integer labels.
    test_fraction: the share of every class held out, in (0, 1).
    seed: seed of the per-class permutations.

  Returns:
    (train indices, test indices), each sorted.

  Raises:
    ValueError: `test_fraction` is not in (0, 1).
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1). Received: test_fraction={test_fraction!r}.')
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    held_out = int(round(test_fraction * len(members)))
    test.append(members[:held_out])
    train.append(members[held_out:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(test_fraction: float = 0.25, seed: int = 0,
                train_limit: Optional[int] = None) -> Tuple[Split, Split]:
  """Loads the digits as `((x_train, y_train), (x_test, y_test))`.

  Args:
    test_fraction: share of each class in the test split. Defaults to 0.25
      (1347 train / 450 test images).
    seed: seed of the split. Defaults to 0 (the demo's split).
    train_limit: keep only the first `train_limit` training examples (after a
      seeded shuffle, so every class is represented); None keeps all. Used by
      the quick demo.

  Returns:
    Images as float32 arrays (N, 8, 8, 1) in [0, 1] and labels as int32 (N,).

  Raises:
    ImportError: scikit-learn is not installed (the message says how to).
    ValueError: bad `test_fraction` or `train_limit`.
  """
  if train_limit is not None and (isinstance(train_limit, bool) or not isinstance(
      train_limit, int) or train_limit < 1):
    raise ValueError(
        f'train_limit must be a positive integer or None. Received: train_limit={train_limit!r}.')
  images, labels = _sklearn_digits()
  x = (images.astype(np.float32) / _MAX_PIXEL)[..., np.newaxis]
  y = labels.astype(np.int32)
  train, test = split_indices(y, test_fraction, seed)
  # Shuffle the training order once (seeded) so that any prefix mixes classes.
  train = np.random.default_rng(seed + 1).permutation(train)
  if train_limit is not None:
    train = train[:train_limit]
  return (x[train], y[train]), (x[test], y[test])
