"""The issue-11 coverage table: every model of tests/keras_integration/coverage_models.

Runs the checks of `tests/keras_integration/coverage_test.py` (`check_case`) on
each model and prints one Markdown row per model: regularizer, FLOPs and model
size (independent count; the check asserts `get_cost()` equals it), FLOPs of the
reduced network (= the predicted cost with the seeded dead channels), parameters
before / after `shrink_model(..., transfer_weights=True)` (outputs checked equal,
rel 1e-4), seconds, and the error of a failing check.

Run from the repository root:
  python benchmarks/coverage_table.py [case names...]
The rows are printed; paste them into docs/coverage.md.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import keras  # noqa: E402

from tests.keras_integration import coverage_models  # noqa: E402
from tests.keras_integration import coverage_test  # noqa: E402


def _row(case) -> str:
  keras.backend.clear_session()
  start = time.perf_counter()
  try:
    r = coverage_test.check_case(case)
  except Exception as e:  # pylint: disable=broad-except  # the row reports it
    message = ' '.join(str(e).split())[:200].replace('|', '/')
    return (f'| {case.name} | {case.source} | | | | | | fails: {type(e).__name__}: '
            f'{message} | {time.perf_counter() - start:.0f} |')
  seconds = time.perf_counter() - start
  head = (f"| {case.name} | {case.source} | {r['regularizer']} | {r['flops'] / 1e6:.3f} "
          f"| {r['size']} ")
  if 'rejected' in r:  # cost = count checked; shrink_model rejected it as expected
    return (f"{head}| | | cost = count passes; shrink rejected by design "
            f"({r['rejected']}) | {seconds:.0f} |")
  return (f"{head}| {r['reduced_flops'] / 1e6:.3f} | {r['params']} → "
          f"{r['reduced_params']} | passes | {seconds:.0f} |")


def main(names) -> None:
  print('| model | source | regularizer | MFLOPs (= count) | model size (= count) | '
        'reduced MFLOPs (= predicted) | params → after shrink | checks | seconds |')
  print('|---|---|---|---:|---:|---:|---|---|---:|')
  for case in coverage_models.all_cases():
    if names and case.name not in names:
      continue
    print(_row(case), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
