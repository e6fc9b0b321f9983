"""What drawing batches by epoch, without replacement, costs against uniform draws with replacement.

  python experiments/benchmark_batches.py

1. One batch draw (128 of 60000 examples, jitted, 200 draws per timing):
   - by epoch: tasks.draw_batch (swap-or-not positions of the epoch's permutation);
   - uniform with replacement (jax.random.randint, the library's former sampler);
   - by epoch from a sorted permutation (jax.random.permutation of the whole
     set, recomputed each step: what a keyed permutation without the
     swap-or-not shuffle costs).
2. Whole training steps of the small configs (HyperMask and HNET, synthetic
   data of Permuted MNIST's shapes) with the epoch sampler and with uniform
   draws in its place, timed in the same process, interleaved and repeated.
Each figure is the median (and range) over --repeats timings.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import hnet_permuted_mnist
from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import errors
from hypermask_jax import train
from hypermask_jax.data import tasks

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timings per variant (interleaved).')
N, BATCH, DRAWS = 60000, 128, 200


def uniform_batch(split, task, key, step, batch_size):
  """Uniform draws with replacement, keyed by (key, step)."""
  idx = split.offset[task] + jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0,
                                                split.size[task])
  return split.images[idx], split.labels[idx], task


def sorted_permutation_batch(split, task, key, step, batch_size):
  """The epoch stream of tasks.draw_batch, from whole sorted permutations of the task's set."""
  n = split.max_size
  pos = step * batch_size + jnp.arange(batch_size)
  first = (step * batch_size) // n
  perms = [jax.random.permutation(jax.random.fold_in(key, first + e), n) for e in (0, 1)]
  index = jnp.where(pos // n == first, perms[0][pos % n], perms[1][pos % n])
  idx = split.offset[task] + index
  return split.images[idx], split.labels[idx], task


def time_draws(draw, split):
  @jax.jit
  def many(key):
    def body(step, total):
      return total + jnp.sum(draw(split, 0, key, step, BATCH)[1])
    return jax.lax.fori_loop(0, DRAWS, body, 0)
  many(jax.random.key(0)).block_until_ready()
  tic = time.perf_counter()
  many(jax.random.key(1)).block_until_ready()
  return (time.perf_counter() - tic) / DRAWS


def compiled_steps(config, draw):
  """A function timing one call of training steps of `config` with `draw` as the sampler."""
  original = tasks.draw_batch
  tasks.draw_batch = draw  # seen when the chunk is traced, below
  try:
    trainer = train.build_for(config)[1]
    state, data, hp = trainer.fresh(tasks.synthetic_task_set(config), [config])
    steps = np.int32(trainer.max_steps_per_call)
    state = trainer.begin_task(state, 1, hp)
    state, _ = trainer.train_steps(state, data, hp, steps)
    jax.block_until_ready(state)
  finally:
    tasks.draw_batch = original

  def seconds_per_step():
    nonlocal state
    state = trainer.begin_task(state, 1, hp)
    tic = time.perf_counter()
    state, _ = trainer.train_steps(state, data, hp, steps)
    jax.block_until_ready(state)
    return (time.perf_counter() - tic) / int(steps)
  return seconds_per_step


def summary(times, unit=1e6, label='us'):
  times = np.array(times) * unit
  return f'{np.median(times):9.1f} {label} (range {times.min():.1f}-{times.max():.1f})'


def main(argv):
  del argv
  split = tasks.Split(images=jnp.zeros((N, 1, 1, 1), jnp.uint8), labels=jnp.arange(N),
                      offset=jnp.zeros(1, jnp.int32), size=jnp.full(1, N, jnp.int32),
                      max_size=N)
  samplers = {'by epoch (swap-or-not)': tasks.draw_batch, 'uniform with replacement':
              uniform_batch, 'by epoch (sorted permutation)': sorted_permutation_batch}
  times = {name: [] for name in samplers}
  for _ in range(_REPEATS.value):
    for name, draw in samplers.items():
      times[name].append(time_draws(draw, split))
  print(f'one batch draw ({BATCH} of {N}), per draw:')
  for name, t in times.items():
    print(f'  {name:<32s}{summary(t)}')

  configs = {}
  for module in (permuted_mnist, hnet_permuted_mnist):
    config = module.get_config('small')
    config.steps_per_task, config.log_every_steps = 200, 200
    configs[module.__name__.split('.')[-1] + ':small'] = config_checks.resolve(config)
  runs = {(c, s): compiled_steps(configs[c], samplers[s])
          for c in configs for s in list(samplers)[:2]}
  steps = {key: [] for key in runs}
  for _ in range(_REPEATS.value):
    for key, seconds_per_step in runs.items():
      steps[key].append(seconds_per_step())
  print('training step at task 2, per step:')
  for (c, s), t in steps.items():
    print(f'  {c:<28s}{s:<28s}{summary(t, 1e3, "ms")}')


if __name__ == '__main__':
  errors.run_script(main)
