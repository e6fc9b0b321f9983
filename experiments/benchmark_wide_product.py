"""Times the full hypernetwork's forward product in each of its forms (HYPERMASK_WIDE_PRODUCT).

  python experiments/benchmark_wide_product.py
  python experiments/benchmark_wide_product.py --rows=2,10 --calls=8

x [r, n] @ kernel [m, n]^T for r = each of --rows (the rows in use: the
current task's and the old tasks' in the regulariser), at the published
Permuted MNIST size by default (m = 2,036,010 generated weights, n = 100
hidden units). For each r it calls XLA's product and the CPU kernel
(`wide_dense.wide_rows_ffi`) in turn, --calls times each (alternating, so that
both see the machine's drift), and prints the fastest and median call of
each, the kernel's speed-up of the median, and the largest difference of the
kernel's outputs from XLA's, relative to their largest value. Each call
writes a new output, so its page faults are in its time, as in a step
without huge pages.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax
import numpy as np

from hypermask_jax import cpu_kernels
from hypermask_jax import errors
from hypermask_jax import wide_dense

_ROWS = flags.DEFINE_list('rows', ['1', '2', '4', '8', '10'], 'The row counts to time.')
_M = flags.DEFINE_integer('m', 2036010, "The kernel's rows (the generated weights).")
_N = flags.DEFINE_integer('n', 100, "The kernel's columns (the last hidden layer's units).")
_CALLS = flags.DEFINE_integer('calls', 6, 'Timed calls per form and row count, alternating.')


def main(argv):
  del argv
  if not all(r.isdigit() and int(r) >= 1 for r in _ROWS.value):
    raise errors.BadInput(f'--rows must list counts of at least 1, e.g. --rows=2,10; got '
                          f'{",".join(_ROWS.value)}')
  if min(_M.value, _N.value, _CALLS.value) < 1:
    raise errors.BadInput(f'--m, --n and --calls must be at least 1; got {_M.value}, '
                          f'{_N.value} and {_CALLS.value}')
  reason = cpu_kernels.unavailable_reason()
  if reason:
    raise errors.BadInput(f'the CPU kernel cannot run here: {reason}')
  kernel = jax.random.normal(jax.random.key(1), (_M.value, _N.value)) / _N.value ** 0.5
  forms = {'xla': jax.jit(lambda x, kernel: x @ kernel.T),
           'ffi': jax.jit(wide_dense.wide_rows_ffi)}
  print(f'x [r, {_N.value}] @ kernel [{_M.value}, {_N.value}]^T, {_CALLS.value} alternating '
        'calls each (ms per call: fastest / median)')
  for rows in map(int, _ROWS.value):
    x = jax.random.normal(jax.random.key(rows), (rows, _N.value))
    outputs = {name: jax.block_until_ready(fn(x, kernel)) for name, fn in forms.items()}
    times = {name: [] for name in forms}
    for call in range(_CALLS.value):
      for name in (forms if call % 2 == 0 else reversed(forms)):
        tic = time.perf_counter()
        jax.block_until_ready(forms[name](x, kernel))
        times[name].append(1e3 * (time.perf_counter() - tic))
    difference = float(np.max(np.abs(outputs['ffi'] - outputs['xla']))
                       / np.max(np.abs(outputs['xla'])))
    line = f'{rows:3d} rows:' + ''.join(
        f' | {name} {min(t):8.2f} / {np.median(t):8.2f}' for name, t in times.items())
    print(f'{line} | speed-up {np.median(times["xla"]) / np.median(times["ffi"]):.2f}x | '
          f'difference {difference:.1e}', flush=True)


if __name__ == '__main__':
  errors.run_script(main)
