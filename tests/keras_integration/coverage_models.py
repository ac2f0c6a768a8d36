"""The models of the coverage suite (issue 11): one table, built from code.

- every model of the installed `keras.applications` (weights=None, a small
  input, 10 classes, no classifier activation);
- every CNN backbone class keras-hub ships, built from constructor arguments
  with small sizes (never `from_preset`: no download);
- hand-written models: U-Net, Conv1D audio model with a dilated layer, MLP
  with BatchNormalization, pointwise-Dense block, split/CSP block, grouped
  convolution block.

`Case.needs` names the analysis support from issue 11 (its ANALYSIS half:
Conv1D, Dense on rank > 2, grouped convolutions, channel split, Reshape
keeping the channel axis) that a model relies on, for the coverage table.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

import keras
from keras import ops

L = keras.layers


@dataclasses.dataclass(frozen=True)
class Case:
  """One model of the suite.

  Attributes:
    name: id of the case (also its row in docs/coverage.md).
    source: 'keras.applications', 'keras-hub' or 'hand-written'.
    build: builds the model (fresh weights).
    input_shape: one input, without the batch dimension.
    needs: analysis features of issue 11 this model relies on ('' if none).
    shrink_rejected: '' if shrink_model must rebuild it; else the reason it
      is rejected by design (its custom layers derive inner widths from
      ratios, so no config expresses arbitrary learned widths): shrink_model
      must then raise a ValueError naming the layer and the registration hook.
  """
  name: str
  source: str
  build: Callable[[], keras.Model]
  input_shape: Tuple[int, ...]
  needs: str = ''
  shrink_rejected: str = ''


# ---------------------------------------------------------------------------
# keras.applications


_APPLICATION_SIZES = {'InceptionV3': 75, 'InceptionResNetV2': 75, 'Xception': 71}
_APPLICATION_NEEDS = {
    # ConvNeXt: pointwise Dense layers on feature maps; LayerNorm after depthwise.
    'ConvNeXt': 'grouped convolutions (depthwise as groups=C); Dense on rank > 2',
    # SE blocks: GlobalAveragePooling2D -> Reshape((1, 1, C)) -> Conv2D.
    'EfficientNetV2': 'Reshape keeping the channel axis',
    'EfficientNetB': 'Reshape keeping the channel axis',
    'MobileNetV3': 'Reshape keeping the channel axis',
    # Flatten of the 1x1x512 map before fc1 (a Reshape keeping the channel axis).
    'VGG': 'Reshape keeping the channel axis',
    # Cropping2D before adjust_conv_2_* (a StridedSlice of the spatial axes).
    'NASNet': 'StridedSlice keeping the channel axis',
}


def _application(name: str) -> Case:
  size = _APPLICATION_SIZES.get(name, 32)

  def build():
    return getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), include_top=True, classes=10,
        classifier_activation=None)

  needs = next((v for k, v in _APPLICATION_NEEDS.items() if name.startswith(k)), '')
  return Case(name, 'keras.applications', build, (size, size, 3), needs)


def application_names():
  return sorted(n for n in dir(keras.applications)
                if n[0].isupper() and callable(getattr(keras.applications, n)))


# ---------------------------------------------------------------------------
# keras-hub backbones (constructor arguments, small sizes)


def _hub(cls_name: str, needs: str = '', size: int = 32, shape_arg: str = 'image_shape',
         rejected: str = '', **kwargs) -> Case:
  def build():
    import keras_hub  # pylint: disable=g-import-not-at-top
    return getattr(keras_hub.models, cls_name)(**{shape_arg: (size, size, 3)}, **kwargs)
  return Case(f'keras_hub.{cls_name}', 'keras-hub', build, (size, size, 3), needs,
              rejected)


def _hub_resnet(**kwargs):
  import keras_hub  # pylint: disable=g-import-not-at-top
  defaults = dict(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                  stackwise_num_filters=[64, 32, 32], stackwise_num_blocks=[1, 1, 1],
                  stackwise_num_strides=[1, 2, 2], block_type='basic_block',
                  image_shape=(32, 32, 3))
  defaults.update(kwargs)
  return keras_hub.models.ResNetBackbone(**defaults)


def _hub_deeplab():
  import keras_hub  # pylint: disable=g-import-not-at-top
  return keras_hub.models.DeepLabV3Backbone(
      image_encoder=_hub_resnet(), spatial_pyramid_pooling_key='P4',
      upsampling_size=4, dilation_rates=[2, 4], projection_filters=8,
      image_shape=(32, 32, 3))


KERAS_HUB_CASES = [
    # A CSPDarkNet-53-like configuration (timm's cspdarknet53 ratios), 2 stages.
    _hub('CSPNetBackbone', 'channel split', stem_filters=16, stem_kernel_size=3,
         stem_strides=2, stackwise_depth=[1, 1], stackwise_strides=[1, 2],
         stackwise_num_filters=[16, 32], block_type='dark_block', stage_type='csp',
         expand_ratio=[2.0, 1.0], bottle_ratio=[0.5, 1.0], block_ratio=[1.0, 0.5],
         down_growth=True),
    _hub('DenseNetBackbone', stackwise_num_repeats=[2, 2], growth_rate=8),
    _hub('EfficientNetBackbone', 'Reshape keeping the channel axis',
         rejected='custom layers MBConvBlock / FusedMBConvBlock: inner widths are '
         'input_filters * expand_ratio and a squeeze ratio',
         stackwise_width_coefficients=[1.0] * 3, stackwise_depth_coefficients=[1.0] * 3,
         stackwise_kernel_sizes=[3, 3, 3], stackwise_num_repeats=[1, 2, 1],
         stackwise_input_filters=[16, 16, 24], stackwise_output_filters=[16, 24, 32],
         stackwise_expansion_ratios=[1, 4, 4],
         stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
         stackwise_strides=[1, 2, 2], stackwise_block_types=['fused', 'fused', 'unfused'],
         num_features=64, shape_arg='input_shape'),
    _hub('HGNetV2Backbone', 'grouped convolutions',
         rejected='custom layers HGNetV2Embeddings / HGNetV2Stage hold every conv; '
         'their configs give per-stage widths, not per-layer ones',
         depths=[1, 1], embedding_size=16,
         hidden_sizes=[32, 64], stem_channels=[3, 8, 16], hidden_act='relu',
         use_learnable_affine_block=False,
         stackwise_stage_filters=[(16, 8, 32, 1, 2, 3), (32, 16, 64, 1, 2, 3)],
         apply_downsample=[False, True], use_lightweight_conv_block=[False, True]),
    _hub('MobileNetBackbone', 'grouped convolutions; Reshape keeping the channel axis',
         rejected='custom layers (InvertedResidualBlock, ConvBnActBlock, '
         'SqueezeAndExcite2D) derive inner widths from expansion and squeeze ratios',
         stackwise_expansion=[[32, 48], [64]], stackwise_num_blocks=[2, 1],
         stackwise_num_filters=[[16, 16], [24]], stackwise_kernel_size=[[3, 3], [5]],
         stackwise_num_strides=[[2, 1], [2]], stackwise_se_ratio=[[None, None], [0.25]],
         stackwise_activation=[['relu', 'relu'], ['hard_swish']],
         stackwise_padding=[[1, 1], [2]], output_num_filters=32, depthwise_filters=8,
         depthwise_stride=2, depthwise_residual=False, last_layer_filter=64,
         squeeze_and_excite=0.5, input_num_filters=8),
    Case('keras_hub.ResNetBackbone', 'keras-hub', _hub_resnet, (32, 32, 3)),
    Case('keras_hub.ResNetBackbone(v2, bottleneck)', 'keras-hub',
         lambda: _hub_resnet(block_type='bottleneck_block', use_pre_activation=True,
                             stackwise_num_filters=[64, 16, 16]), (32, 32, 3)),
    _hub('VGGBackbone', stackwise_num_repeats=[1, 2], stackwise_num_filters=[8, 16]),
    _hub('XceptionBackbone', stackwise_conv_filters=[[8, 16], [16, 32], [32, 32]],
         stackwise_pooling=[True, True, False], size=71),
    Case('keras_hub.DeepLabV3Backbone', 'keras-hub', _hub_deeplab, (32, 32, 3),
         shrink_rejected='custom layer SpatialPyramidPooling: one num_channels for all '
         'its convolutions'),
]


# ---------------------------------------------------------------------------
# Hand-written models


def _cbr(x, filters, kernel, name, strides=1):
  x = L.Conv2D(filters, kernel, strides=strides, padding='same', use_bias=False, name=name)(x)
  return L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))


def unet() -> keras.Model:
  image = keras.Input((32, 32, 3), name='image')
  e1 = _cbr(_cbr(image, 8, 3, 'e1a'), 8, 3, 'e1b')
  e2 = _cbr(_cbr(L.MaxPooling2D(name='p1')(e1), 16, 3, 'e2a'), 16, 3, 'e2b')
  b = _cbr(L.MaxPooling2D(name='p2')(e2), 32, 3, 'bottom')
  u2 = L.Conv2DTranspose(16, 2, strides=2, use_bias=False, name='up2')(b)
  u2 = L.ReLU(name='up2_relu')(L.BatchNormalization(name='up2_bn')(u2))
  d2 = _cbr(L.Concatenate(name='skip2')([u2, e2]), 16, 3, 'd2')
  u1 = L.Conv2DTranspose(8, 2, strides=2, use_bias=False, name='up1')(d2)
  u1 = L.ReLU(name='up1_relu')(L.BatchNormalization(name='up1_bn')(u1))
  d1 = _cbr(L.Concatenate(name='skip1')([u1, e1]), 8, 3, 'd1')
  return keras.Model(image, L.Conv2D(2, 1, name='mask')(d1), name='unet')


def audio_conv1d() -> keras.Model:
  audio = keras.Input((64, 1), name='audio')
  x = audio
  for i, (filters, kernel, dilation, stride) in enumerate(
      [(16, 5, 1, 2), (24, 3, 2, 1), (24, 3, 1, 2)]):
    x = L.Conv1D(filters, kernel, strides=stride, dilation_rate=dilation, padding='same',
                 use_bias=False, name=f'conv{i}')(x)
    x = L.ReLU(name=f'conv{i}_relu')(L.BatchNormalization(name=f'conv{i}_bn')(x))
  x = L.GlobalAveragePooling1D(name='pool')(x)
  return keras.Model(audio, L.Dense(5, name='logits')(x), name='audio_conv1d')


def mlp_bn() -> keras.Model:
  features = keras.Input((20,), name='features')
  x = features
  for i, units in enumerate((32, 24)):
    x = L.Dense(units, use_bias=False, name=f'fc{i}')(x)
    x = L.ReLU(name=f'fc{i}_relu')(L.BatchNormalization(name=f'fc{i}_bn')(x))
  return keras.Model(features, L.Dense(4, name='logits')(x), name='mlp_bn')


def pointwise_dense() -> keras.Model:
  image = keras.Input((8, 8, 3), name='image')
  stem = _cbr(image, 16, 3, 'stem')
  x = L.Dense(32, use_bias=False, name='pw1')(stem)       # Dense on (8, 8, 16)
  x = L.ReLU(name='pw1_relu')(L.BatchNormalization(name='pw1_bn')(x))
  x = L.Dense(16, use_bias=False, name='pw2')(x)
  x = L.BatchNormalization(name='pw2_bn')(x)
  x = L.Add(name='add')([stem, x])
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='pointwise_dense')


def csp_block() -> keras.Model:
  image = keras.Input((16, 16, 3), name='image')
  x = _cbr(image, 16, 3, 'stem')
  left, right = ops.split(x, 2, axis=-1)
  right = _cbr(right, 8, 3, 'branch_a')
  right = _cbr(right, 8, 3, 'branch_b')
  x = L.Concatenate(name='merge')([left, right])
  x = _cbr(x, 16, 1, 'transition')
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='csp_block')


def grouped_block() -> keras.Model:
  image = keras.Input((16, 16, 3), name='image')
  x = _cbr(image, 16, 3, 'stem')
  y = L.Conv2D(32, 3, padding='same', groups=4, use_bias=False, name='grouped')(x)
  y = L.ReLU(name='grouped_relu')(L.BatchNormalization(name='grouped_bn')(y))
  y = L.Conv2D(16, 3, padding='same', groups=16, use_bias=False, name='depthwise_as_grouped')(
      _cbr(y, 16, 1, 'reduce'))
  y = L.BatchNormalization(name='depthwise_as_grouped_bn')(y)
  x = L.ReLU(name='out_relu')(L.Add(name='add')([x, y]))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='grouped_block')


def nested_backbone() -> keras.Model:
  """A keras.applications backbone nested in a model with a head: Model(backbone(x))."""
  backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                            input_shape=(32, 32, 3), alpha=0.35)
  image = keras.Input((32, 32, 3), name='image')
  x = backbone(image)
  x = _cbr(x, 32, 1, 'head_conv')
  x = L.GlobalAveragePooling2D(name='head_pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='nested_backbone')


HAND_WRITTEN_CASES = [
    Case('U-Net', 'hand-written', unet, (32, 32, 3)),
    Case('nested backbone + head', 'hand-written', nested_backbone, (32, 32, 3)),
    Case('Conv1D audio (dilated)', 'hand-written', audio_conv1d, (64, 1), 'Conv1D'),
    Case('MLP with BN', 'hand-written', mlp_bn, (20,)),
    Case('pointwise-Dense block', 'hand-written', pointwise_dense, (8, 8, 3),
         'Dense on rank > 2'),
    Case('split/CSP block', 'hand-written', csp_block, (16, 16, 3), 'channel split'),
    Case('grouped-conv block', 'hand-written', grouped_block, (16, 16, 3),
         'grouped convolutions'),
]


def all_cases():
  return ([_application(n) for n in application_names()] + KERAS_HUB_CASES
          + HAND_WRITTEN_CASES)
