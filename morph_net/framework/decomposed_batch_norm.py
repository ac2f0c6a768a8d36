"""Recognises batch normalization lowered to element-wise ops.

Keras 3 `BatchNormalization` (and `tf.nn.batch_normalization`) emit no
`FusedBatchNorm*` op. In inference mode the layer computes

    scale  = Mul(Rsqrt(AddV2(variance, epsilon)), gamma)     # shape [C]
    y      = Mul(x, scale)                                    # the source op
    output = AddV2(y, Sub(beta, Mul(mean, scale)))            # (or Neg/Mul form)

possibly with `Cast` ops around vectors and activations (mixed precision) and
`Identity` ops in between. The `Mul(x, scale)` op carries the normalized
channels; MorphNet treats it as the gamma source of the layer, exactly as the
fused op is treated: the op is grouped with its input (the convolution) and its
consumers, and its regularizer is `GammaL1Regularizer(gamma)`.

Without a gamma (`scale=False`) the layer computes `Mul(x, Rsqrt(...))`; such
ops are recognised too (`match_unscaled`) so that callers can warn: there is
no variable to regularize, the channels are costed as always alive.

When the normalized axis is spelled explicitly (e.g. `axis=3` on a 4-D input)
Keras reshapes the moving statistics, gamma and beta to the broadcast shape
`[1, 1, 1, C]` before combining them; such `Reshape`s are looked through.

Only channels-last normalization is recognised: a gamma reshaped to
`[1, C, 1, 1]` (channels-first) is not a channels-last broadcast and does not
match. Only batch statistics match: the `Rsqrt` must be a per-channel vector
(`[C]` or `[1, ..., 1, C]`); a `LayerNormalization`, whose statistics vary per
position, is not a batch norm (nor a gamma source in the original).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

_TRANSPARENT_TYPES = ('Cast', 'Identity')


def _skip(tensor: tf.Tensor, transparent=_TRANSPARENT_TYPES) -> tf.Tensor:
  """Looks through `transparent` ops and channels-last broadcast reshapes."""
  while tensor.op.inputs and (tensor.op.type in transparent
                              or _is_broadcast_reshape(tensor)):
    tensor = tensor.op.inputs[0]
  return tensor


def _is_broadcast_reshape(tensor: tf.Tensor) -> bool:
  """True for `Reshape(v, [1, ..., 1, C])` of a vector `v` of length C."""
  if tensor.op.type != 'Reshape':
    return False
  source = tensor.op.inputs[0]
  return (source.shape.rank == 1 and source.shape[0] is not None
          and _is_channel_vector(tensor, source.shape[0]))


def _is_channel_vector(tensor: tf.Tensor, channels: Optional[int]) -> bool:
  """True if `tensor` has shape `[C]` or `[1, ..., 1, C]` with C = `channels`."""
  shape = tensor.shape
  if channels is None or shape.rank is None or shape.rank < 1:
    return False
  return shape[-1] == channels and all(d == 1 for d in shape[:-1])


@dataclasses.dataclass(frozen=True)
class DecomposedBatchNorm:
  """A matched batch normalization.

  Attributes:
    op: the `Mul(x, scale)` op (the source op).
    activation_index: index of `x` among `op.inputs`.
    gamma: the gamma tensor (typically a `ReadVariableOp` output).
    scale_op: the `Mul(rsqrt, gamma)` op.
  """
  op: tf.Operation
  activation_index: int
  gamma: tf.Tensor
  scale_op: tf.Operation


def _is_activation_for(x: tf.Tensor, channels: Optional[int]) -> bool:
  """True if `x` is an activation with `channels` channels, not a statistic.

  A moving mean or gamma broadcast to `[1, ..., 1, C]` (explicit `axis`), and
  negated (`center=False`: `-mean * scale`), is looked through first, so it is
  seen as the vector it is.
  """
  rank = _skip(x, _TRANSPARENT_TYPES + ('Neg',)).shape.rank
  if rank is None or rank < 2:
    return False
  return channels is not None and x.shape[-1] == channels


def _gamma_of_scale(scale: tf.Tensor) -> Optional[tf.Tensor]:
  """If `scale` is `Mul(Rsqrt(.), gamma)` (either order), returns gamma."""
  scale = _skip(scale)
  if scale.op.type != 'Mul' or len(scale.op.inputs) != 2:
    return None
  a, b = (_skip(t) for t in scale.op.inputs)
  for rsqrt, gamma in ((a, b), (b, a)):
    if rsqrt.op.type == 'Rsqrt' and gamma.op.type != 'Rsqrt':
      # The statistic must be per channel, as in a batch norm: a layer norm's
      # Rsqrt varies per position ([1, H, W, 1]) and is not a gamma source.
      if gamma.shape.rank == 1 and _is_channel_vector(rsqrt, gamma.shape[0]):
        return gamma
  return None


def match(op: tf.Operation) -> Optional[DecomposedBatchNorm]:
  """Returns the match if `op` is the `Mul(x, scale)` of a batch norm with gamma."""
  if op.type != 'Mul' or len(op.inputs) != 2:
    return None
  for scale_index in (1, 0):
    gamma = _gamma_of_scale(op.inputs[scale_index])
    if gamma is None:
      continue
    x = op.inputs[1 - scale_index]
    if _is_activation_for(x, gamma.shape[0]):
      return DecomposedBatchNorm(
          op=op, activation_index=1 - scale_index, gamma=gamma,
          scale_op=_skip(op.inputs[scale_index]).op)
  return None


def match_unscaled(op: tf.Operation) -> bool:
  """True if `op` is `Mul(x, Rsqrt(.))`: a batch norm without gamma (scale=False)."""
  if op.type != 'Mul' or len(op.inputs) != 2:
    return False
  for index in (0, 1):
    rsqrt = _skip(op.inputs[index])
    x = op.inputs[1 - index]
    if rsqrt.op.type != 'Rsqrt' or rsqrt.shape.rank is None or rsqrt.shape.rank < 1:
      continue
    channels = rsqrt.shape[-1]
    if _is_channel_vector(rsqrt, channels) and _is_activation_for(x, channels):
      return True
  return False
