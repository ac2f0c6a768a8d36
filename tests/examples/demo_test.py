"""The demo's pieces that need no training: seed network, FLOPs, matching."""

import keras
import numpy as np
import pytest

from morph_net.examples import demo
from morph_net.keras_integration import expand

L = keras.layers

LAYERS = ['stem_conv', 'res_a_conv', 'res_b_conv', 'down_conv', 'mix_1x1_conv',
          'mix_3x3_conv', 'head_conv']


def _seed_widths(width):
  return {name: (2 * width if name in ('down_conv', 'head_conv') else width)
          for name in LAYERS}


def _hand_flops(w):
  # 8x8x1 input, SAME padding, FLOPs = 2*H_out*W_out*kh*kw*C_in*C_out:
  return (2 * 8 * 8 * 9 * 1 * w          # stem
          + 2 * 8 * 8 * 9 * w * w * 2    # res_a, res_b
          + 2 * 4 * 4 * 9 * w * 2 * w    # down, stride 2 -> 4x4
          + 2 * 4 * 4 * 1 * 2 * w * w    # mix_1x1
          + 2 * 4 * 4 * 9 * 2 * w * w    # mix_3x3
          + 2 * 2 * 2 * 9 * 2 * w * 2 * w  # head on concat (2w), stride 2 -> 2x2
          + 2 * 2 * w * 10)              # dense logits


def test_seed_model_layout_and_flops():
  model = demo.seed_model(8)
  kinds = [type(layer).__name__ for layer in model.layers]
  assert 'Add' in kinds and 'Concatenate' in kinds
  convs = [layer for layer in model.layers if isinstance(layer, L.Conv2D)]
  assert [c.name for c in convs] == LAYERS
  for conv in convs:  # every conv feeds a BatchNormalization
    consumer = conv._outbound_nodes[0].operation
    assert isinstance(consumer, L.BatchNormalization)
  assert model.output_shape == (None, 10)
  # w = 8: 9216 + 147456 + 36864 + 4096 + 36864 + 18432 + 320 = 253248.
  assert _hand_flops(8) == 253248
  assert demo.flops_fn()(model) == 253248


def test_seed_model_rejects_bad_width():
  with pytest.raises(ValueError, match='width must be a positive integer'):
    demo.seed_model(0)


def test_flop_gap():
  assert demo.flop_gap(100.0, 98.0) == pytest.approx(0.02)
  assert demo.flop_gap(98.0, 100.0) == pytest.approx(0.02)


def test_match_budget_keeps_both_networks_within_budget_and_within_two_percent():
  seed = demo.seed_model(8)
  cost_fn = demo.flops_fn()
  learned = {'stem_conv': 5, 'res_a_conv': 2, 'res_b_conv': 5, 'down_conv': 9,
             'mix_1x1_conv': 3, 'mix_3x3_conv': 4, 'head_conv': 16}
  budget = _hand_flops(8) / 4
  pair = demo.match_budget(seed, _seed_widths(8), learned, budget, cost_fn)
  for candidate in (pair.morphnet, pair.uniform):
    assert candidate.flops <= budget
    assert candidate.flops == cost_fn(demo.build_network(seed, candidate.widths, 0))
  assert pair.flop_gap <= 0.02
  # The baseline is a uniform scaling of the seed; MorphNet one of the learned widths.
  omega = pair.uniform.width_multiplier
  assert pair.uniform.widths == expand.scale_structure(_seed_widths(8), omega)
  assert pair.morphnet.widths == expand.scale_structure(
      learned, pair.morphnet.width_multiplier)


def test_uniform_widths_of_the_full_budget_are_the_seed():
  seed = demo.seed_model(4)
  pair = demo.match_budget(seed, _seed_widths(4), _seed_widths(4), _hand_flops(4))
  # The learned structure is the seed's: both families give the seed itself.
  assert pair.uniform.widths == pair.morphnet.widths == _seed_widths(4)
  assert pair.uniform.flops == _hand_flops(4) and pair.rounds == 0


def test_format_report_lists_every_layer_and_network():
  widths = _seed_widths(8)
  learned = dict(widths, res_a_conv=3)
  network = demo.NetworkResult(family='uniform', width_multiplier=1.0, budget=253248.0,
                               flops=253248.0, accuracy=0.9, widths=widths)
  result = demo.DemoResult(
      config=demo.QUICK_CONFIG, layers=LAYERS, seed_widths=widths, learned_widths=learned,
      expanded_widths=widths, seed_flops=253248.0, learned_flops=200000.0,
      expanded_flops=253248.0, expanded_width_multiplier=1.0,
      regularization_strength=1e-5, regularized_accuracy=0.5,
      networks=[network, demo.NetworkResult('MorphNet', 1.1, 253248.0, 250000.0, 0.91,
                                            learned)],
      train_examples=256, test_examples=450, seconds=1.0,
      files={'results': 'out/demo_results.json'})
  text = demo.format_report(result)
  for layer in LAYERS:
    assert layer in text
  assert '253,248' in text and '79.0%' in text  # 200000 / 253248 = 79.0%
  assert 'uniform: seed × 1' in text and 'MorphNet: learned × 1.1' in text
  assert '91.0%' in text


def test_cosine_retrain_schedule_decays_to_zero_over_the_retraining():
  # 8 images, batch 4, 2 epochs: 2 * ceil(8 / 4) = 4 steps; CosineDecay(lr, 4)
  # gives lr * 0.5 * (1 + cos(pi * step / 4)): lr * 0.5 after 2 steps, 0 after 4.
  rng = np.random.default_rng(0)
  data = (rng.random((8, 8, 8, 1)).astype('float32'), np.arange(8) % 10)
  config = demo.DemoConfig(width=2, retrain_epochs=2, batch_size=4, learning_rate=1e-2,
                           retrain_schedule='cosine')
  model = demo.seed_model(2)
  demo.train_and_evaluate(model, data, data, config, seed_value=0)
  schedule = model.optimizer._learning_rate  # pylint: disable=protected-access
  assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
  assert model.optimizer.iterations.numpy() == 4
  assert float(schedule(2)) == pytest.approx(0.5e-2)
  assert float(schedule(4)) == pytest.approx(0.0, abs=1e-9)
  constant = demo.seed_model(2)
  demo.train_and_evaluate(constant, data, data,
                          demo.DemoConfig(width=2, retrain_epochs=2, batch_size=4,
                                          learning_rate=1e-2), seed_value=0)
  assert float(constant.optimizer.learning_rate) == pytest.approx(1e-2)


def test_unknown_retrain_schedule_is_an_error():
  with pytest.raises(ValueError, match=r"retrain_schedule must be one of constant, cosine. "
                                       r"Received: retrain_schedule='linear'"):
    demo.train_and_evaluate(demo.seed_model(2), (np.zeros((2, 8, 8, 1)), np.zeros(2)),
                            (np.zeros((2, 8, 8, 1)), np.zeros(2)),
                            demo.DemoConfig(retrain_schedule='linear'), seed_value=0)
