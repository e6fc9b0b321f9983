"""Times the report's model figures (mask statistics, penultimate features) at a config's full size.

  python experiments/report_time.py --config=configs/permuted_mnist.py
  python experiments/report_time.py --config=configs/hnet_permuted_mnist_100.py

These are the parts of the end-of-run report whose cost grows with the model
and the number of tasks (the rest reads JSON files). Parameters are freshly
initialised and the data is synthetic with the benchmark's shapes: the
computation is the same as on a trained run's checkpoint. Each part runs once,
as in the report (compiling included).
"""

import io
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax

from hypermask_jax import config_checks
from hypermask_jax import config_files
from hypermask_jax import errors
from hypermask_jax import figures
from hypermask_jax import model_stats
from hypermask_jax import report
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS

config_files.define_flag('configs/permuted_mnist.py', 'Config to time.')


def timed(name, fn):
  start = time.time()
  out = fn()
  print(f'{name}: {time.time() - start:.2f} s', flush=True)
  return out


def main(argv):
  del argv
  config = config_checks.resolve(flags.FLAGS.config)
  data = tasks.synthetic_task_set(config)
  config = config_checks.fit_to_data(config, data)
  method = METHODS[config.method](config, data.input_shape, data.num_classes)
  params = jax.device_get(method.init_params(jax.random.key(0)))
  model = model_stats.Model(config=config, method=method, params=params,
                            batch_stats=method.init_batch_stats(), data=data,
                            hp=trainer_lib.run_hyperparams(config), step=0)
  n = config.num_tasks
  print(f'{config.method}, {n} tasks, parameters: {method.param_counts(params)}')
  started = time.time()
  render = lambda fig: fig.savefig(io.BytesIO(), format='png')
  if model.is_hypermask:
    stats = timed('mask statistics', lambda: model_stats.mask_statistics(model, n))
    timed('mask figures', lambda: (
        render(figures.mask_statistics(stats.layers, stats.zero_fraction, stats.mean_value,
                                       stats.layer_overlap, 'masks')),
        render(figures.similarity(stats.overlap, 'overlap', 'overlap'))))
  features, task_ids = timed('penultimate features', lambda: model_stats.penultimate_features(
      model, n, max(10, report.FEATURES_PER_TASK // n)))
  points, explained = timed('PCA', lambda: model_stats.pca(features))
  timed('features figure', lambda: render(figures.features_projection(
      points, task_ids, explained, 'features')))
  print(f'total: {time.time() - started:.2f} s')


if __name__ == '__main__':
  errors.run_script(main)
