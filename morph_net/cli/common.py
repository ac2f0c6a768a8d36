"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import os
from typing import Optional


class CliError(Exception):
  """An error the CLI reports as one line, exit status 2."""


def load_model(path: Optional[str]):
  """Loads a saved Keras model, or builds the embedded example CNN for None."""
  import keras  # pylint: disable=g-import-not-at-top
  if path is None:
    from morph_net.examples import models  # pylint: disable=g-import-not-at-top
    return models.small_cnn()
  if not os.path.exists(path):
    raise CliError(f'--model: no such file: {path!r}. Pass a model saved with '
                   'model.save("name.keras").')
  try:
    return keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types for bad files.
    raise CliError(f'--model: cannot load a Keras model from {path!r}: '
                   f'{type(e).__name__}: {e}') from e
