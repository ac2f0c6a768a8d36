"""Interfaces for network-level and op-level regularizers.

`NetworkRegularizer` is what a user trains with (`get_regularization_term`) and
reads (`get_cost`). `OpRegularizer` is the regularizer of one op's output channels:
a float `regularization_vector` and a bool `alive_vector`, one entry per channel.

Porting note: the original declared these with a Python-2 style ABC metaclass, so
abstractness was never enforced; test doubles subclass them implementing only
some members. We keep them as plain base classes for the same reason.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf


class NetworkRegularizer:
  """An interface for network regularizers."""

  def get_regularization_term(self, ops: Optional[Sequence[tf.Operation]] = None):
    """Returns a scalar float tensor to add (times a strength) to the loss.

    Args:
      ops: Ops to restrict the term to. None (or an empty list) means every op
        known to the regularizer.
    """
    raise NotImplementedError

  def get_cost(self, ops: Optional[Sequence[tf.Operation]] = None):
    """Returns the estimated cost of the network if the alive structure were adopted.

    Args:
      ops: Ops to restrict the cost to. None (or an empty list) means every op.
    """
    raise NotImplementedError

  @property
  def op_regularizer_manager(self):
    """The OpRegularizerManager used by this regularizer, or None."""
    return None

  @property
  def traced_model(self):
    """The traced Keras model, for regularizers built with `from_keras_model`."""
    return getattr(self, '_traced_model', None)

  @classmethod
  def from_keras_model(cls, model, *args, input_shape=None, output_layers=None,
                       input_layers=None, **kwargs):
    """Builds this regularizer on a Keras 3 model, traced once.

    Example:
      reg = GammaFlopsRegularizer.from_keras_model(model, gamma_threshold=1e-2)

    Args:
      model: a Keras 3 model on the TensorFlow backend.
      *args: this class's arguments after `output_boundary`.
      input_shape: concrete input shape(s) with batch first; a None batch
        becomes 1. Defaults to the model's declared input shape.
      output_layers: layer names where crawling starts (default: the outputs).
      input_layers: layer names not crossed nor regularized (default: none).
      **kwargs: this class's other keyword arguments.

    Returns:
      The regularizer; `traced_model` holds the trace (op -> layer names).
    """
    # Imported here: the framework never imports keras at module import.
    from morph_net.keras_integration import model_analysis  # pylint: disable=g-import-not-at-top
    return model_analysis.build_network_regularizer(
        cls, model, *args, input_shape=input_shape, output_layers=output_layers,
        input_layers=input_layers, **kwargs)

  @property
  def name(self) -> str:
    return ''

  @property
  def cost_name(self) -> str:
    return ''


class OpRegularizer:
  """An interface for the regularizer of one op's output channels."""

  @property
  def regularization_vector(self):
    """Float tensor of shape [num_channels]: the channels' regularization."""
    raise NotImplementedError

  @property
  def alive_vector(self):
    """Bool tensor of shape [num_channels]: which channels survive."""
    raise NotImplementedError


def dimensions_are_compatible(op_regularizer: OpRegularizer) -> bool:
  """True if both vectors of `op_regularizer` are rank 1 with compatible lengths."""
  alive_shape = op_regularizer.alive_vector.shape
  reg_shape = op_regularizer.regularization_vector.shape
  if alive_shape.rank != 1 or reg_shape.rank != 1:
    return False
  return alive_shape.is_compatible_with(reg_shape)
