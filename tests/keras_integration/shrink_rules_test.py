"""Fast tests of shrink_model's rebuild rules, one family at a time.

Each model is built by hand; dead channels are set by hand (BatchNormalization
gamma = beta = 0, or zero kernel columns and bias) and passed as masks, so the
reduced model must compute the same outputs as the original (inference mode),
and its layer shapes are checked against widths derived in comments.
"""

import keras
import numpy as np
import pytest
from keras import ops

from morph_net.keras_integration import shrink

L = keras.layers


def _kill_bn(bn, alive, rng):
  """Random BN parameters; gamma = beta = 0 where `alive` is False."""
  alive = np.asarray(alive, dtype=bool)
  c = alive.size
  bn.gamma.assign(np.where(alive, rng.uniform(0.5, 1.5, c), 0.0).astype('float32'))
  bn.beta.assign(np.where(alive, rng.uniform(-0.3, 0.3, c), 0.0).astype('float32'))
  bn.moving_mean.assign(rng.normal(size=c).astype('float32'))
  bn.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype('float32'))


def _same_outputs(model, reduced, shape, rng, rtol=1e-4):
  x = rng.normal(size=(3,) + tuple(shape)).astype('float32')
  expected = keras.tree.flatten(model(x, training=False))
  actual = keras.tree.flatten(reduced(x, training=False))
  for a, e in zip(actual, expected):
    e = np.asarray(e)
    np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=rtol * np.abs(e).max())


def _mask(bits):
  return np.array([bool(int(b)) for b in bits])


# ---------------------------------------------------------------------------
# Keras Operation nodes (raw keras.ops calls on symbolic tensors).


def _hard_swish_model():
  image = keras.Input((6, 6, 3), name='image')
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.BatchNormalization(name='c1_bn')(x)
  x = x * ops.relu6(x + 3.0) * (1.0 / 6.0)      # hard swish: Add, Relu6, Multiply ops
  x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # Pad op on the spatial axes
  x = L.Conv2D(5, 3, use_bias=False, name='c2')(x)
  x = L.BatchNormalization(name='c2_bn')(x)
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(4, name='logits')(x), name='hard_swish')


def test_operation_nodes_follow_their_input_and_transfer():
  rng = np.random.default_rng(0)
  model = _hard_swish_model()
  alive = _mask('10110110')
  _kill_bn(model.get_layer('c1_bn'), alive, rng)
  _kill_bn(model.get_layer('c2_bn'), np.ones(5, bool), rng)
  reduced = shrink.shrink_model(model, {'c1': alive}, transfer_weights=True)
  # c1 keeps 5 of 8 channels; they pass through Add/Relu6/Multiply/Pad to c2.
  assert tuple(reduced.get_layer('c1').kernel.shape) == (3, 3, 3, 5)
  assert tuple(reduced.get_layer('c2').kernel.shape) == (3, 3, 5, 5)
  assert shrink.output_width_layers(model) == ['logits']
  _same_outputs(model, reduced, (6, 6, 3), rng)


def test_operation_merge_of_two_tensors_groups_their_channels():
  image = keras.Input((4, 4, 3))
  a = L.BatchNormalization(name='a_bn')(L.Conv2D(6, 1, name='a')(image))
  b = L.BatchNormalization(name='b_bn')(L.Conv2D(6, 1, name='b')(image))
  x = ops.add(a, b)  # an Add op, not an Add layer: a and b share channels
  model = keras.Model(image, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  reduced = shrink.shrink_model(model, {'a': _mask('110000'), 'b': _mask('010010')})
  # OR of the two masks: 110010 -> 3 channels on both sides.
  assert reduced.get_layer('a').filters == 3 and reduced.get_layer('b').filters == 3
  with pytest.raises(ValueError, match=r"merges inputs that would get different widths"):
    shrink.shrink_model(model, {'a': 2, 'b': 3})


def test_operation_add_absorbs_a_vanished_branch():
  image = keras.Input((4, 4, 3))
  stem = L.Conv2D(6, 1, name='stem')(image)
  branch = L.Conv2D(6, 1, name='branch')(stem)
  x = ops.add(stem, branch)
  model = keras.Model(image, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))
  result = shrink.rebuild(model, {'branch': 0, 'stem': 4})
  assert 'branch' in result.vanished_layers
  assert result.model.get_layer('out').kernel.shape[0] == 4


# ---------------------------------------------------------------------------
# Reshape.


def _se_model():
  image = keras.Input((6, 6, 3), name='image')
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='c1')(image)
  x = L.ReLU(name='c1_relu')(L.BatchNormalization(name='c1_bn')(x))
  s = L.GlobalAveragePooling2D(name='se_pool')(x)
  s = L.Reshape((1, 1, 8), name='se_reshape')(s)
  s = L.Conv2D(4, 1, activation='relu', name='se_reduce')(s)
  s = L.Conv2D(8, 1, activation='sigmoid', name='se_expand')(s)
  x = L.Multiply(name='se_excite')([x, s])
  x = L.Conv2D(6, 1, use_bias=False, name='c2')(x)
  x = L.BatchNormalization(name='c2_bn')(x)
  return keras.Model(image, L.Dense(3, name='logits')(L.Flatten()(x)), name='se')


def test_squeeze_excitation_reshape_gets_the_new_width():
  rng = np.random.default_rng(1)
  model = _se_model()
  c1 = _mask('11011010')
  _kill_bn(model.get_layer('c1_bn'), c1, rng)
  _kill_bn(model.get_layer('c2_bn'), np.ones(6, bool), rng)
  # An SE channel dies: zero se_reduce's kernel column and bias for channel 2.
  se_reduce = model.get_layer('se_reduce')
  kernel, bias = se_reduce.get_weights()
  kernel[..., 2] = 0.0
  bias[2] = 0.0
  se_reduce.set_weights([kernel, bias])
  structure = {'c1': c1, 'se_reduce': _mask('1101'), 'se_expand': c1}
  reduced = shrink.shrink_model(model, structure, transfer_weights=True)
  # c1 keeps 5 channels: the Reshape's target becomes (1, 1, 5).
  assert reduced.get_layer('se_reshape').target_shape == (1, 1, 5)
  assert tuple(reduced.get_layer('se_reduce').kernel.shape) == (1, 1, 5, 3)
  assert tuple(reduced.get_layer('se_expand').kernel.shape) == (1, 1, 3, 5)
  _same_outputs(model, reduced, (6, 6, 3), rng)


def test_reshape_to_a_flat_vector_behaves_like_flatten():
  rng = np.random.default_rng(2)
  image = keras.Input((3, 3, 2))
  x = L.Conv2D(4, 1, use_bias=False, name='c')(image)
  x = L.BatchNormalization(name='c_bn')(x)
  x = L.Reshape((36,), name='flat')(x)   # 3*3*4 = 36
  model = keras.Model(image, L.Dense(2, name='out')(x))
  alive = _mask('0110')
  _kill_bn(model.get_layer('c_bn'), alive, rng)
  reduced = shrink.shrink_model(model, {'c': alive}, transfer_weights=True)
  # 9 positions * 2 channels = 18.
  assert reduced.get_layer('flat').target_shape == (18,)
  assert tuple(reduced.get_layer('out').kernel.shape) == (18, 2)
  _same_outputs(model, reduced, (3, 3, 2), rng)


# ---------------------------------------------------------------------------
# Nested models.


def _backbone():
  image = keras.Input((6, 6, 3), name='bb_image')
  x = L.Conv2D(8, 3, padding='same', use_bias=False, name='bb_c1')(image)
  x = L.ReLU(name='bb_relu1')(L.BatchNormalization(name='bb_c1_bn')(x))
  y = L.Conv2D(8, 3, padding='same', use_bias=False, name='bb_c2')(x)
  y = L.BatchNormalization(name='bb_c2_bn')(y)
  x = L.ReLU(name='bb_relu2')(L.Add(name='bb_add')([x, y]))
  return keras.Model(image, x, name='backbone')


def test_nested_backbone_with_a_head_is_rebuilt_recursively():
  rng = np.random.default_rng(3)
  backbone = _backbone()
  image = keras.Input((6, 6, 3), name='image')
  x = backbone(image)
  x = L.Conv2D(6, 1, use_bias=False, name='head')(x)
  x = L.BatchNormalization(name='head_bn')(x)
  x = L.GlobalAveragePooling2D(name='pool')(x)
  model = keras.Model(image, L.Dense(3, name='logits')(x), name='outer')
  c1, c2 = _mask('11010011'), _mask('10010011')
  _kill_bn(backbone.get_layer('bb_c1_bn'), c1, rng)
  _kill_bn(backbone.get_layer('bb_c2_bn'), c2 | c1, rng)
  _kill_bn(model.get_layer('head_bn'), _mask('110111'), rng)
  structure = {'bb_c1': c1, 'bb_c2': c2, 'head': _mask('110111')}
  reduced = shrink.shrink_model(model, structure, transfer_weights=True)
  inner = reduced.get_layer('backbone')
  assert isinstance(inner, keras.Model)
  # The residual Add ties bb_c1 and bb_c2: OR of the masks = 11010011 -> 5 channels.
  assert inner.get_layer('bb_c1').filters == 5 and inner.get_layer('bb_c2').filters == 5
  assert tuple(reduced.get_layer('head').kernel.shape) == (1, 1, 5, 5)
  _same_outputs(model, reduced, (6, 6, 3), rng)


def test_nested_sequential_head_follows_a_changed_input():
  image = keras.Input((4, 4, 3))
  x = L.Conv2D(6, 1, name='c')(image)
  head = keras.Sequential([keras.Input((4, 4, 6)), L.Conv2D(4, 1, name='head_conv'),
                           L.GlobalAveragePooling2D(), L.Dense(2, name='head_out')],
                          name='head')
  model = keras.Model(image, head(x))
  reduced = shrink.shrink_model(model, {'c': 3, 'head_conv': 2})
  new_head = reduced.get_layer('head')
  assert isinstance(new_head, keras.Sequential)
  assert tuple(new_head.get_layer('head_conv').kernel.shape) == (1, 1, 3, 2)
  assert shrink.output_width_layers(model) == ['head_out']


# ---------------------------------------------------------------------------
# Custom layers.


class _Block(L.Layer):
  """A residual block holding its own conv and BN: out = x + bn(conv(x))."""

  def __init__(self, filters, inner=4, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.inner = inner
    self.expand = L.Conv2D(inner, 1, use_bias=False, name=f'{self.name}_expand')
    self.project = L.Conv2D(filters, 1, use_bias=False, name=f'{self.name}_project')

  def call(self, x):
    return x + self.project(ops.relu(self.expand(x)))

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters, 'inner': self.inner}


def _block_model():
  image = keras.Input((4, 4, 3))
  x = L.Conv2D(6, 1, use_bias=False, name='stem')(image)
  x = _Block(6, name='block')(x)
  return keras.Model(image, L.Dense(2, name='out')(L.GlobalAveragePooling2D()(x)))


def test_custom_layer_without_a_rebuilder_names_the_layer_and_the_hook():
  model = _block_model()
  with pytest.raises(ValueError, match=r"Layer 'block' \(_Block\) holds width layers .*"
                                       r"register_layer_rebuilder\(_Block"):
    shrink.shrink_model(model, {'stem': 4})
  with pytest.raises(ValueError, match=r"'block_expand', which is inside layer 'block' "
                                       r"\(_Block\).*register_layer_rebuilder"):
    shrink.shrink_model(model, {'block_expand': 2})
  # An inner layer keeping its width (e.g. every channel alive) needs no rebuilder.
  rebuilt = shrink.shrink_model(model, {'block_expand': [True] * 4, 'stem': [True] * 6})
  assert rebuilt.get_layer('block').inner == 4


def test_custom_layer_with_a_registered_rebuilder():
  rng = np.random.default_rng(4)
  model = _block_model()

  def rebuild_block(layer, context):
    new = _Block(context.input_width(), inner=context.width(f'{layer.name}_expand',
                                                            layer.inner), name=layer.name)
    return new, [context.input_channels[0]]

  def transfer_block(old, new, context):
    keep_in = context.input_channels[0]
    keep_mid = context.entry(f'{old.name}_expand')
    expand = old.expand.kernel.numpy()[:, :, keep_in][..., keep_mid]
    project = old.project.kernel.numpy()[:, :, keep_mid][..., keep_in]
    new.expand.kernel.assign(expand)
    new.project.kernel.assign(project)

  shrink.register_layer_rebuilder(_Block, rebuild_block, transfer_fn=transfer_block,
                                  output_follows_input=True)
  try:
    stem = _mask('101101')
    kernel = model.get_layer('stem').kernel.numpy()
    kernel[..., ~stem] = 0.0
    model.get_layer('stem').kernel.assign(kernel)
    block = model.get_layer('block')
    project = block.project.kernel.numpy()
    project[..., ~stem] = 0.0  # the block adds nothing to dead channels
    block.project.kernel.assign(project)
    expand_mask = _mask('1011')
    expand = block.expand.kernel.numpy()
    expand[..., ~expand_mask] = 0.0
    block.expand.kernel.assign(expand)
    reduced = shrink.shrink_model(model, {'stem': stem, 'block_expand': expand_mask},
                                  transfer_weights=True)
    new_block = reduced.get_layer('block')
    assert (new_block.filters, new_block.inner) == (4, 3)
    _same_outputs(model, reduced, (4, 4, 3), rng)
  finally:
    shrink.unregister_layer_rebuilder(_Block)


def test_register_layer_rebuilder_rejects_bad_arguments():
  with pytest.raises(TypeError, match='needs a layer class'):
    shrink.register_layer_rebuilder('Block', lambda layer, context: None)
  with pytest.raises(TypeError, match='rebuild_fn must be callable'):
    shrink.register_layer_rebuilder(_Block, 3)


# ---------------------------------------------------------------------------
# Conv1D (dilated), Dense on rank > 2.


def test_conv1d_with_dilation():
  rng = np.random.default_rng(5)
  audio = keras.Input((32, 2))
  x = L.Conv1D(8, 5, padding='same', use_bias=False, name='c1')(audio)
  x = L.ReLU()(L.BatchNormalization(name='c1_bn')(x))
  x = L.Conv1D(6, 3, dilation_rate=2, use_bias=False, name='c2')(x)
  x = L.ReLU()(L.BatchNormalization(name='c2_bn')(x))
  model = keras.Model(audio, L.Dense(3, name='out')(L.GlobalAveragePooling1D()(x)))
  c1, c2 = _mask('01111010'), _mask('110101')
  _kill_bn(model.get_layer('c1_bn'), c1, rng)
  _kill_bn(model.get_layer('c2_bn'), c2, rng)
  reduced = shrink.shrink_model(model, {'c1': c1, 'c2': c2}, transfer_weights=True)
  assert tuple(reduced.get_layer('c2').kernel.shape) == (3, 5, 4)
  assert reduced.get_layer('c2').dilation_rate == (2,)
  _same_outputs(model, reduced, (32, 2), rng)


def test_dense_on_a_feature_map():
  rng = np.random.default_rng(6)
  image = keras.Input((4, 4, 6))
  x = L.Dense(8, use_bias=False, name='d1')(image)   # pointwise: (4, 4, 8)
  x = L.ReLU()(L.BatchNormalization(name='d1_bn')(x))
  x = L.Dense(5, name='d2')(x)
  model = keras.Model(image, x)
  alive = _mask('11001101')
  _kill_bn(model.get_layer('d1_bn'), alive, rng)
  reduced = shrink.shrink_model(model, {'d1': alive}, transfer_weights=True)
  assert tuple(reduced.get_layer('d2').kernel.shape) == (5, 5)
  _same_outputs(model, reduced, (4, 4, 6), rng)


# ---------------------------------------------------------------------------
# Channel split.


def _csp_model(split_fn):
  image = keras.Input((4, 4, 3))
  x = L.Conv2D(8, 1, use_bias=False, name='stem')(image)
  x = L.ReLU()(L.BatchNormalization(name='stem_bn')(x))
  a, b = split_fn(x)
  b = L.Conv2D(4, 3, padding='same', use_bias=False, name='branch')(b)
  b = L.ReLU()(L.BatchNormalization(name='branch_bn')(b))
  x = L.Concatenate(name='cat')([a, b])
  x = L.Conv2D(5, 1, name='fuse')(x)
  return keras.Model(image, x)


@pytest.mark.parametrize('split_fn', [
    lambda x: ops.split(x, 2, axis=-1),
    lambda x: ops.split(x, [3], axis=-1),
], ids=['halves', 'indices'])
def test_channel_split_outputs_are_slices_of_the_input(split_fn):
  rng = np.random.default_rng(7)
  model = _csp_model(split_fn)
  stem, branch = _mask('10110111'), _mask('1011')
  _kill_bn(model.get_layer('stem_bn'), stem, rng)
  _kill_bn(model.get_layer('branch_bn'), branch, rng)
  reduced = shrink.shrink_model(model, {'stem': stem, 'branch': branch},
                                transfer_weights=True)
  split_at = model.get_layer('cat').input[0].shape[-1]
  kept = [int(stem[:split_at].sum()), int(stem[split_at:].sum())]
  assert [t.shape[-1] for t in reduced.get_layer('cat').input] == [kept[0], 3]
  assert tuple(reduced.get_layer('branch').kernel.shape) == (3, 3, kept[1], 3)
  _same_outputs(model, reduced, (4, 4, 3), rng)


def test_channel_split_with_an_empty_slice_is_an_error():
  model = _csp_model(lambda x: ops.split(x, 2, axis=-1))
  with pytest.raises(ValueError, match=r'would produce empty outputs \[0\]'):
    shrink.shrink_model(model, {'stem': _mask('00001111')})


def test_channel_split_with_counts_needs_equal_halves():
  model = _csp_model(lambda x: ops.split(x, [3], axis=-1))
  with pytest.raises(ValueError, match='the new width of each slice is unknown'):
    shrink.shrink_model(model, {'stem': 6})
  halves = shrink.shrink_model(_csp_model(lambda x: ops.split(x, 2, axis=-1)), {'stem': 6})
  assert tuple(halves.get_layer('branch').kernel.shape) == (3, 3, 3, 4)


# ---------------------------------------------------------------------------
# Grouped convolutions.


def _grouped_model(groups, c_in=8, c_out=8):
  image = keras.Input((5, 5, 3))
  x = L.Conv2D(c_in, 1, use_bias=False, name='stem')(image)
  x = L.ReLU()(L.BatchNormalization(name='stem_bn')(x))
  x = L.Conv2D(c_out, 3, padding='same', groups=groups, use_bias=False, name='gconv')(x)
  x = L.ReLU()(L.BatchNormalization(name='gconv_bn')(x))
  return keras.Model(image, L.Conv2D(3, 1, name='out')(x))


def test_grouped_conv_keeps_the_same_positions_in_every_group():
  rng = np.random.default_rng(8)
  model = _grouped_model(groups=2)
  # groups=2, C_in = C_out = 8: a = b = 4; positions tied across the 2 groups.
  stem, gconv = _mask('10111011'), _mask('01100110')
  _kill_bn(model.get_layer('stem_bn'), stem, rng)
  _kill_bn(model.get_layer('gconv_bn'), gconv, rng)
  reduced = shrink.shrink_model(model, {'stem': stem, 'gconv': gconv}, transfer_weights=True)
  new = reduced.get_layer('gconv')
  # 3 local input positions kept (1, 0, 1, 1) x 2 groups = 6; output 2 x 2 = 4.
  assert new.groups == 2 and new.filters == 4
  assert tuple(new.kernel.shape) == (3, 3, 3, 4)
  _same_outputs(model, reduced, (5, 5, 3), rng)


def test_grouped_conv_input_masks_are_ored_across_groups():
  model = _grouped_model(groups=2)
  # stem keeps 1000 0100: the positions are tied, so 1100 1100 survives.
  reduced = shrink.shrink_model(model, {'stem': _mask('10000100')})
  assert reduced.get_layer('stem').filters == 4
  assert reduced.get_layer('gconv').kernel.shape[2] == 2


def test_grouped_conv_inconsistent_mask_is_an_error():
  with pytest.raises(ValueError, match=r"grouped convolution 'gconv' \(groups=2\).*"
                                       r"keeps different positions in different groups"):
    shrink.shrink_model(_grouped_model(groups=2), {'gconv': _mask('11000100')})


def test_grouped_conv_width_not_a_multiple_of_groups_is_an_error():
  with pytest.raises(ValueError, match=r"output width 5, which is not a multiple of groups=2"):
    shrink.shrink_model(_grouped_model(groups=2), {'gconv': 5})
  with pytest.raises(ValueError, match=r"input width 3, which is not a multiple of groups=2"):
    shrink.shrink_model(_grouped_model(groups=2), {'stem': 3})


def test_grouped_conv_with_groups_equal_to_the_input_is_depthwise():
  rng = np.random.default_rng(9)
  # groups = C_in = 4, C_out = 8: output channels 2k, 2k+1 belong to input channel k.
  model = _grouped_model(groups=4, c_in=4, c_out=8)
  stem = _mask('1011')
  _kill_bn(model.get_layer('stem_bn'), stem, rng)
  _kill_bn(model.get_layer('gconv_bn'), np.repeat(stem, 2), rng)
  structure = {'stem': stem, 'gconv': np.repeat(stem, 2)}
  reduced = shrink.shrink_model(model, structure, transfer_weights=True)
  new = reduced.get_layer('gconv')
  assert (new.groups, new.filters) == (3, 6)
  assert tuple(new.kernel.shape) == (3, 3, 1, 6)
  _same_outputs(model, reduced, (5, 5, 3), rng)


def test_nested_model_called_on_inputs_with_different_channels_is_an_error():
  inner_input = keras.Input((4, 4, 6))
  inner = keras.Model(inner_input, L.Conv2D(2, 1, name='inner_conv')(inner_input),
                      name='shared')
  image = keras.Input((4, 4, 3))
  a = L.Conv2D(6, 1, name='a')(image)
  b = L.Conv2D(6, 1, name='b')(image)
  model = keras.Model(image, L.Concatenate(name='cat')([inner(a), inner(b)]))
  reduced = shrink.shrink_model(model, {'a': 4, 'b': 4})
  assert reduced.get_layer('shared').get_layer('inner_conv').kernel.shape[2] == 4
  with pytest.raises(ValueError, match=r"Nested model 'shared' is called more than once, "
                                       r"on inputs that would get different channels"):
    shrink.shrink_model(model, {'a': 4, 'b': 5})
