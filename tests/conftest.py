"""Test set-up: quiet TensorFlow, seeded RNGs, fresh OpGroup indices."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests import graph_modes  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
  random.seed(0)
  np.random.seed(0)
  tf.random.set_seed(0)
  yield


@pytest.fixture(params=graph_modes.MODES)
def mode(request):
  """Runs a test once in tf.compat.v1 graph mode and once on a tf.function trace."""
  return request.param
