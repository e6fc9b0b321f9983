"""Run folders with chosen numbers, written through the same writers as a real run (no training)."""

import numpy as np

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import metrics
from hypermask_jax import outputs


def fake_accuracy(num_tasks, seed, drop=0.5):
  """A lower-triangular matrix (%): ~97 just after training, `drop` points lost per later task."""
  rs = np.random.RandomState(seed)
  acc = np.full((num_tasks, num_tasks), np.nan)
  for i in range(num_tasks):
    for j in range(i + 1):
      acc[i, j] = round(97 - drop * (i - j) + rs.uniform(-1, 1), 2)
  return acc


def fake_records(num_tasks, steps_per_task=100, chunk=50, embeddings=True):
  records = []
  for t in range(num_tasks):
    for step in range(chunk, steps_per_task + 1, chunk):
      g = t * steps_per_task + step
      records.append({'task': t + 1, 'step': step, 'global_step': g, 'accuracy': 90 + step / 20,
                      'ce': 1 / step, 'l1': 0.01 * t, 'loss': 1 / step + 0.02 * t,
                      'reg': 0.01 * t, 'val_accuracy': 95 + step / 50, 'steps_per_sec': 10.0})
  return records


def write_fake_run(path, acc, steps_per_task=100, **overrides):
  """A finished run of the small Permuted MNIST config with accuracy matrix `acc` (%)."""
  config = permuted_mnist.get_config('small')
  config.num_tasks = acc.shape[0]
  config.steps_per_task = steps_per_task
  config.update(overrides)
  config = config_checks.resolve(config)
  out = outputs.RunOutputs(path)
  out.save_config(config, path, 0)
  rows = [[None if np.isnan(v) else float(v) for v in row] for row in acc]
  out.write_accuracy(rows, acc.shape[0])
  for record in fake_records(acc.shape[0], steps_per_task):
    out.log_metrics(record)
  rs = np.random.RandomState(0)
  out.write_embeddings(rs.normal(size=(acc.shape[0], 8)))
  out.write_summary({**metrics.summary(acc), 'accuracy_matrix': rows, 'wall_time_sec': 12.5,
                     'train_steps_per_sec': 42.0, 'params': {'hnet': 1000, 'target': 100}})
  return path
