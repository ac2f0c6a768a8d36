"""Checks at import time that a compatible TensorFlow and Keras 3 are installed.

As TensorFlow add-on libraries do, morph_net does not name a TensorFlow
distribution in its requirements (`tensorflow`, `tensorflow-cpu`,
`tensorflow[and-cuda]`, a vendor build... all provide the same `tensorflow`
package, and pip would install a second one next to the first). Instead
`import morph_net` checks what is importable and says how to install it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from typing import Optional, Tuple

MIN_TENSORFLOW = (2, 16)
MIN_KERAS = (3, 0)
INSTALL_HINT = (
    "Install one TensorFlow distribution with morph_net's extras: "
    "pip install 'morph_net[cpu]' (CPU only) or pip install 'morph_net[gpu]' "
    "(NVIDIA GPU, tensorflow[and-cuda]); from a checkout: pip install -e '.[cpu]'. "
    "An existing TensorFlow >= 2.16 (which brings Keras 3) is used as is.")


def parse_version(text: str) -> Tuple[int, ...]:
  """(major, minor) of a version string such as '2.21.0' or '2.17.0rc1'."""
  numbers = re.findall(r'\d+', text)[:2]
  return tuple(int(n) for n in numbers)


def check_versions(tensorflow_version: str, keras_version: Optional[str]) -> None:
  """Raises ImportError unless TF >= 2.16 and Keras >= 3 (None: Keras absent)."""
  if parse_version(tensorflow_version) < MIN_TENSORFLOW:
    raise ImportError(
        'morph_net needs TensorFlow >= 2.16 (TensorFlow 2 with Keras 3). Received: '
        f'TensorFlow {tensorflow_version}. {INSTALL_HINT}')
  if keras_version is None:
    raise ImportError(
        'morph_net needs Keras 3, which TensorFlow >= 2.16 installs, but no keras '
        f'package is importable. Received: TensorFlow {tensorflow_version}, no keras. '
        f"Run pip install 'keras>=3'. {INSTALL_HINT}")
  if parse_version(keras_version) < MIN_KERAS:
    raise ImportError(
        f'morph_net needs Keras 3. Received: keras {keras_version}. '
        f"Run pip install 'keras>=3'. {INSTALL_HINT}")


# Distributions that install the `tensorflow` package (any one of them will do).
TENSORFLOW_DISTRIBUTIONS = (
    'tensorflow', 'tensorflow-cpu', 'tensorflow-gpu', 'tensorflow-intel',
    'tensorflow-macos', 'tensorflow-rocm', 'tensorflow-aarch64', 'intel-tensorflow',
    'tf-nightly', 'tf-nightly-cpu', 'tf-nightly-gpu')


def _installed_version(distributions) -> Optional[str]:
  for name in distributions:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def check_tensorflow_install() -> None:
  """Raises ImportError naming the install command if TF / Keras 3 are missing.

  Reads the installed versions from package metadata, without importing
  TensorFlow (a package on `sys.path` without metadata, e.g. a source build,
  is accepted as it is).
  """
  if importlib.util.find_spec('tensorflow') is None:
    raise ImportError(f'morph_net needs TensorFlow >= 2.16, which is not installed. '
                      f'{INSTALL_HINT}')
  tensorflow_version = _installed_version(TENSORFLOW_DISTRIBUTIONS) or '.'.join(
      map(str, MIN_TENSORFLOW))
  keras_version = None
  if importlib.util.find_spec('keras') is not None:
    keras_version = _installed_version(('keras', 'keras-nightly')) or '.'.join(
        map(str, MIN_KERAS))
  check_versions(tensorflow_version, keras_version)
