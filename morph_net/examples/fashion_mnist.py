"""Fashion-MNIST from local IDX files (never downloads).

Fashion-MNIST (Xiao et al. 2017) has 70,000 real 28x28 grayscale images of
clothing in 10 classes: 60,000 for training and 10,000 for testing. Small CNNs
reach 90-93 % on it, so it separates architectures where scikit-learn's digits
(~99 %) cannot.

The files are the four gzip-compressed IDX files of the original release:

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Debian ships them in the package `dataset-fashion-mnist`
(`apt-get install -y dataset-fashion-mnist`, under
/usr/share/datasets/fashion-mnist); any directory holding the four files works
(`data_dir=`, or the environment variable MORPH_NET_FASHION_MNIST_DIR).

Example:

  (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
  x_train.shape  # (60000, 28, 28, 1), float32 in [0, 1]
"""

from __future__ import annotations

import gzip
import os
from typing import Optional, Tuple

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
ENV_VAR = 'MORPH_NET_FASHION_MNIST_DIR'
FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
INSTALL_HINT = ('Install it with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, as '
                f'root; files go to {DEFAULT_DIR}), or put the four IDX files '
                f'({", ".join(FILES.values())}) in a directory and pass data_dir= '
                f'(CLI: --data-dir) or set {ENV_VAR}.')

# IDX magic numbers: 0x00000801 = unsigned bytes, 1 dimension (labels);
# 0x00000803 = unsigned bytes, 3 dimensions (images).
_LABELS_MAGIC = 0x00000801
_IMAGES_MAGIC = 0x00000803

Split = Tuple[np.ndarray, np.ndarray]


def resolve_dir(data_dir: Optional[str] = None) -> str:
  """The directory to read: `data_dir`, else $MORPH_NET_FASHION_MNIST_DIR, else Debian's."""
  return data_dir or os.environ.get(ENV_VAR) or DEFAULT_DIR


def _read_idx(path: str, magic: int) -> np.ndarray:
  """Reads one gzip-compressed IDX file of unsigned bytes; checks magic and size."""
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f'Cannot read the Fashion-MNIST file {path}: {e}. {INSTALL_HINT}') from e
  dims = magic & 0xFF
  header = 4 + 4 * dims
  if len(data) < header:
    raise ValueError(f'{path} is truncated: {len(data)} bytes, shorter than its IDX header '
                     f'({header} bytes). Reinstall the files. {INSTALL_HINT}')
  found = int.from_bytes(data[:4], 'big')
  if found != magic:
    raise ValueError(f'{path} is not an IDX file of the expected kind: magic number '
                     f'0x{found:08x}, expected 0x{magic:08x}. Received: path={path!r}.')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))
  expected = int(np.prod(shape))
  if len(data) - header != expected:
    raise ValueError(f'{path} is truncated or corrupt: its header announces shape {shape} '
                     f'({expected} bytes of data) but it holds {len(data) - header}. '
                     f'Reinstall the files. {INSTALL_HINT}')
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_split(directory: str, images_key: str, labels_key: str) -> Split:
  images = _read_idx(os.path.join(directory, FILES[images_key]), _IMAGES_MAGIC)
  labels = _read_idx(os.path.join(directory, FILES[labels_key]), _LABELS_MAGIC)
  if len(images) != len(labels):
    raise ValueError(f'{directory} holds {len(images)} {images_key.replace("_", " ")} but '
                     f'{len(labels)} {labels_key.replace("_", " ")}; the files do not belong '
                     f'together. {INSTALL_HINT}')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f'{FILES[labels_key]} holds label {int(labels.max())}; Fashion-MNIST has '
                     f'{NUM_CLASSES} classes (0-{NUM_CLASSES - 1}).')
  x = (images.astype(np.float32) / 255.0)[..., np.newaxis]
  return x, labels.astype(np.int32)


def _limit(split: Split, limit: Optional[int], seed: int, name: str) -> Split:
  """A seeded random subset of `limit` examples (all when None), in shuffled order."""
  if limit is None:
    return split
  if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
    raise ValueError(f'{name} must be a positive integer or None. Received: {name}={limit!r}.')
  order = np.random.default_rng(seed).permutation(len(split[0]))[:limit]
  return split[0][order], split[1][order]


def load_fashion_mnist(data_dir: Optional[str] = None, train_limit: Optional[int] = None,
                       test_limit: Optional[int] = None,
                       seed: int = 0) -> Tuple[Split, Split]:
  """Loads Fashion-MNIST as `((x_train, y_train), (x_test, y_test))`.

  Args:
    data_dir: directory with the four IDX .gz files. Defaults to
      $MORPH_NET_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist.
    train_limit: keep a seeded random subset of this many training images
      (None: all 60,000).
    test_limit: likewise for the 10,000 test images.
    seed: seed of the subsets.

  Returns:
    Images as float32 arrays (N, 28, 28, 1) in [0, 1]; labels as int32 (N,).

  Raises:
    FileNotFoundError: a file is missing (the message names the install command).
    ValueError: a file is corrupt or truncated, or a bad limit.
  """
  directory = resolve_dir(data_dir)
  missing = [name for name in FILES.values()
             if not os.path.isfile(os.path.join(directory, name))]
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST is not in {directory}: missing {", ".join(missing)}. {INSTALL_HINT}')
  train = _load_split(directory, 'train_images', 'train_labels')
  test = _load_split(directory, 'test_images', 'test_labels')
  return (_limit(train, train_limit, seed, 'train_limit'),
          _limit(test, test_limit, seed + 1, 'test_limit'))


def is_available(data_dir: Optional[str] = None) -> bool:
  """Whether the four files are present (does not read them)."""
  directory = resolve_dir(data_dir)
  return all(os.path.isfile(os.path.join(directory, name)) for name in FILES.values())
