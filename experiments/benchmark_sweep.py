"""Run-steps per second of R runs in one compiled program against R runs one after another.

  python experiments/benchmark_sweep.py                      # the three configs below
  python experiments/benchmark_sweep.py --configs=configs/split_mnist.py --runs=1,2,4,8

For each config and R, a child process builds a program of R runs (seeds
1..R, as a sweep over seeds does), compiles it, trains --steps steps of its
second task (one old task in the regulariser) and reports the time and its
peak memory (the device's peak where the backend reports it, else the
process's peak resident set: hence one process per measurement). R runs one
after another take R times the R = 1 time, so the speed-up of the program is
its run-steps/s over the R = 1 figure. Data is synthetic with the benchmark's
shapes. The table is printed and written as JSON (--out).
"""

import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags

from experiments import shortened_runs
from hypermask_jax import errors

DEFAULT_CONFIGS = ('configs/split_mnist.py', 'configs/permuted_mnist.py:small',
                   'configs/hnet_permuted_mnist.py')
_CONFIGS = flags.DEFINE_list('configs', list(DEFAULT_CONFIGS), 'Configs to time.')
_RUNS = flags.DEFINE_list('runs', ['1', '2', '4', '8'], 'Runs per program to time.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (one compiled call).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls; the best is reported.')
_OUT = flags.DEFINE_string('out', 'benchmark_sweep.json', 'Where the table goes as JSON.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: time one (config, R) and print JSON.')


def measure(config_arg, num_runs, steps, repeats):
  """Seconds per call of `steps` steps of a program of num_runs runs, and the peak memory."""
  import jax  # pylint: disable=g-import-not-at-top  (the child process only)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hypermask_jax import config_checks  # pylint: disable=g-import-not-at-top
  from hypermask_jax import environment  # pylint: disable=g-import-not-at-top
  from hypermask_jax import devices  # pylint: disable=g-import-not-at-top
  from hypermask_jax import train  # pylint: disable=g-import-not-at-top
  from hypermask_jax.data import tasks  # pylint: disable=g-import-not-at-top
  from hypermask_jax import config_files  # pylint: disable=g-import-not-at-top

  config = config_files.load(config_arg)
  config = config_checks.resolve(shortened_runs.for_step_timing(config, steps, repeats))
  configs = []
  for seed in range(1, num_runs + 1):
    run = config.copy_and_resolve_references()
    run.seed = seed
    configs.append(run)
  task_set = tasks.synthetic_task_set(config)
  _, trainer = train.build(config, task_set.input_shape, task_set.num_classes)
  state, data, hp = trainer.fresh(task_set, configs, devices.runs_mesh())
  state = trainer.begin_task(trainer.begin_task(state, 0, hp), 1, hp)
  tic = time.perf_counter()
  state, _ = trainer.train_steps(state, data, hp, np.int32(steps))
  jax.block_until_ready(state)
  compile_and_first = time.perf_counter() - tic
  best = float('inf')
  for _ in range(repeats):
    tic = time.perf_counter()
    state, _ = trainer.train_steps(state, data, hp, np.int32(steps))
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - tic)
  peak, kind = environment.peak_memory()
  return {'config': config_arg, 'runs': num_runs, 'seconds_per_step': best / steps,
          'run_steps_per_sec': num_runs * steps / best, 'first_call_sec': compile_and_first,
          'peak_bytes': peak, 'peak_kind': kind, 'device': jax.devices()[0].device_kind,
          'backend': jax.default_backend()}


def main(argv):
  del argv
  if _CHILD.value:
    config_arg, num_runs = _CHILD.value.rsplit('@', 1)
    print(json.dumps(measure(config_arg, int(num_runs), _STEPS.value, _REPEATS.value)))
    return
  if not all(runs.isdigit() and int(runs) >= 1 for runs in _RUNS.value):
    raise errors.BadInput(f'--runs must list run counts of 1 or more, e.g. --runs=1,2,4; got '
                          f'{",".join(_RUNS.value)}')
  rows = []
  print(f"{'config':36s} {'R':>3s} {'run-steps/s':>12s} {'sequential':>11s} {'speed-up':>9s} "
        f"{'peak memory':>12s}")
  for config_arg in _CONFIGS.value:
    single = None
    for num_runs in map(int, _RUNS.value):
      child = subprocess.run(
          [sys.executable, __file__, f'--child={config_arg}@{num_runs}', f'--steps={_STEPS.value}',
           f'--repeats={_REPEATS.value}'], capture_output=True, text=True, check=False)
      if child.returncode != 0:
        print(f'{config_arg:36s} {num_runs:3d} failed: {child.stderr.strip().splitlines()[-1]}')
        continue
      row = json.loads(child.stdout.strip().splitlines()[-1])
      single = single or (row['run_steps_per_sec'] if num_runs == 1 else None)
      row['sequential_run_steps_per_sec'] = single
      row['speedup_over_sequential'] = row['run_steps_per_sec'] / single if single else None
      rows.append(row)
      print(f"{config_arg:36s} {num_runs:3d} {row['run_steps_per_sec']:12.1f} "
            f"{single or float('nan'):11.1f} "
            f"{row['speedup_over_sequential'] or float('nan'):8.2f}x "
            f"{row['peak_bytes'] / 2**30:9.2f} GiB ({row['peak_kind']})")
  if rows:
    print(f"device: {rows[0]['device']} ({rows[0]['backend']})")
  pathlib.Path(_OUT.value).write_text(json.dumps(rows, indent=2))
  print(f'written to {_OUT.value}')


if __name__ == '__main__':
  errors.run_script(main)
