"""Tests of expand: rounding rule, never above the target, maximal, costs reported."""

import itertools
import math
from fractions import Fraction

import keras
import numpy as np
import pytest

from morph_net.keras_integration import expand
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer

L = keras.layers


def _chain():
  image = keras.Input((8, 8, 3), name='image')
  x = image
  for name, filters in (('c1', 8), ('c2', 12)):
    x = L.Conv2D(filters, 3, padding='same', use_bias=False, name=name)(x)
    x = L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(image, L.Dense(5, name='logits')(x), name='chain')


def _chain_flops(c1, c2):
  # 2*S*K*C_in*C_out with S = 8*8, K = 3*3: c1 = 2*64*9*3*c1 = 3456*c1,
  # c2 = 2*64*9*c1*c2 = 1152*c1*c2; logits 2*c2*5 = 10*c2.
  return 3456 * c1 + 1152 * c1 * c2 + 10 * c2


def _hand_cost(model):
  """The chain's FLOPs from its layer widths (a cheap, exact cost function)."""
  return float(_chain_flops(model.get_layer('c1').filters, model.get_layer('c2').filters))


def _rounded(w, omega):
  # The documented rule: max(1, floor(omega * w + 1/2)), 0 stays 0.
  return 0 if w == 0 else max(1, math.floor(Fraction(omega) * w + Fraction(1, 2)))


def test_scale_structure_rounds_half_up_with_at_least_one_channel():
  structure = {'a': 3, 'b': 5, 'c': 0, 'dw/depthwise': 4}
  # 1.5*3 + 0.5 = 5 -> 5; 1.5*5 + 0.5 = 8 -> 8; zero stays zero; depthwise key dropped.
  assert expand.scale_structure(structure, 1.5) == {'a': 5, 'b': 8, 'c': 0}
  # 0.1*3 + 0.5 = 0.8 -> 0 -> at least 1; 0.1*5 + 0.5 = 1.0 -> 1.
  assert expand.scale_structure(structure, 0.1) == {'a': 1, 'b': 1, 'c': 0}
  # Exactly half way rounds up: 0.5*3 + 0.5 = 2.
  assert expand.scale_structure({'a': 3}, 0.5) == {'a': 2}
  assert expand.scale_structure({'a': 3}, Fraction(7, 6)) == {'a': 4}  # 3.5 + 0.5 = 4


@pytest.mark.parametrize('omega, error, match', [
    (0, ValueError, 'finite and > 0'),
    (-1.0, ValueError, 'finite and > 0'),
    (float('nan'), ValueError, 'finite and > 0'),
    ('2', TypeError, 'must be a number'),
])
def test_scale_structure_rejects_bad_multipliers(omega, error, match):
  with pytest.raises(error, match=match):
    expand.scale_structure({'a': 3}, omega)


def _brute_force(structure, target, top=8):
  """Widths of the largest multiplier within target, scanning every breakpoint."""
  points = sorted({Fraction(2 * n + 1, 2 * w) for w in structure.values() if w
                   for n in range(1, top * w + 1)} | {Fraction(1, 100)})
  best = None
  for omega in points:
    widths = {k: _rounded(w, omega) for k, w in structure.items()}
    if _chain_flops(widths['c1'], widths['c2']) <= target:
      best = widths
  return best


@pytest.mark.parametrize('target', [5000, 60000, 138360, 400000])
def test_expansion_never_exceeds_the_target_and_is_maximal(target):
  structure = {'c1': 3, 'c2': 7}
  result = expand.expand_structure(_chain(), structure, target, _hand_cost)
  assert result.expanded_cost <= target
  assert result.expanded_cost == _chain_flops(result.widths['c1'], result.widths['c2'])
  # One rounding step up exceeds it.
  assert result.next_cost > target
  assert result.next_cost == _chain_flops(result.next_widths['c1'], result.next_widths['c2'])
  steps = [result.next_widths[k] - result.widths[k] for k in structure]
  assert min(steps) >= 0 and max(steps) == 1
  # Both multipliers reproduce their widths with the documented rule.
  assert {k: _rounded(w, result.width_multiplier) for k, w in structure.items()} == result.widths
  assert ({k: _rounded(w, result.next_width_multiplier) for k, w in structure.items()}
          == result.next_widths)
  assert result.min_width_multiplier < result.width_multiplier < result.next_width_multiplier
  # Same answer as an exhaustive scan of all multipliers.
  assert result.widths == _brute_force(structure, target)
  # Seed (8, 12): 27648 + 110592 + 120; shrunk (3, 7): 10368 + 24192 + 70.
  assert result.seed_cost == 138360
  assert result.shrunk_cost == 34630


def test_expansion_with_the_regularizer_cost_to_the_seed_cost():
  cost_fn = expand.regularizer_cost_fn(GammaFlopsRegularizer, gamma_threshold=1e-2)
  result = expand.expand_structure(_chain(), {'c1': 3, 'c2': 7}, 138360, cost_fn)
  # omega*(3, 7): c2 steps to 15 at 14.5/7 = 29/14, c1 to 7 at 6.5/3 = 13/6.
  # (6, 15): 3456*6 + 1152*6*15 + 10*15 = 20736 + 103680 + 150 = 124566 <= 138360;
  # (7, 15): 24192 + 120960 + 150 = 145302 > 138360.
  assert result.widths == {'c1': 6, 'c2': 15}
  assert result.expanded_cost == 124566
  assert result.next_widths == {'c1': 7, 'c2': 15}
  assert result.next_cost == 145302
  assert result.min_width_multiplier == pytest.approx(29 / 14)
  assert result.next_width_multiplier == pytest.approx(13 / 6)
  assert result.seed_cost == 138360
  assert result.shrunk_cost == 34630
  assert result.as_dict()['widths'] == {'c1': 6, 'c2': 15}


def test_residual_group_keeps_equal_widths():
  image = keras.Input((8, 8, 3))
  stem = L.Conv2D(8, 3, padding='same', name='stem')(image)
  branch = L.Conv2D(6, 3, padding='same', name='a')(stem)
  branch = L.Conv2D(8, 3, padding='same', name='b')(branch)
  x = L.Add(name='add')([stem, branch])
  model = keras.Model(image, L.Dense(4, name='logits')(L.GlobalAveragePooling2D()(x)))

  def cost(m):
    s, a = m.get_layer('stem').filters, m.get_layer('a').filters
    assert m.get_layer('b').filters == s
    # stem 2*64*9*3*s; a 2*64*9*s*a; b 2*64*9*a*s; logits 2*s*4.
    return float(3456 * s + 2 * 1152 * s * a + 8 * s)

  for target in (50000, 90000, 200000):
    expanded, result = expand.expand_model(model, {'stem': 5, 'a': 2, 'b': 5}, target, cost)
    assert result.widths['stem'] == result.widths['b']
    assert expanded.get_layer('stem').filters == result.widths['stem']
    assert result.expanded_cost <= target < result.next_cost


def test_the_classifier_is_not_scaled():
  with_logits = expand.expand_structure(_chain(), {'c1': 3, 'c2': 7, 'logits': 2}, 60000,
                                        _hand_cost)
  without = expand.expand_structure(_chain(), {'c1': 3, 'c2': 7}, 60000, _hand_cost)
  assert with_logits.widths == without.widths
  assert 'logits' not in with_logits.widths


def test_structure_as_masks_is_counted():
  masks = {'c1': np.array([True, False] * 4), 'c2': np.arange(12) < 7}
  assert expand.learned_counts(masks) == {'c1': 4, 'c2': 7}


def test_target_below_the_smallest_network():
  # Every width 1: 3456 + 1152 + 10 = 4618 FLOPs.
  with pytest.raises(ValueError, match=r'below the cost of the smallest network .*4618'):
    expand.expand_structure(_chain(), {'c1': 3, 'c2': 7}, 4000, _hand_cost)


def test_target_never_reached():
  with pytest.raises(ValueError, match='stays within target_cost'):
    expand.expand_structure(_chain(), {'c1': 3, 'c2': 7}, 1e12, _hand_cost,
                            max_width_multiplier=4)


@pytest.mark.parametrize('target, error, match', [
    ('big', TypeError, 'target_cost must be a number'),
    (True, TypeError, 'target_cost must be a number'),
    (0, ValueError, 'finite and > 0'),
    (float('inf'), ValueError, 'finite and > 0'),
])
def test_bad_target(target, error, match):
  with pytest.raises(error, match=match):
    expand.expand_structure(_chain(), {'c1': 3}, target, _hand_cost)


def test_structure_without_live_layers():
  with pytest.raises(ValueError, match='no layer of width > 0'):
    expand.expand_structure(_chain(), {'c1': 0}, 1000, _hand_cost)


def test_regularizer_cost_fn_needs_a_regularizer_class():
  with pytest.raises(TypeError, match='must be a NetworkRegularizer class'):
    expand.regularizer_cost_fn(dict)


def test_every_width_vector_is_costed_once():
  calls = []

  def cost(model):
    calls.append((model.get_layer('c1').filters, model.get_layer('c2').filters))
    return _hand_cost(model)

  result = expand.expand_structure(_chain(), {'c1': 3, 'c2': 7}, 138360, cost)
  assert len(calls) == len(set(calls)) == result.evaluations
  # A bisection over the breakpoints, not a scan of them all.
  breakpoints = list(itertools.chain.from_iterable(
      [Fraction(2 * n + 1, 2 * w) for n in range(1, 4 * w)] for w in (3, 7)))
  assert result.evaluations < len(breakpoints)
