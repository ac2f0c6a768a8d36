"""MorphNet for TensorFlow 2 / Keras 3: learn per-layer widths under a resource budget."""

__version__ = "0.3.0"
