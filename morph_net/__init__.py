"""MorphNet for TensorFlow 2 / Keras 3: learn per-layer widths under a resource budget.

The public API below is also reachable from its modules (the original's paths,
e.g. `morph_net.network_regularizers.flop_regularizer.GammaFlopsRegularizer`).
Names are imported on first use, so `import morph_net.framework` loads no Keras
code.
"""

import importlib as _importlib

from morph_net import _installation

__version__ = "0.3.0"

_installation.check_tensorflow_install()

# name -> module defining it. Pinned by tests/init_test.py.
_PUBLIC = {
    # Network regularizers (graph mode, or `.from_keras_model(model, ...)`).
    'GammaFlopsRegularizer': 'morph_net.network_regularizers.flop_regularizer',
    'GroupLassoFlopsRegularizer': 'morph_net.network_regularizers.flop_regularizer',
    'LogisticSigmoidFlopsRegularizer': 'morph_net.network_regularizers.flop_regularizer',
    'GammaModelSizeRegularizer': 'morph_net.network_regularizers.model_size_regularizer',
    'GroupLassoModelSizeRegularizer': 'morph_net.network_regularizers.model_size_regularizer',
    'LogisticSigmoidModelSizeRegularizer':
        'morph_net.network_regularizers.model_size_regularizer',
    'GammaLatencyRegularizer': 'morph_net.network_regularizers.latency_regularizer',
    'GroupLassoLatencyRegularizer': 'morph_net.network_regularizers.latency_regularizer',
    'LogisticSigmoidLatencyRegularizer': 'morph_net.network_regularizers.latency_regularizer',
    'GammaActivationRegularizer': 'morph_net.network_regularizers.activation_regularizer',
    'GroupLassoActivationRegularizer': 'morph_net.network_regularizers.activation_regularizer',
    # Exporting the learned structure.
    'StructureExporter': 'morph_net.tools.structure_exporter',
    'LayerStructureExporter': 'morph_net.keras_integration.layer_structure',
    'load_structure': 'morph_net.keras_integration.structure_io',
    'save_structure': 'morph_net.keras_integration.structure_io',
    # Keras training.
    'MorphNetModel': 'morph_net.keras_integration.training',
    'MorphNetCallback': 'morph_net.keras_integration.callback',
    'recommend_strength': 'morph_net.keras_integration.training',
    'LogisticSigmoidGating': 'morph_net.probabilistic_gating.activation_gating',
    # Applying the structure.
    'shrink_model': 'morph_net.keras_integration.shrink',
    'expand_structure': 'morph_net.keras_integration.expand',
    'run_morphnet': 'morph_net.keras_integration.morphnet_loop',
    # Errors.
    'UnsupportedOpError': 'morph_net.framework.errors',
}

__all__ = ['__version__', *sorted(_PUBLIC)]


def __getattr__(name):
  module = _PUBLIC.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(_importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
