"""Runs a long task sequence (e.g. Permuted MNIST-100) with a tiny step budget and prints, per
task, the memory in use, and the trace counts (nothing may recompile).

  python experiments/long_sequence.py --config=configs/hnet_permuted_mnist_100.py:small
  python experiments/long_sequence.py --config=configs/hnet_permuted_mnist_100.py --only_task=100

With a random subset of old tasks per step (reg_subset > 0) the memory must
not grow after the first task; with all old tasks regularised (reg_subset=0)
it grows with the tasks seen. --only_task=N trains task N alone (its N-1
previous tasks regularised) and prints the peak memory: what the whole
sequence needs at its largest.

Data is synthetic with the benchmark's shapes. Memory is the device's bytes in
use (and peak) where the backend reports them (GPU, TPU), else the process's
resident set (and its high-water mark).
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax
import numpy as np

from hypermask_jax import config_checks
from hypermask_jax import config_files
from hypermask_jax import errors
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS

config_files.define_flag('configs/hnet_permuted_mnist_100.py', 'Config to run.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Training steps per task.')
_ONLY_TASK = flags.DEFINE_integer('only_task', None, 'Train only this task (1-based) and print '
                                  'the peak memory.')


def memory_in_use():
  """Bytes in use on the default device, or the process's resident set on the CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_in_use' in stats:
    return stats['bytes_in_use']
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * 4096


def peak_memory():
  """The device's peak bytes in use, or the process's resident high-water mark on the CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use']
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM'))


def run(config, steps, only_task=None):
  """Trains every task of `config` (or only task `only_task`, 1-based) for `steps` steps.

  Returns (memory after each task trained, traces).
  """
  with config.unlocked():
    config.steps_per_task = steps
    config.log_every_steps = steps
  config = config_checks.resolve(config)
  data = tasks.synthetic_task_set(config)
  trainer = trainer_lib.Trainer(config, METHODS[config.method](config, data.input_shape,
                                                           data.num_classes))
  state, data, hp = trainer.fresh(data, [config])
  memory = []
  for task in range(config.num_tasks) if only_task is None else [only_task - 1]:
    state = trainer.begin_task(state, task, hp)
    state, _ = trainer.train_steps(state, data, hp, np.int32(steps))
    jax.block_until_ready(state)
    memory.append(memory_in_use())
  float(trainer.evaluate(state.params, state.batch_stats, data, 'test', 0, hp)[0])
  return memory, dict(trainer.traces)


def main(argv):
  del argv
  config = flags.FLAGS.config
  tic = time.perf_counter()
  memory, traces = run(config, _STEPS.value, _ONLY_TASK.value)
  if _ONLY_TASK.value:
    print(f'task {_ONLY_TASK.value} alone: {memory[0] / 2**20:.1f} MiB in use after it, peak '
          f'{peak_memory() / 2**20:.1f} MiB, in {time.perf_counter() - tic:.1f} s')
    return
  for task in range(0, len(memory), max(1, len(memory) // 10)):
    print(f'after task {task + 1:4d}: {memory[task] / 2**20:9.1f} MiB in use')
  growth = max(memory[1:]) - memory[1] if len(memory) > 1 else 0
  print(f'{len(memory)} tasks in {time.perf_counter() - tic:.1f} s; memory growth after task 2: '
        f'{growth / 2**20:.1f} MiB; traces: {traces}')


if __name__ == '__main__':
  errors.run_script(main)
