"""Command line: python -m hypermask_jax.main --config=configs/permuted_mnist.py --workdir=DIR.

Any config field can be overridden, e.g. --config.seed=3 --config.beta=1e-3.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hypermask_jax import config_checks
from hypermask_jax import outputs
from hypermask_jax import preemption
from hypermask_jax import report
from hypermask_jax import train
from hypermask_jax.data import tfds_io

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the results of this run.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume an unfinished run in --workdir even though its saved '
    'config differs in fields that change results.')
_REPORT = flags.DEFINE_bool('report', True, 'Write figures and report.md into WORKDIR/report when '
                            'the run ends (python -m hypermask_jax.report WORKDIR does it later).')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_BAD_INPUT = 2
CHATTY_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/')


class _QuietLibraries(std_logging.Filter):
  """Keeps the console to progress lines: libraries' INFO logs are dropped, warnings kept."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in CHATTY_LIBRARIES)


def _write_report(workdir, task_set):
  try:  # the figures are extras: a failure there must not fail a finished run
    report.write_run_report(workdir, data=task_set)
  except Exception:  # pylint: disable=broad-except
    logging.exception('Could not write the report; the results in %s are complete.', workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value,
                             on_end=_write_report if _REPORT.value else None)
  except preemption.Preempted as e:
    logging.warning('%s', e)
    print(f'preempted: {e}; run the same command again to resume.', file=sys.stderr)
    sys.exit(preemption.EXIT_PREEMPTED)
  except (config_checks.ConfigError, outputs.WorkdirError, tfds_io.DatasetUnavailableError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


if __name__ == '__main__':
  app.run(main)
