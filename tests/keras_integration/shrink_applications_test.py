"""shrink_model on keras.applications' own layers (ConvNeXt's LayerScale)."""

import keras
import numpy as np
import pytest

from morph_net.keras_integration import shrink
from morph_net.keras_integration.shrink import applications

L = keras.layers
LayerScale = applications.layer_scale_class()
pytestmark = pytest.mark.skipif(LayerScale is None,
                                reason='this Keras has no ConvNeXt LayerScale')


def _convnext_like():
  """stem (1x1, 8) -> pw1 (16) -> gelu -> pw2 (8) -> LayerScale -> + stem -> gap -> head.

  A ConvNeXt block without its LayerNormalization (which renormalises over
  the channels, so removing even a zero channel changes its output).
  """
  image = keras.Input((5, 5, 3))
  stem = L.Conv2D(8, 1, name='stem')(image)
  x = L.Dense(16, name='pw1')(stem)
  x = L.Activation('gelu')(x)
  x = L.Dense(8, name='pw2')(x)
  x = LayerScale(1e-6, 8, name='scale')(x)
  x = L.Add(name='residual')([stem, x])
  x = L.GlobalAveragePooling2D()(x)
  return keras.Model(image, L.Dense(3, name='head')(x))


def test_layer_scale_follows_the_residual_stream_with_its_gamma():
  rng = np.random.default_rng(0)
  model = _convnext_like()
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
  gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
  model.get_layer('scale').gamma.assign(gamma)
  # Dead residual channels contribute nothing: stem and pw2 output zeros there.
  for name in ('stem', 'pw2'):
    layer = model.get_layer(name)
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    kernel[..., ~keep] = 0.0
    bias[~keep] = 0.0
    layer.kernel.assign(kernel)
    layer.bias.assign(rng.normal(size=8).astype(np.float32) * keep)
  reduced = shrink.shrink_model(model, {'stem': keep, 'pw2': keep},
                                transfer_weights=True)
  scale = reduced.get_layer('scale')
  assert isinstance(scale, LayerScale) and scale.projection_dim == 5
  np.testing.assert_array_equal(scale.gamma.numpy(), gamma[keep])
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  expected = model(x, training=False).numpy()
  np.testing.assert_allclose(reduced(x, training=False).numpy(), expected,
                             rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_layer_scale_takes_a_count_structure():
  reduced = shrink.shrink_model(_convnext_like(), {'stem': 3, 'pw2': 3})
  assert reduced.get_layer('scale').projection_dim == 3
  assert reduced.get_layer('scale').gamma.shape == (3,)
  assert reduced(np.zeros((1, 5, 5, 3), np.float32)).shape == (1, 3)


def test_convnext_tiny_residual_stream_shrinks():
  # keras.applications ConvNeXtTiny: stage 0's residual stream (the stem conv,
  # every block's depthwise conv -- groups = channels -- and second pointwise
  # Dense: 96 channels) cut to 64; each of the 3 LayerScales follows
  # (projection_dim 64) with the surviving gammas.
  keras.utils.set_random_seed(1)
  model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3),
                                          classes=10)
  keep = np.zeros(96, bool)
  keep[np.random.default_rng(2).choice(96, 64, replace=False)] = True
  names = ['convnext_tiny_stem_conv'] + [
      f'convnext_tiny_stage_0_block_{i}_{layer}' for i in range(3)
      for layer in ('depthwise_conv', 'pointwise_conv_2')]
  reduced = shrink.shrink_model(model, {name: keep for name in names},
                                transfer_weights=True)
  for i in range(3):
    name = f'convnext_tiny_stage_0_block_{i}_layer_scale'
    scale = reduced.get_layer(name)
    assert scale.projection_dim == 64
    np.testing.assert_array_equal(scale.gamma.numpy(),
                                  model.get_layer(name).gamma.numpy()[keep])
  # Parameters removed: 32 of 96 channels of the stem conv (4*4*3 + 1 each),
  # its LayerNorm (2 each), and per block the depthwise conv (7*7 + 1), the
  # LayerNorm (2), pw1's input rows (384), pw2's columns (384 + 1) and the
  # LayerScale (1): 32 * (49 + 2 + 3 * (50 + 2 + 384 + 385 + 1)); and the
  # input rows of stage 1's downsampling LayerNorm (2) and conv (2*2*192).
  removed = 32 * (49 + 2 + 3 * (50 + 2 + 384 + 385 + 1) + 2 + 4 * 192)
  assert model.count_params() - reduced.count_params() == removed
  out = reduced(np.zeros((1, 32, 32, 3), np.float32))
  assert out.shape == (1, 10) and np.all(np.isfinite(out))
