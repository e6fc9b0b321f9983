"""The host side of task inference (task_inference.py): after each task, every seen task's test
split with the task inferred, for every run; the console lines, `task_inference.json` and the
summary's numbers.

Per metric, A[i][j] is the accuracy (%) on task j's test split after training
task i, choosing among tasks 1..i+1. Besides the mean over tasks, each row is
also pooled over the samples of all seen tasks (weighted by their test sizes:
the class-incremental accuracy FeCAM reports; equal to the mean when the tasks'
test splits are equally large), and the pooled values are averaged over the
rows ("average incremental accuracy").
"""

from absl import logging
import numpy as np

from hypermask_jax import devices
from hypermask_jax import task_inference


def pooled(row, sizes):
  """The accuracy over all samples of the tasks in `row` (their test sizes as weights)."""
  return float(np.average(row, weights=sizes[:len(row)]))


def _matrix_rows(matrix):
  return [[v for v in row if v is not None] for row in matrix if row[0] is not None]


def describe(mode, matrices, sizes):
  """The summary numbers of one run: {metric: mean of its last row} and the details."""
  flat, details = {}, {'mode': mode, 'test_sizes': [int(s) for s in sizes], 'metrics': {}}
  for name, description in task_inference.metric_names(mode).items():
    rows = _matrix_rows(matrices[name])
    pooled_rows = [pooled(row, sizes) for row in rows]
    flat[name] = float(np.mean(rows[-1]))
    details['metrics'][name] = {
        'description': description, 'matrix': matrices[name], 'final': rows[-1],
        'mean': flat[name], 'pooled': pooled_rows,
        'average_incremental': float(np.mean(pooled_rows))}
  return flat, details


class Recorder:
  """Evaluates, logs and saves task inference for the runs of one program."""

  def __init__(self, trainer, data, hp, num_runs):
    self.inference = task_inference.TaskInference(trainer)
    self.data, self.hp, self.num_runs = data, hp, num_runs
    self.mode = trainer.config.task_inference
    self.num_tasks = trainer.config.num_tasks
    self.sizes = np.asarray(devices.fetch(data.test.size))

  def matrices(self, progress):
    """The per-run {metric: matrix} in `progress` (created empty by the first evaluation)."""
    empty = lambda: [[None] * self.num_tasks for _ in range(self.num_tasks)]
    return progress.setdefault('task_inference', [
        {name: empty() for name in self.inference.names} for _ in range(self.num_runs)])

  def evaluate(self, state, task, progress, outs):
    """After task `task`: every seen task's test split with the task inferred."""
    stats = None
    if self.mode == 'fecam':
      stats = self.inference.statistics(state.params, state.batch_stats, self.data, task + 1,
                                        self.hp)
    by_task = [devices.fetch(self.inference.evaluate(
        state.params, state.batch_stats, self.data, 'test', j, task + 1, self.hp, stats))
               for j in range(task + 1)]
    matrices = self.matrices(progress)
    for r, out in enumerate(outs):
      for name in self.inference.names:  # divided on the host, as the task-given accuracy
        matrices[r][name][task][:task + 1] = [100.0 * int(result[name][r]) / int(self.sizes[j])
                                              for j, result in enumerate(by_task)]
      out.write_task_inference(
          {'mode': self.mode, 'test_sizes': self.sizes.tolist(), 'metrics': matrices[r]})
    self.log(matrices, task)

  def log(self, matrices, task):
    for name, description in task_inference.metric_names(self.mode).items():
      rows = [m[name][task][:task + 1] for m in matrices]
      if self.num_runs == 1:
        logging.info('after task %d: %s: %s (%s) | mean %.2f, all seen samples %.2f', task + 1,
                     name, ' '.join(f'{a:.2f}' for a in rows[0]), description,
                     np.mean(rows[0]), pooled(rows[0], self.sizes))
      else:
        means = [np.mean(row) for row in rows]
        logging.info('after task %d: %s (%s), mean of tasks 1-%d over %d runs: %.2f [%.2f, %.2f]',
                     task + 1, name, description, task + 1, self.num_runs, np.mean(means),
                     np.min(means), np.max(means))

  def summary(self, progress, run):
    """(flat {metric: final mean}, details) for the summary of run `run`."""
    return describe(self.mode, self.matrices(progress)[run], self.sizes)
