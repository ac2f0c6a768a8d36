"""One iteration of the MorphNet loop on a tiny model and tiny data."""

import json
import os

import keras
import numpy as np
import pytest

from morph_net.keras_integration import morphnet_loop
from morph_net.network_regularizers.flop_regularizer import GammaFlopsRegularizer

L = keras.layers


def _model_fn():
  image = keras.Input((8, 8, 3), name='image')
  x = image
  for name, filters in (('c1', 6), ('c2', 8)):
    x = L.Conv2D(filters, 3, padding='same', use_bias=False, name=name)(x)
    x = L.ReLU(name=f'{name}_relu')(L.BatchNormalization(name=f'{name}_bn')(x))
  x = L.GlobalAveragePooling2D(name='pool')(x)
  model = keras.Model(image, L.Dense(2, name='logits')(x), name='tiny')
  # Channels 4..7 of c2 start far below the threshold (0.3): two Adam steps
  # (lr 1e-3) cannot bring them above it, so the learned structure is c2 = 4.
  model.get_layer('c2_bn').gamma.assign(np.array([1.0] * 4 + [0.05] * 4, np.float32))
  return model


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(16, 8, 8, 3)).astype('float32'),
          rng.integers(0, 2, size=16).astype('int32'))


def _compile_kwargs():
  return dict(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_one_iteration_writes_structure_and_costs(tmp_path):
  output_dir = str(tmp_path / 'run')
  result = morphnet_loop.run_morphnet(
      _model_fn, _data(), output_dir=output_dir, compile_kwargs=_compile_kwargs(),
      regularizer_class=GammaFlopsRegularizer,
      regularizer_kwargs=dict(gamma_threshold=0.3), iterations=1, epochs=1,
      regularization_strength=1e-6, fit_kwargs=dict(batch_size=8, verbose=0))
  # FLOPs, batch 1: c1 2*64*9*3*c1 = 3456*c1; c2 2*64*9*c1*c2 = 1152*c1*c2;
  # logits 2*c2*2 = 4*c2. Seed (6, 8): 20736 + 55296 + 32 = 76064 = the target.
  assert result.target_cost == 76064
  iteration = result.iterations[0]
  assert iteration.learned_structure == {'c1': 6, 'c2': 4}
  expansion = iteration.expansion
  assert expansion.seed_cost == 76064
  # Shrunk (6, 4): 20736 + 27648 + 16 = 48400.
  assert expansion.shrunk_cost == 48400
  # omega*(6, 4): c1 -> 7 at 6.5/6, c2 -> 5 at 4.5/4, c1 -> 8 at 7.5/6, c2 -> 6 at 5.5/4.
  # (8, 5): 27648 + 46080 + 20 = 73748 <= 76064; (8, 6): 27648 + 55296 + 24 = 82968.
  assert expansion.widths == {'c1': 8, 'c2': 5}
  assert expansion.expanded_cost == 73748
  assert expansion.next_cost == 82968
  assert (result.model.get_layer('c1').filters, result.model.get_layer('c2').filters) == (8, 5)
  assert 'loss' in iteration.train_logs and 'FLOPs' in iteration.train_logs
  assert 'loss' in iteration.retrain_logs

  directory = os.path.join(output_dir, 'iteration_0')
  assert iteration.directory == directory
  with open(os.path.join(directory, 'learned_structure.json')) as f:
    assert json.load(f) == {'c1': 6, 'c2': 4}
  with open(os.path.join(directory, 'expanded_structure.json')) as f:
    assert json.load(f) == {'c1': 8, 'c2': 5}
  with open(os.path.join(directory, 'costs.json')) as f:
    costs = json.load(f)
  assert costs['cost_name'] == 'FLOPs'
  assert (costs['seed_cost'], costs['shrunk_cost'], costs['expanded_cost'],
          costs['target_cost']) == (76064, 48400, 73748, 76064)
  # The callback's export: 16 examples / batch 8 = 2 steps.
  with open(os.path.join(directory, 'learned_structure', 'alive_2')) as f:
    assert json.load(f) == {'c1': 6, 'c2': 4}
  with open(os.path.join(output_dir, 'morphnet_run.json')) as f:
    summary = json.load(f)
  assert [r['widths'] for r in summary['iterations']] == [{'c1': 8, 'c2': 5}]
  leftovers = [name for _, _, files in os.walk(output_dir) for name in files
               if '.tmp-' in name]
  assert not leftovers  # Atomic writes leave no temporary file behind.


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(iterations=0), ValueError, r'iterations must be an integer >= 1'),
    (dict(epochs=-1), ValueError, r'epochs must be an integer >= 0'),
    (dict(retrain_epochs=1.5), ValueError, r'retrain_epochs must be an integer >= 0'),
    (dict(compile_kwargs=dict(optimizer='adam')), ValueError, r'at least `optimizer` and `loss`'),
    (dict(regularizer_class='GammaFlops'), TypeError, 'must be a NetworkRegularizer class'),
])
def test_bad_arguments(tmp_path, kwargs, error, match):
  arguments = dict(output_dir=str(tmp_path), compile_kwargs=_compile_kwargs(),
                   regularizer_class=GammaFlopsRegularizer,
                   regularizer_kwargs=dict(gamma_threshold=0.3))
  arguments.update(kwargs)
  with pytest.raises(error, match=match):
    morphnet_loop.run_morphnet(_model_fn, _data(), **arguments)


def test_model_must_be_a_keras_model(tmp_path):
  with pytest.raises(TypeError, match='must be a Keras model or a function returning one'):
    morphnet_loop.run_morphnet(lambda: 'not a model', _data(), output_dir=str(tmp_path),
                               compile_kwargs=_compile_kwargs(),
                               regularizer_class=GammaFlopsRegularizer)


def test_shrink_to_a_target_then_expand_back(tmp_path):
  result = morphnet_loop.run_morphnet(
      _model_fn, _data(), output_dir=str(tmp_path / 'run'),
      compile_kwargs=_compile_kwargs(), regularizer_class=GammaFlopsRegularizer,
      regularizer_kwargs=dict(gamma_threshold=0.3), iterations=1, epochs=1,
      retrain_epochs=0, shrink_target_fraction=0.6,
      fit_kwargs=dict(batch_size=8, verbose=0))
  iteration = result.iterations[0]
  # cost(a, b) = 3456 a + 1152 a b + 4 b. The initial cost is that of the
  # alive channels, (6, 4): 48400, so the shrink target is 0.6 * 48400 = 29040.
  # Saving of one channel at (6, 4): c1 3456 + 1152 * 4 = 8064; c2 1152 * 6
  # + 4 = 6916; gammas ~1, so c1's go first: (4, 4) 32272 > 29040,
  # (3, 4) 10368 + 13824 + 16 = 24208 <= 29040. Refill: a dead c2 channel
  # (gamma 0.05) adds 1152 * 3 + 4 = 3460: (3, 5) 27668 <= 29040; a second
  # one or a c1 channel would exceed.
  assert iteration.shrink['completed']
  assert iteration.shrink['target_cost'] == pytest.approx(29040)
  assert iteration.learned_structure == {'c1': 3, 'c2': 5}
  assert iteration.expansion.shrunk_cost == 27668
  # Expanded back to the seed's 76064: c1 = round(3 w) steps at w = 1.5, 1.833,
  # c2 = round(5 w) at 1.5, 1.7, 1.9: (5, 9) at w = 1.7 costs
  # 17280 + 51840 + 36 = 69156 <= 76064; (6, 9) at 1.833 costs 82980.
  assert iteration.expansion.widths == {'c1': 5, 'c2': 9}
  assert iteration.expansion.expanded_cost == 69156
  with open(os.path.join(iteration.directory, 'costs.json')) as f:
    assert json.load(f)['shrink']['exported_cost'] == 27668
