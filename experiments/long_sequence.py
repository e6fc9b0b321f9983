"""Runs a long task sequence (e.g. Permuted MNIST-100) with a tiny step budget and prints, per
task, the memory in use: it must not grow after the first task, and nothing may recompile.

  python experiments/long_sequence.py --config=configs/hnet_permuted_mnist_100.py --steps=2
  python experiments/long_sequence.py --config=configs/hnet_permuted_mnist_100.py:small

Data is synthetic with the benchmark's shapes. Memory is the device's bytes in
use where the backend reports them (GPU, TPU), else the process's resident set.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from hypermask_jax import config_checks
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS

config_flags.DEFINE_config_file('config', 'configs/hnet_permuted_mnist_100.py', 'Config to run.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Training steps per task.')


def memory_in_use():
  """Bytes in use on the default device, or the process's resident set on the CPU."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_in_use' in stats:
    return stats['bytes_in_use']
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * 4096


def run(config, steps):
  """Trains every task of `config` for `steps` steps; returns (memory per task, traces)."""
  with config.unlocked():
    config.steps_per_task = steps
    config.log_every_steps = steps
  config = config_checks.resolve(config)
  data = tasks.synthetic_task_set(config)
  trainer = trainer_lib.Trainer(config, METHODS[config.method](config, data.input_shape,
                                                           data.num_classes))
  state, data, hp = trainer.fresh(data, [config])
  memory = []
  for task in range(config.num_tasks):
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
  memory, traces = run(config, _STEPS.value)
  for task in range(0, len(memory), max(1, len(memory) // 10)):
    print(f'after task {task + 1:4d}: {memory[task] / 2**20:9.1f} MiB in use')
  growth = max(memory[1:]) - memory[1] if len(memory) > 1 else 0
  print(f'{len(memory)} tasks in {time.perf_counter() - tic:.1f} s; memory growth after task 2: '
        f'{growth / 2**20:.1f} MiB; traces: {traces}')


if __name__ == '__main__':
  app.run(main)
