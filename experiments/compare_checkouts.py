"""Times a config's train step in two checkouts of this repository, alternately in one process.

  git worktree add ../before HEAD~1
  python experiments/compare_checkouts.py --config=configs/permuted_mnist.py --task=2 \
      --before=../before

On a shared machine the same step's time drifts by 10-20% from one minute to
the next (the 2-core AMD EPYC this project measures on), so two versions timed
one after the other can differ by more than the change between them. Here both
are compiled in one process (each checkout's `hypermask_jax` is imported in
turn), set to the same task on the same synthetic data, and called
alternately, `--calls` times each, so that both see the same drift (in the
order ABBA ABBA ..., so that neither always runs right after the other). It
prints each version's time per step for every call, their fastest and median,
the median of the ratios this / before of the calls made one after the other
(the pairs see the same minutes: the steadiest figure on a noisy machine),
and the largest difference between the two versions' parameters after the same
steps (0: the change left the numbers as they were; a checkout from before the
targets' Dense layers took PyTorch's [out, in] layout is compared transposed).
The version built first sometimes runs a few percent faster or slower than
the other for that alone (where the two held the same code, 5% apart in one
run and 1% in the next): run it with `--first=before` and `--first=this`.

The config is read from this checkout and given to both, with the settings
`benchmark_step.py` times under (`shortened_runs.for_step_timing`). The
compiled programs are kept in the config's compilation cache, as a run keeps
them (`--config.compilation_cache=''` turns it off): a checkout whose program
is the same as the other's, or as an earlier command's, loads it instead of
compiling it. The two versions' kernels of `hypermask_jax/cpu_kernels.cc`
are named by their source's hash, so a program is shared only where they are
the same too. On the 2-core AMD EPYC (Zen 3), the Split MNIST small config
at task 2 with two copies of one checkout took 45 s without the cache, 29.5 s
with it empty and 12 s with it filled.

--before_env sets environment variables while the before version is built
and compiled, and restores them after. With --before=. it times a choice of
`hypermask_jax/backend.py` against the default, in the same code:

  python experiments/compare_checkouts.py --config=configs/hnet_permuted_mnist.py \
      --task=10 --steps=20 --before=. --before_env=HYPERMASK_CPU_YNNPACK=on
"""

import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
from flax import traverse_util
import jax
import numpy as np

from experiments import shortened_runs
from experiments import step_chunks
from hypermask_jax import config_files
from hypermask_jax import environment
from hypermask_jax import errors

config_files.define_flag('configs/permuted_mnist.py', 'Config to time.')
_BEFORE = flags.DEFINE_string('before', None, 'The other checkout (a folder holding '
                              'hypermask_jax/), e.g. a `git worktree` of an earlier commit.')
_TASK = flags.DEFINE_integer('task', 1, 'The task to time, numbered from 1.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Steps per call (one compiled chunk).')
_CALLS = flags.DEFINE_integer('calls', 8, 'Timed calls per version, alternating.')
_BEFORE_ENV = flags.DEFINE_list('before_env', [], 'VAR=VALUE,... set while the before version '
                                 'is built and compiled (the backend choices, for example).')
_FIRST = flags.DEFINE_enum('first', 'before', ['before', 'this'],
                           'The version compiled (and its state allocated) first.')


def as_weights_of(a, b):
  """a's {path: array}, each 'kernel' that b holds as a 'weight' transposed to it.

  A checkout from before the targets' Dense layers took PyTorch's layout
  (`layers.Linear`) holds a Dense 'kernel' [..., in, out] where later ones hold
  the 'weight' [..., out, in]: the same numbers.
  """
  out = {}
  for path, array in a.items():
    weight = path[:-1] + ('weight',)
    if path[-1] == 'kernel' and path not in b and weight in b:
      out[weight] = np.swapaxes(array, -1, -2)
    else:
      out[path] = array
  return out


def parameter_difference(a, b, steps):
  """A line: the largest difference between two versions' parameters, if they have the same."""
  a, b = (traverse_util.flatten_dict(jax.device_get(params)) for params in (a, b))
  a, b = as_weights_of(a, b), as_weights_of(b, a)
  if {p: x.shape for p, x in a.items()} != {p: x.shape for p, x in b.items()}:
    return f'parameters after {steps} steps: not compared, the two versions have different ones'
  difference, where = max((float(np.max(np.abs(a[p] - b[p]), initial=0.0)), p) for p in a)
  return (f'largest parameter difference after {steps} steps: {difference:.3g}'
          + (f' (in {"/".join(where)})' if difference else ''))


def variables(pairs):
  """{name: value} of --before_env's VAR=VALUE pairs."""
  split = [pair.partition('=') for pair in pairs]
  if any(not name or not equals for name, equals, _ in split):
    raise errors.BadInput(f'--before_env must list VAR=VALUE pairs; got {",".join(pairs)!r}')
  return {name: value for name, _, value in split}


def main(argv):
  del argv
  before_env = variables(_BEFORE_ENV.value)
  before = pathlib.Path(_BEFORE.value or '').resolve()
  if not _BEFORE.value or not (before / 'hypermask_jax' / '__init__.py').is_file():
    raise errors.BadInput(f'--before must name a checkout holding hypermask_jax/; got '
                          f'{_BEFORE.value!r}')
  if _STEPS.value < 1 or _CALLS.value < 1:
    raise errors.BadInput(f'--steps and --calls must be at least 1; got {_STEPS.value} and '
                          f'{_CALLS.value}')
  config = flags.FLAGS.config
  if not 1 <= _TASK.value <= config.num_tasks:
    raise errors.BadInput(f'--task must be in [1, {config.num_tasks}]; got {_TASK.value}')
  shortened_runs.for_step_timing(config, _STEPS.value, _CALLS.value)
  environment.use_compilation_cache(config.compilation_cache)
  checkouts = {'before': before, 'this': step_chunks.THIS_CHECKOUT}
  order = ('before', 'this') if _FIRST.value == 'before' else ('this', 'before')
  versions = {name: step_chunks.build(checkouts[name], config, _TASK.value - 1, _STEPS.value,
                                      env=before_env if name == 'before' else None)
              for name in order}
  def timer(version):
    def call():
      tic = time.perf_counter()
      version.state = jax.block_until_ready(version.run(version.state))
      return 1e3 * (time.perf_counter() - tic) / _STEPS.value
    return call
  times = step_chunks.alternating({name: timer(versions[name]) for name in order}, _CALLS.value)
  print(f'task {_TASK.value}, {_CALLS.value} alternating calls of {_STEPS.value} steps each '
        '(ms/step):')
  for name, checkout in checkouts.items():
    t = times[name]
    print(f'{name:6s} {str(checkout):40s} fastest {min(t):9.2f}  median '
          f'{statistics.median(t):9.2f}  calls {" ".join(f"{x:.1f}" for x in t)}')
  ratios = [this / before for before, this in zip(times['before'], times['this'])]
  print(f'this / before, call by call: median {statistics.median(ratios):.3f}, this faster in '
        f'{sum(r < 1 for r in ratios)} of {len(ratios)} calls')
  if before_env:
    print(f'before built with {",".join(f"{k}={v}" for k, v in before_env.items())}')
  print(parameter_difference(*(version.state.params for version in versions.values()),
                             steps=_STEPS.value * (_CALLS.value + 1)))


if __name__ == '__main__':
  errors.run_script(main)
