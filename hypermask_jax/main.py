"""Command line: python -m hypermask_jax.main --config=configs/permuted_mnist.py --workdir=DIR.

Any config field can be overridden, e.g. --config.seed=3 --config.beta=1e-3.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from hypermask_jax import config_checks
from hypermask_jax import outputs
from hypermask_jax import train
from hypermask_jax.data import tfds_io

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the results of this run.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_BAD_INPUT = 2


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  except (config_checks.ConfigError, outputs.WorkdirError, tfds_io.DatasetUnavailableError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


if __name__ == '__main__':
  app.run(main)
