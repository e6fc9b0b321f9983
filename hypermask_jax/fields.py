"""Which config fields may differ between the runs of one compiled program: the one record.

Every config field is in exactly one of three kinds. A new field goes into
TRACED or RUN_SETTINGS here if it belongs there; otherwise it is static.

- TRACED: the compiled functions take these as arrays with a leading runs
  axis, so runs that differ only in them share one program (a sweep over
  seeds and hyperparameters compiles once). Where a traced value also steers
  a static choice, the program makes that choice for all its runs:
  `sparsity` takes the percentile path if any run has sparsity > 0 (a run
  with 0 then gets exactly |tanh|, as alone).
- RUN_SETTINGS: where data, results and compiled programs live, how often
  results are saved, how long one compiled call may take, how many runs share a
  program. They change no result: a run may resume with other values, and they
  never split a sweep.
- static: everything else. These fix shapes or structure (hidden sizes,
  embedding or chunk size, target, method, number of tasks, steps, batch,
  ...): runs that differ in one of them run as separate programs.
"""

TRACED = ('seed', 'learning_rate', 'beta', 'lam', 'sparsity', 'l1_masked')

RUN_SETTINGS = ('data_dir', 'download', 'checkpoint_every_steps', 'checkpoints_to_keep',
                'final_checkpoints_to_keep', 'max_call_seconds', 'runs_per_program',
                'compilation_cache')

# Not a run's setting but the description of many runs (see sweep.py).
SWEEP = 'sweep'

# Benchmarks whose tasks themselves follow the seed (Tiny ImageNet's class order), not only their
# inputs (Permuted MNIST's permutations travel with each run): runs of different seeds hold
# different data, so there the seed is static.
SEEDED_TASKS = ('tiny_imagenet',)


def is_static(field):
  """Whether runs that differ in `field` (a dotted name) need separate programs."""
  return field not in TRACED and field not in RUN_SETTINGS and field.split('.')[0] != SWEEP


def static_part(flat_config):
  """The static fields of a flat config: runs with equal static parts share a program."""
  seeded = flat_config.get('dataset') in SEEDED_TASKS
  return {k: v for k, v in flat_config.items() if is_static(k) or (seeded and k == 'seed')}
