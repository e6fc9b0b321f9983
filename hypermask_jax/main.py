"""Command line: python -m hypermask_jax.main --config=configs/permuted_mnist.py --workdir=DIR.

Any config field can be overridden, e.g. --config.seed=3 --config.beta=1e-3;
`--help` lists the configs, their variants, the most used fields and the exit
statuses. Bad input of any kind (a flag, the config, the workdir, the data)
ends with one line on stderr and exit status 2, before anything is computed or
written; the flags, the config and its sweep are checked before JAX is loaded.
"""

import os

from hypermask_jax import huge_pages

if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # once, first: what is imported before it loads twice

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up noise; before TFDS
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # and its oneDNN notice (TF only reads data)

import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app
from absl import flags

from hypermask_jax import config_files
from hypermask_jax import console
from hypermask_jax import errors
from hypermask_jax import paths
from hypermask_jax import preemption

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the results of this run.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume an unfinished run in --workdir even though its saved '
    'config differs in fields that change results (not in fields that change array shapes).')
_REPORT = flags.DEFINE_bool(
    'report', True, 'Write figures and report.md into WORKDIR/report when the run or sweep ends '
    '(python -m hypermask_jax.report WORKDIR writes them at any time).')
_SWEEP_SHARD = flags.DEFINE_string(
    'sweep_shard', None, 'i/n: run only the i-th of n shares of a sweep\'s programs (0 <= i < n), '
    'e.g. one per job of a SLURM array; any later run collects the finished ones.')
# New attributes are accepted only under config.sweep (checked by config_files.check_flags).
config_files.define_flag(None, 'Experiment config file (configs/*.py[:variant]).')

MOST_USED_FIELDS = (
    ('data_dir', "TFDS data dir ('' = TFDS's default); prepare MNIST offline with "
                 'python -m hypermask_jax.data.prepare'),
    ('seed', 'parameters, permutations and batch order'),
    ('method', 'hypermask, hnet, finetune or joint'),
    ('num_tasks', 'tasks to train'),
    ('steps_per_task', 'training steps per task (or epochs_per_task)'),
    ('learning_rate, batch_size', 'Adam step size, batch'),
    ('beta, lam', 'output-regulariser and L1-drift weights'),
    ('sparsity', 'HyperMask mask sparsity in [0, 100)'),
    ('log_every_steps', 'steps between progress lines (and validations)'),
    ('checkpoint_every_steps', 'steps between checkpoints (also after every task)'),
    ('max_call_seconds', 'wall-time bound of one compiled call: how long a stop waits'),
    ('sweep.FIELD', 'values of FIELD to sweep, e.g. --config.sweep.seed=1,2,3,4,5'),
    ('runs_per_program', 'most runs one compiled program trains at once (0: as many as fit)'),
)


def help_text():
  lines = ['usage: python -m hypermask_jax.main --config=configs/FILE.py[:VARIANT] --workdir=DIR '
           '[--config.FIELD=VALUE ...] [--config.sweep.FIELD=V1,V2,...] [--allow_config_change] '
           '[--sweep_shard=i/n]', '',
           'Trains a continual-learning run, or the runs of a sweep (the product of the '
           '--config.sweep.FIELD lists; runs that differ only in seed, learning_rate, beta, lam, '
           'sparsity or l1_masked share one compiled program), and evaluates every task after '
           'each task. Running the same command again resumes an interrupted run from its newest '
           'checkpoint, or prints the results of a finished one.', '',
           'Configs (the first variant is the default; pick another with :VARIANT):']
  for path, variants, doc in config_files.available():
    lines.append(f"  {path:34s} {', '.join(variants):28s} {doc}")
  lines += ['', 'Most used fields (--config.FIELD=VALUE; every field: README.md, "Configs"):']
  lines += [f'  {field:28s} {meaning}' for field, meaning in MOST_USED_FIELDS]
  lines += ['', 'Flags:', '  --workdir=DIR                folder for the results (created; '
            'relative paths are resolved once at start)',
            '  --allow_config_change        resume although result fields of the config changed',
            '  --sweep_shard=i/n            run only the i-th of n shares of a sweep (0 <= i < n)',
            '  --noreport                   no figures and report.md at the end (see '
            'python -m hypermask_jax.report)',
            '', 'Exit status:', '  0   finished (or already finished)',
            '  2   bad input: one line names the flag, field or path; nothing was written',
            f'  {preemption.EXIT_PREEMPTED}  stopped by SIGTERM or SIGINT after saving a '
            'checkpoint: run the same command again to resume']
  return '\n'.join(lines)


def parse_flags(argv):
  """absl's flag parsing with our error path: --help exits 0, bad flags exit 2 with one line."""
  if any(arg in errors.HELP_FLAGS for arg in argv[1:]):
    print(help_text())
    sys.exit(0)
  try:
    config_files.check_flags(argv[1:])
  except errors.BadInput as e:
    errors.exit_bad_input(e)
  rest = errors.parse_flags(argv)
  if not _WORKDIR.value:
    errors.exit_bad_input('--workdir: missing; name a folder for the results, e.g. '
                          '--workdir=runs/my_run')
  if len(rest) > 1:
    errors.exit_bad_input(f'unexpected arguments {rest[1:]}: flags are written --name=value')
  from hypermask_jax import sweep  # pylint: disable=g-import-not-at-top  (not for a bad flag)
  try:  # in a fraction of a second: JAX, imported by main, takes seconds to load
    sweep.check(flags.FLAGS.config, paths.absolute(_WORKDIR.value), _SWEEP_SHARD.value)
  except errors.BadInput as e:
    errors.exit_bad_input(e)
  return rest


def main(argv):
  del argv
  console.quiet_libraries()
  from hypermask_jax import devices  # pylint: disable=g-import-not-at-top  (after TF's env setup)
  from hypermask_jax import train  # pylint: disable=g-import-not-at-top
  try:
    devices.start_distributed()
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value,
                             _SWEEP_SHARD.value, with_report=_REPORT.value)
  except preemption.Preempted as e:
    print(f'preempted: {e}; run the same command again to resume.', file=sys.stderr)
    sys.exit(preemption.EXIT_PREEMPTED)
  except errors.BadInput as e:
    errors.exit_bad_input(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
