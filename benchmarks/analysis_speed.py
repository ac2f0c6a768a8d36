"""Benchmark: analysis and first evaluation of cost and term, per model.

For each Keras model (224x224, batch 1, GammaFlopsRegularizer; models without
batch-norm gammas: GroupLassoFlopsRegularizer, marked (GL)) it reports

  trace s, analysis s, first get_cost() s, first get_regularization_term() s,
  eager get_cost() ms per call (median), cost-function nodes (ops in the
  graph of a tf.function calling get_cost()), extra memory (RSS growth over
  the first cost and term and 200 reads, MiB), and the ratio
  (analysis + first cost + first term) / trace.

The model's own trace is the unit of the ratio, so the figure carries from
machine to machine (target, issue 13: <= 1.0 for every keras.applications
model; eager get_cost <= 1 ms; extra memory <= 50 MiB). Each model runs in a
fresh subprocess (clean memory figures). `--per-op` also times today's per-op
`CostCalculator` on the same manager (first cost + first term, nodes) and
checks the values agree; `--graph` times building cost and term for a
ResNet-152 v1 graph in tf.compat.v1 mode, per-op vs compiled.

Run: python benchmarks/analysis_speed.py [--all] [--per-op] [--graph]
     [--record] [--models ResNet50 DenseNet201 ...] [--fit DenseNet201 [--batch 8] [--steps 20]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import results_table  # noqa: E402

TITLE = ('Analysis speed, compiled cost (224x224, batch 1, GammaFlops; ratio = '
         '(analysis + 1st cost + 1st term) / trace)')
COLUMNS = ('model', 'op slices', 'trace s', 'analysis s', '1st cost s',
           '1st term s', 'ratio', 'get_cost ms/call', 'cost nodes',
           'extra MiB', 'per-op 1st cost+term s (nodes)')
DEFAULT_MODELS = ('ResNet50', 'ResNet152', 'InceptionV3', 'MobileNetV2',
                  'EfficientNetB0', 'DenseNet201')


def _rss_mib() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def _nodes(fn) -> int:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph = tf.function(fn, autograph=False).get_concrete_function().graph
  return len(graph.get_operations())


def measure_one(name: str, size: int, per_op: bool) -> dict:
  """Measures one keras.applications model in this process."""
  import keras  # pylint: disable=g-import-not-at-top
  from morph_net.keras_integration import tracing  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import cost_calculator  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import resource_function  # pylint: disable=g-import-not-at-top

  model = getattr(keras.applications, name)(weights=None,
                                            input_shape=(size, size, 3))
  start = time.perf_counter()
  traced = tracing.trace_model(model)
  traced_at = time.perf_counter()
  if any(isinstance(layer, keras.layers.BatchNormalization) and layer.scale
         for layer in tracing._all_layers(model)):  # pylint: disable=protected-access
    reg = flop_regularizer.GammaFlopsRegularizer(traced.output_ops,
                                                 gamma_threshold=1e-2)
  else:  # No batch norm (VGG, ConvNeXt): group lasso on the kernels.
    reg = flop_regularizer.GroupLassoFlopsRegularizer(traced.output_ops,
                                                      threshold=1e-2)
  analysed_at = time.perf_counter()
  rss_before = _rss_mib()
  cost = float(reg.get_cost())
  cost_at = time.perf_counter()
  term = float(reg.get_regularization_term())
  term_at = time.perf_counter()
  runs = []
  for _ in range(5):
    begin = time.perf_counter()
    for _ in range(40):
      reg.get_cost()
    runs.append((time.perf_counter() - begin) / 40 * 1e3)
  rss_after = _rss_mib()
  manager = reg.op_regularizer_manager
  row = dict(
      model=name if isinstance(reg, flop_regularizer.GammaFlopsRegularizer)
      else name + ' (GL)', ops=len(manager.ops),
      slices=sum(len(manager.get_op_slices(op)) for op in manager.ops),
      flops=cost, trace=traced_at - start, analysis=analysed_at - traced_at,
      first_cost=cost_at - analysed_at, first_term=term_at - cost_at,
      ms_per_call=statistics.median(runs), nodes=_nodes(reg.get_cost),
      term_nodes=_nodes(reg.get_regularization_term),
      extra_mib=rss_after - rss_before,
      fallback_ops=len(reg._calculator.program.fallback_ops))  # pylint: disable=protected-access
  row['ratio'] = (row['analysis'] + row['first_cost'] + row['first_term']) / row['trace']
  if per_op:
    calculator = cost_calculator.CostCalculator(
        manager, resource_function.flop_function)
    begin = time.perf_counter()
    reference_cost = float(calculator.get_cost())
    reference_term = float(calculator.get_regularization_term())
    row['per_op_first'] = time.perf_counter() - begin
    row['per_op_nodes'] = _nodes(calculator.get_cost)
    row['per_op_rel_diff'] = max(abs(cost / reference_cost - 1),
                                 abs(term / reference_term - 1))
  return row


def _resnet152_v1_graph(tf):
  """A ResNet-152 v1 graph of raw ops (conv + fused batch norm + relu)."""
  graph = tf.Graph()
  counter = [0]
  with graph.as_default():
    def conv_bn(x, out, kernel, stride=1, relu=True):
      counter[0] += 1
      name = f'unit{counter[0]}'
      w = tf.compat.v1.get_variable(
          name + '/w', [kernel, kernel, x.shape[-1], out], use_resource=True,
          initializer=tf.compat.v1.ones_initializer())
      y = tf.nn.conv2d(x, w, stride, 'SAME')
      gamma = tf.compat.v1.get_variable(
          name + '/gamma', [out], use_resource=True,
          initializer=tf.compat.v1.ones_initializer())
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(y, gamma, tf.zeros([out]),
                                                 is_training=True)
      return tf.nn.relu(y) if relu else y

    x = tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3])
    x = conv_bn(x, 64, 7, 2)
    x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
    for stage, (units, depth) in enumerate(((3, 64), (8, 128), (36, 256),
                                            (3, 512))):
      for unit in range(units):
        stride = 2 if unit == 0 and stage > 0 else 1
        shortcut = x
        if unit == 0:
          shortcut = conv_bn(x, depth * 4, 1, stride, relu=False)
        y = conv_bn(x, depth, 1, stride)
        y = conv_bn(y, depth, 3)
        y = conv_bn(y, depth * 4, 1, relu=False)
        x = tf.nn.relu(shortcut + y)
    x = tf.reduce_mean(x, [1, 2])
    w = tf.compat.v1.get_variable('logits/w', [2048, 1000], use_resource=True)
    logits = tf.matmul(x, w)
  return graph, logits


def measure_graph_mode() -> dict:
  """Per-op vs compiled build of cost + term on a ResNet-152 v1 graph."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import compiled_cost  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import cost_calculator  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import resource_function  # pylint: disable=g-import-not-at-top

  graph, logits = _resnet152_v1_graph(tf)
  with graph.as_default():
    begin = time.perf_counter()
    reg = flop_regularizer.GammaFlopsRegularizer([logits.op], 1e-2)
    manager_s = time.perf_counter() - begin
    manager = reg.op_regularizer_manager
    timings = {}
    tensors = {}
    # Interleaved, each path on a fresh calculator; the median of 3.
    for _ in range(3):
      for kind, cls in (('per_op', cost_calculator.CostCalculator),
                        ('compiled', compiled_cost.CompiledCostCalculator)):
        calculator = cls(manager, resource_function.flop_function)
        begin = time.perf_counter()
        tensors[kind] = (calculator.get_cost(),
                         calculator.get_regularization_term())
        timings.setdefault(kind, []).append(time.perf_counter() - begin)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(tensors)
  per_op = statistics.median(timings['per_op'])
  compiled = statistics.median(timings['compiled'])
  diff = max(abs(values['compiled'][i] / values['per_op'][i] - 1)
             for i in range(2))
  return dict(manager_s=manager_s, per_op_s=per_op, compiled_s=compiled,
              speedup=per_op / compiled, rel_diff=diff)


def measure_fit(name: str, size: int, steps: int = 20, batch: int = 1) -> dict:
  """Train-step time with and without the term (GammaFlops), batch `batch`.

  Two `tf.function` train steps (forward, loss, gradients) on the same model,
  one with `1e-9 * get_regularization_term()` added to the loss, called in
  alternation `steps` times; the overhead is the median of the paired
  differences (with - without, adjacent calls) over the median plain step.
  Also a step computing only the term's gradients, returning one scalar (their
  sum) as a train step keeps them in the graph: returning ~200 gradient
  tensors from a function costs more than computing them. Returns the
  first-call (trace) and median step times.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from morph_net.network_regularizers import flop_regularizer  # pylint: disable=g-import-not-at-top

  model = getattr(keras.applications, name)(weights=None,
                                            input_shape=(size, size, 3))
  reg = flop_regularizer.GammaFlopsRegularizer.from_keras_model(
      model, gamma_threshold=1e-2)
  x = tf.constant(np.random.default_rng(0).random((batch, size, size, 3)),
                  tf.float32)
  y = tf.constant([3] * batch)
  loss_fn = keras.losses.SparseCategoricalCrossentropy()
  variables = model.trainable_variables

  def step(with_term):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
      if with_term:
        loss = loss + 1e-9 * reg.get_regularization_term()
    return tape.gradient(loss, variables)

  def term_step():
    with tf.GradientTape() as tape:
      term = reg.get_regularization_term()
    return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(term, variables)
                     if g is not None])

  functions = {'plain': tf.function(lambda: step(False)),
               'morph': tf.function(lambda: step(True)),
               'term': tf.function(term_step)}
  first = {}
  for kind, function in functions.items():
    begin = time.perf_counter()
    function()
    first[kind] = time.perf_counter() - begin
  times = {kind: [] for kind in functions}
  for _ in range(steps):
    for kind, function in functions.items():
      begin = time.perf_counter()
      function()
      times[kind].append(time.perf_counter() - begin)
  median = {kind: statistics.median(t) for kind, t in times.items()}
  differences = [m - p for m, p in zip(times['morph'], times['plain'])]
  # Standard error of a median: ~1.2533 sigma / sqrt(n) (normal noise).
  error = (1.2533 * statistics.stdev(differences) / len(differences)**0.5
           if len(differences) > 1 else float('nan'))
  return dict(model=name, first=first, median=median,
              overhead=statistics.median(differences) / median['plain'],
              overhead_error=error / median['plain'],
              term_share=median['term'] / median['plain'])


def _all_application_models():
  import keras  # pylint: disable=g-import-not-at-top
  names = []
  for name in dir(keras.applications):
    value = getattr(keras.applications, name)
    if name[:1].isupper() and callable(value):
      names.append(name)
  return sorted(names)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='*', default=None)
  parser.add_argument('--all', action='store_true',
                      help='every model of keras.applications')
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--per-op', action='store_true',
                      help='also time the per-op CostCalculator')
  parser.add_argument('--graph', action='store_true',
                      help='graph mode: ResNet-152 v1 build, per-op vs compiled')
  parser.add_argument('--batch', type=int, default=1,
                      help='batch size of the --fit train steps')
  parser.add_argument('--fit', metavar='MODEL',
                      help='train-step time with / without the term')
  parser.add_argument('--steps', type=int, default=20,
                      help='alternating train steps of --fit')
  parser.add_argument('--record', action='store_true',
                      help='append the rows to benchmarks/README.md')
  parser.add_argument('--one', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(measure_one(args.one, args.size, args.per_op)))
    return
  if args.fit:
    f = measure_fit(args.fit, args.size, steps=args.steps, batch=args.batch)
    print(f'{f["model"]} train step (batch {args.batch}): plain {f["median"]["plain"]:.3f} s, '
          f'with term {f["median"]["morph"]:.3f} s (overhead, median of '
          f'{args.steps} paired differences: {100 * f["overhead"]:+.2f} '
          f'± {100 * f["overhead_error"]:.2f} %), term gradients alone '
          f'{f["median"]["term"] * 1e3:.1f} ms ({100 * f["term_share"]:.2f} % of '
          f'a step); first call: plain {f["first"]["plain"]:.1f} s, with term '
          f'{f["first"]["morph"]:.1f} s, term gradients alone '
          f'{f["first"]["term"]:.2f} s')
    return
  names = (_all_application_models() if args.all
           else args.models or list(DEFAULT_MODELS))
  rows = []
  header = (f'{"model":<18} {"slices":>6} {"trace s":>7} {"anal s":>6} '
            f'{"cost s":>6} {"term s":>6} {"ratio":>6} {"ms/call":>7} '
            f'{"nodes":>5} {"MiB":>5}')
  if args.per_op:
    header += f' {"per-op s":>8} {"per-op nodes":>12} {"rel diff":>8}'
  print(header, flush=True)
  for name in names:
    command = [sys.executable, __file__, '--one', name, '--size', str(args.size)]
    if args.per_op:
      command.append('--per-op')
    result = subprocess.run(command, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                [os.path.dirname(os.path.dirname(
                                    os.path.abspath(__file__)))] + sys.path)))
    if result.returncode != 0:
      print(f'{name:<18} failed: {result.stderr.strip().splitlines()[-1:]}',
            flush=True)
      continue
    r = json.loads(result.stdout.strip().splitlines()[-1])
    rows.append(r)
    line = (f'{r["model"]:<18} {r["slices"]:>6} {r["trace"]:>7.2f} '
            f'{r["analysis"]:>6.2f} {r["first_cost"]:>6.2f} '
            f'{r["first_term"]:>6.2f} {r["ratio"]:>6.2f} '
            f'{r["ms_per_call"]:>7.2f} {r["nodes"]:>5} {r["extra_mib"]:>5.0f}')
    if args.per_op:
      line += (f' {r["per_op_first"]:>8.2f} {r["per_op_nodes"]:>12} '
               f'{r["per_op_rel_diff"]:>8.1e}')
    print(line, flush=True)
    if args.record:
      per_op = (f'{r["per_op_first"]:.2f} ({r["per_op_nodes"]})'
                if args.per_op else '-')
      results_table.record(TITLE, COLUMNS, [
          r['model'], r['slices'], f'{r["trace"]:.2f}', f'{r["analysis"]:.2f}',
          f'{r["first_cost"]:.2f}', f'{r["first_term"]:.2f}',
          f'{r["ratio"]:.2f}', f'{r["ms_per_call"]:.2f}', r['nodes'],
          f'{r["extra_mib"]:.0f}', per_op], keep=60)
  if rows:
    worst = max(rows, key=lambda r: r['ratio'])
    print(f'worst ratio (analysis + first cost + first term) / trace: '
          f'{worst["ratio"]:.2f} ({worst["model"]}); target <= 1.0')
  if args.graph:
    g = measure_graph_mode()
    print(f'graph mode ResNet-152 v1: manager {g["manager_s"]:.2f} s; cost + '
          f'term build per-op {g["per_op_s"]:.2f} s, compiled '
          f'{g["compiled_s"]:.2f} s: x{g["speedup"]:.1f} (target >= 10); '
          f'values rel diff {g["rel_diff"]:.1e}')


if __name__ == '__main__':
  main()
