"""The MorphNet algorithm end to end: learn, shrink, expand, retrain, repeat.

MorphNet (Gordon et al. 2018), Algorithm 1: train the seed network with the
resource-weighted sparsifying regularizer, read the learned widths O', find the
largest width multiplier ω with cost(ω·O') <= ζ, and repeat with ω·O' as the
new seed. `run_morphnet` runs `iterations` rounds of:

  1. train the current model with `MorphNetModel` (loss + strength · term)
     and `MorphNetCallback` (exports `learned_structure/alive_<step>`);
  2. read the learned structure O' (alive counts per layer);
  3. shrink: the cost of O' (the reduced network);
  4. expand: `expand_structure` to the target ζ (default: the cost of the
     first seed, as in the paper);
  5. retrain the expanded network from scratch (fresh weights, no
     regularizer) for `retrain_epochs`; it is the next iteration's seed.

Optionally (`recalibrate_steps`, `fine_tune_epochs`), each round also keeps
the *pruned* network (the paper's MobileNet protocol): the trained model
shrunk to O' with its surviving weights (`shrink_model(...,
transfer_weights=True)`, constants of removed channels folded), its
BatchNorm statistics re-estimated on `recalibrate_steps` training batches
(`recalibrate_batch_norm`) and fine-tuned for `fine_tune_epochs` epochs
(`IterationResult.pruned_model`, logs under `fine_tune_logs` in costs.json).

Output, per iteration, in `<output_dir>/iteration_<i>/`:

  learned_structure/alive_<step>   callback exports during step 1
  learned_structure.json           O' (alive counts by layer)
  expanded_structure.json          round(ω·O'), the next seed's widths
  costs.json                       cost name, target, seed / shrunk / expanded
                                   (and next-step) costs, ω, strength, and the
                                   final training / retraining logs

and `<output_dir>/morphnet_run.json` summarizing the iterations so far. Every
file is written atomically (temporary file + rename).

Example:

  result = run_morphnet(
      lambda: small_cnn(), (x, y),
      output_dir='morphnet_run',
      compile_kwargs=dict(optimizer='adam', loss='sparse_categorical_crossentropy'),
      regularizer_class=GammaFlopsRegularizer,
      regularizer_kwargs=dict(gamma_threshold=1e-2),
      iterations=2, epochs=10)
  final_model = result.model
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from morph_net.framework import generic_regularizers
from morph_net.keras_integration import batch_norm_recalibration
from morph_net.keras_integration import budget
from morph_net.keras_integration import callback as callback_lib
from morph_net.keras_integration import expand
from morph_net.keras_integration import layer_structure
from morph_net.keras_integration import shrink
from morph_net.keras_integration import structure_io
from morph_net.keras_integration import training
from morph_net.tools import structure_exporter

# Constructor arguments that hold the alive threshold, set to 0 for costing
# fresh models (every channel alive).
_THRESHOLD_ARGUMENTS = ('gamma_threshold', 'threshold')


@dataclasses.dataclass(frozen=True)
class IterationResult:
  """One round of the algorithm.

  Attributes:
    iteration: its index, from 0.
    directory: `<output_dir>/iteration_<i>`.
    learned_structure: O', alive counts by layer.
    expansion: widths, ω and costs (seed, shrunk, expanded).
    regularization_strength: the strength used in training.
    cost_name: the regularizer's cost name (e.g. `FLOPs`).
    train_logs: last epoch's logs of the regularized training.
    retrain_logs: last epoch's logs of the retraining ({} if none).
    pruned_model: the trained model shrunk to O' with its weights,
      recalibrated and fine-tuned (None unless `recalibrate_steps` or
      `fine_tune_epochs` is set).
    fine_tune_logs: last epoch's logs of its fine-tuning ({} if none).
    shrink: in target mode, the shrink target and whether O' was completed to
      it (`budget.Completion.as_dict()`); else None.
  """
  iteration: int
  directory: str
  learned_structure: Dict[str, int]
  expansion: expand.ExpansionResult
  regularization_strength: float
  cost_name: str
  train_logs: Dict[str, float]
  retrain_logs: Dict[str, float]
  pruned_model: Optional[keras.Model] = None
  fine_tune_logs: Dict[str, float] = dataclasses.field(default_factory=dict)
  shrink: Optional[Dict[str, Any]] = None


@dataclasses.dataclass(frozen=True)
class MorphNetRunResult:
  """What `run_morphnet` returns.

  Attributes:
    model: the last expanded model (retrained if `retrain_epochs` > 0).
    iterations: one IterationResult per round.
    target_cost: the target ζ used.
  """
  model: keras.Model
  iterations: List[IterationResult]
  target_cost: float


def run_morphnet(model: Union[keras.Model, Callable[[], keras.Model]],
                 train_data: Any,
                 *,
                 output_dir: str,
                 compile_kwargs: Mapping[str, Any],
                 regularizer_class: type,
                 regularizer_kwargs: Optional[Mapping[str, Any]] = None,
                 target_cost: Optional[float] = None,
                 iterations: int = 1,
                 epochs: int = 1,
                 retrain_epochs: Optional[int] = None,
                 regularization_strength: Optional[float] = None,
                 fit_kwargs: Optional[Mapping[str, Any]] = None,
                 input_shape: Any = None,
                 max_width_multiplier: float = 64.0,
                 recalibrate_steps: int = 0,
                 fine_tune_epochs: int = 0,
                 shrink_target_cost: Optional[float] = None,
                 shrink_target_fraction: Optional[float] = None
                 ) -> MorphNetRunResult:
  """Runs `iterations` rounds of learn / shrink / expand / retrain.

  Args:
    model: the seed: a functional or Sequential Keras model (trained in place
      in iteration 0, from its current weights), or a function returning one.
    train_data: what `fit` trains on: a tuple `(x, y)` or `(x, y,
      sample_weight)` is passed as `fit(x, y, ...)`; anything else (a
      `tf.data.Dataset`, a generator, a PyDataset) as `fit(train_data)`.
    output_dir: where every iteration writes its files (created).
    compile_kwargs: `compile` arguments, e.g. `dict(optimizer='adam',
      loss=...)`. An optimizer instance is copied from its config for every
      model; a callable returning an optimizer is called for every model.
    regularizer_class: the network regularizer class, e.g.
      `GammaFlopsRegularizer`; its `cost_name` is the unit of the target.
    regularizer_kwargs: its keyword arguments (e.g. `gamma_threshold=1e-2`,
      `hardware='V100'`). To cost fresh models their threshold is set to 0
      (every channel of a fresh model alive).
    target_cost: the target ζ. Defaults to the cost of the first seed.
    iterations: number of rounds, >= 1. Defaults to 1.
    epochs: epochs of regularized training per round. Defaults to 1.
    retrain_epochs: epochs of plain retraining of each expanded model. Defaults
      to `epochs`; 0 skips retraining (the next seed then starts from fresh
      weights).
    regularization_strength: the strength of the term. Defaults to
      `recommend_strength` (1 / the seed's cost) in every round.
    fit_kwargs: more `fit` arguments (e.g. `batch_size`, `verbose`,
      `callbacks`, `validation_data`), used for training and retraining.
    input_shape: passed to `from_keras_model` (unknown spatial sizes).
    max_width_multiplier: passed to `expand_structure`.
    recalibrate_steps: batches of `train_data` on which the pruned model's
      BatchNorm statistics are re-estimated (`recalibrate_batch_norm`; array
      data is batched by `fit_kwargs['batch_size']`, default 32). Defaults
      to 0: no pruned model unless `fine_tune_epochs` is set.
    fine_tune_epochs: epochs of fine-tuning of the pruned model (the trained
      model shrunk with its weights, after recalibration), with
      `compile_kwargs` and `fit_kwargs`. Defaults to 0.
    shrink_target_cost / shrink_target_fraction: train each round in target
      mode (`MorphNetModel(target_cost=...)`, the strength adapts, see
      `budget`) to this cost, or this fraction of the round's initial cost
      (`get_cost()` of the model at the start of the round); O' is
      then the structure within that target (completed if training stopped
      above it), which is expanded back to `target_cost`: the paper's
      shrink-to-a-target-then-expand loop.

  Returns:
    A MorphNetRunResult.

  Raises:
    ValueError: bad `iterations` / `epochs` / `retrain_epochs`, or an error of a
      step (see `shrink_model`, `expand_structure`).
  """
  _check_count('iterations', iterations, minimum=1)
  _check_count('epochs', epochs, minimum=0)
  retrain_epochs = epochs if retrain_epochs is None else retrain_epochs
  _check_count('retrain_epochs', retrain_epochs, minimum=0)
  _check_count('recalibrate_steps', recalibrate_steps, minimum=0)
  _check_count('fine_tune_epochs', fine_tune_epochs, minimum=0)
  if not (isinstance(regularizer_class, type)
          and issubclass(regularizer_class, generic_regularizers.NetworkRegularizer)):
    raise TypeError(
        'regularizer_class must be a NetworkRegularizer class such as '
        f'GammaFlopsRegularizer. Received: {regularizer_class!r}.')
  if 'optimizer' not in compile_kwargs or 'loss' not in compile_kwargs:
    raise ValueError(
        'compile_kwargs must give at least `optimizer` and `loss`. Received: '
        f'{sorted(compile_kwargs)}.')
  budget.check_target(shrink_target_cost, shrink_target_fraction)
  regularizer_kwargs = dict(regularizer_kwargs or {})
  fit_kwargs = dict(fit_kwargs or {})
  current = model() if callable(model) and not isinstance(model, keras.Model) else model
  if not isinstance(current, keras.Model):
    raise TypeError(
        'model must be a Keras model or a function returning one. Received: '
        f'{type(current).__name__}.')
  os.makedirs(output_dir, exist_ok=True)
  cost_kwargs = dict(regularizer_kwargs)
  for argument in _THRESHOLD_ARGUMENTS:
    if argument in cost_kwargs:
      cost_kwargs[argument] = 0.0
  cost_fn = expand.regularizer_cost_fn(regularizer_class, input_shape=input_shape,
                                       **cost_kwargs)
  if target_cost is None:
    target_cost = cost_fn(shrink.shrink_model(current, {}))
  results: List[IterationResult] = []
  for index in range(iterations):
    directory = os.path.join(output_dir, f'iteration_{index}')
    os.makedirs(directory, exist_ok=True)
    # 1. Regularized training, exporting the structure as it goes.
    regularizer = regularizer_class.from_keras_model(
        current, input_shape=input_shape, **regularizer_kwargs)
    strength = (training.recommend_strength(regularizer).strength
                if regularization_strength is None else float(regularization_strength))
    trainer = training.MorphNetModel(
        current, regularizer, regularization_strength=strength,
        target_cost=shrink_target_cost, target_fraction=shrink_target_fraction)
    trainer.compile(**_fresh_compile_kwargs(compile_kwargs))
    morphnet_callback = callback_lib.MorphNetCallback(regularizer, export_dir=directory)
    train_logs = _fit(trainer, train_data, epochs, fit_kwargs, [morphnet_callback])
    # 2. The learned structure O' (within the shrink target in target mode).
    if trainer.target_cost is not None and morphnet_callback.completion is None:
      morphnet_callback.completion = budget.complete_to_target(  # epochs == 0
          regularizer, trainer.target_cost)
    completion = morphnet_callback.completion
    learned = (layer_structure.LayerStructureExporter(regularizer).alive_counts()
               if completion is None else dict(completion.counts))
    structure_io.save_structure(os.path.join(directory, 'learned_structure.json'), learned)
    pruned, fine_tune_logs = None, {}
    if recalibrate_steps or fine_tune_epochs:
      # In target mode the pruned model is the completed structure (its
      # masks), not the channels alive in training.
      pruned, fine_tune_logs = _prune_and_fine_tune(
          current, regularizer if completion is None else completion.masks,
          train_data, compile_kwargs, fit_kwargs, recalibrate_steps, fine_tune_epochs)
    # 3-4. Shrink and expand to the target.
    expansion = expand.expand_structure(current, learned, target_cost, cost_fn,
                                        max_width_multiplier=max_width_multiplier)
    structure_io.save_structure(os.path.join(directory, 'expanded_structure.json'),
                                expansion.widths)
    # 5. Retrain the expanded network from scratch.
    expanded = shrink.shrink_model(current, expansion.widths)
    retrain_logs = {}
    if retrain_epochs > 0:
      expanded.compile(**_fresh_compile_kwargs(compile_kwargs))
      retrain_logs = _fit(expanded, train_data, retrain_epochs, fit_kwargs, [])
    result = IterationResult(
        iteration=index, directory=directory, learned_structure=learned,
        expansion=expansion, regularization_strength=strength,
        cost_name=regularizer.cost_name, train_logs=train_logs,
        retrain_logs=retrain_logs, pruned_model=pruned, fine_tune_logs=fine_tune_logs,
        shrink=None if completion is None else completion.as_dict())
    _write_json(os.path.join(directory, 'costs.json'), _costs_record(result))
    results.append(result)
    _write_json(os.path.join(output_dir, 'morphnet_run.json'), {
        'target_cost': float(target_cost),
        'cost_name': regularizer.cost_name,
        'iterations': [_costs_record(r) for r in results],
    })
    current = expanded
  return MorphNetRunResult(model=current, iterations=results,
                           target_cost=float(target_cost))


def _prune_and_fine_tune(model, structure, train_data, compile_kwargs, fit_kwargs,
                         recalibrate_steps, fine_tune_epochs):
  """The trained model shrunk with its weights, recalibrated and fine-tuned.

  `structure` is the trained regularizer (its alive channels) or per-layer
  channel masks (a target-mode completion).
  """
  pruned = shrink.shrink_model(model, structure, transfer_weights=True)
  if recalibrate_steps:
    batch_norm_recalibration.recalibrate_batch_norm(
        pruned, train_data, recalibrate_steps,
        batch_size=int(fit_kwargs.get('batch_size') or 32))
  logs = {}
  if fine_tune_epochs:
    pruned.compile(**_fresh_compile_kwargs(compile_kwargs))
    logs = _fit(pruned, train_data, fine_tune_epochs, fit_kwargs, [])
  return pruned, logs


def _check_count(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}. Received: {name}={value!r}.')


def _fresh_compile_kwargs(compile_kwargs: Mapping[str, Any]) -> Dict[str, Any]:
  """compile arguments with an optimizer of its own (optimizers bind to variables)."""
  kwargs = dict(compile_kwargs)
  optimizer = kwargs['optimizer']
  if isinstance(optimizer, keras.optimizers.Optimizer):
    kwargs['optimizer'] = type(optimizer).from_config(optimizer.get_config())
  elif callable(optimizer) and not isinstance(optimizer, str):
    kwargs['optimizer'] = optimizer()
  return kwargs


def _fit(model, train_data, epochs, fit_kwargs, callbacks) -> Dict[str, float]:
  if epochs == 0:
    return {}
  kwargs = dict(fit_kwargs)
  kwargs['callbacks'] = list(callbacks) + list(kwargs.get('callbacks') or [])
  kwargs['epochs'] = epochs
  if isinstance(train_data, tuple) and len(train_data) in (2, 3):
    history = model.fit(*train_data, **kwargs)
  else:
    history = model.fit(train_data, **kwargs)
  return {key: _to_float(values[-1]) for key, values in history.history.items() if values}


def _to_float(value: Any) -> Optional[float]:
  try:
    number = float(np.asarray(value))
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def _costs_record(result: IterationResult) -> Dict[str, Any]:
  record = {
      'iteration': result.iteration,
      'cost_name': result.cost_name,
      'regularization_strength': result.regularization_strength,
      'learned_structure': result.learned_structure,
      'train_logs': result.train_logs,
      'retrain_logs': result.retrain_logs,
      'fine_tune_logs': result.fine_tune_logs,
  }
  if result.shrink is not None:
    record['shrink'] = result.shrink
  record.update(result.expansion.as_dict())
  return record


def _write_json(path: str, content: Mapping[str, Any]) -> None:
  structure_exporter.write_file_atomically(
      path, json.dumps(content, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  if isinstance(value, (tf.Tensor, np.ndarray)):
    return np.asarray(value).tolist()
  return str(value)
