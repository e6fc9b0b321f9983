"""Testing without the task given: every learned task's network runs on each test sample, and
the task is inferred from what they output. Compiled, with the runs axis on top.

`config.task_inference`:
- 'entropy' (HyperMask's and hypercl's): the task whose softmax output has the
  lowest entropy; the class is that network's prediction.
- 'fecam' adds FeCAM's Mahalanobis distances (fecam.py) to the entropy: each
  seen task's classes get a prototype and a covariance of their training
  samples' penultimate features under that task's network; a test sample is
  compared, under each task's network, with that task's classes. 'class'
  mode predicts the nearest class; 'task' mode takes the task of the nearest
  class and predicts with that task's network (HyperMask's own prediction).

A prediction is right when both the task and the class within it are right:
with class-disjoint tasks that is the class-incremental accuracy (Permuted
MNIST counts 10 classes per task, as the reference's 100 labels). Inputs are
formed with the sample's own task (its permutation), as it was drawn.

The networks of all seen tasks run as one vmapped batch. To make the cost
follow the tasks seen without a compile per task, one branch per task count
in {1, 2, 4, ..., max_tasks} is compiled and `lax.switch` runs the smallest
that covers them. A target that normalises with batch statistics sees a
task's whole test split as one batch under every candidate network (the
reference evaluated one task's test set per batch); FeCAM's training
features use batches of eval_batch_size.
"""

import math

import jax
import jax.numpy as jnp

from hypermask_jax import fecam
from hypermask_jax import features
from hypermask_jax import trainer as trainer_lib

# What each mode reports, per test split of a task (%): name -> description.
METRICS = {
    'entropy': {
        'entropy_task_accuracy': 'the task of lowest entropy is the right one',
        'entropy_accuracy': 'right class with the task of lowest entropy',
    },
    'fecam': {
        'fecam_task_accuracy': 'the task of the nearest class (Mahalanobis) is the right one',
        'fecam_task_mode_accuracy': "right class from that task's own network (FeCAM 'task' mode)",
        'fecam_class_mode_accuracy': "the nearest class is the right one (FeCAM 'class' mode)",
    },
}


def metric_names(mode):
  """The metrics a mode reports ('fecam' reports the entropy's too: it costs nothing more)."""
  names = dict(METRICS['entropy']) if mode != 'none' else {}
  return {**names, **METRICS['fecam']} if mode == 'fecam' else names


def task_buckets(max_tasks):
  """The compiled task counts: powers of two below max_tasks, and max_tasks."""
  return tuple(sorted({max_tasks} | {2 ** i for i in range(int(math.log2(max_tasks)) + 1)
                                      if 2 ** i < max_tasks}))


def entropy_tasks(logits, seen):
  """The task of least softmax entropy per sample: logits [K, B, C], seen [K] -> [B]."""
  log_p = jax.nn.log_softmax(logits)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  return jnp.argmin(jnp.where(seen[:, None], entropy, jnp.inf), axis=0)


def class_in_task(logits, tasks):
  """Each sample's predicted class under its chosen task: logits [K, B, C], tasks [B] -> [B]."""
  chosen = jnp.take_along_axis(logits, tasks[None, :, None], axis=0)[0]
  return jnp.argmax(chosen, axis=-1)


def fecam_choices(feats, stats, seen):
  """(task of the nearest class, nearest (task, class)) per sample, from features [K, B, D].

  stats: per task k < K, fecam.class_statistics of its classes; tasks not
  seen are never chosen. Returns (task [B], (task [B], class [B])).
  """
  dist = jax.vmap(fecam.distances)(feats, stats)  # [K, C, B]
  dist = jnp.where(seen[:, None, None], dist, jnp.inf)
  nearest = jnp.argmin(dist.reshape(-1, dist.shape[-1]), axis=0)
  classes = dist.shape[1]
  return jnp.argmin(jnp.min(dist, axis=1), axis=0), (nearest // classes, nearest % classes)


class TaskInference:
  """The compiled inference of one program: `statistics` (FeCAM) and `evaluate`.

  Both take the arrays of all R runs and return per-run results; they trace
  into the trainer's `traces` counter ('task_statistics', 'infer_tasks').
  """

  def __init__(self, trainer):
    self.trainer = trainer
    self.config = trainer.config
    self.method = trainer.method
    self.mode = self.config.task_inference
    self.names = tuple(metric_names(self.mode))
    self.buckets = task_buckets(self.config.max_tasks)
    self.statistics = jax.jit(self._statistics)
    self.evaluate = jax.jit(self._evaluate, static_argnames='split')

  def _batches(self, split, task, batch_size):
    """(index of batch i's examples, valid mask) over task `task` of `split`, and the count."""
    size = split.size[task]

    def batch(i):
      pos = i * batch_size + jnp.arange(batch_size)
      return split.offset[task] + jnp.minimum(pos, size - 1), pos < size
    return batch, math.ceil(split.max_size / batch_size)

  def _statistics(self, params, batch_stats, data, num_seen, hp):
    """FeCAM's statistics of every seen task's classes, from its training split: per run,
    {'prototype': [max_tasks, C, D], 'precision': [max_tasks, C, D, D], 'valid': [max_tasks, C]}."""
    self.trainer.traces['task_statistics'] += 1
    method, num_classes = self.method, data.num_classes
    bs = self.trainer.eval_batch(data.train)

    def one_run(params, batch_stats, data, hp):
      def of_task(task):
        weights = method.eval_weights(params, task, hp)
        batch, count = self._batches(data.train, task, bs)

        def feats(i):
          idx, valid = batch(i)
          x = data.inputs(data.train.images[idx], task, None, train=False)
          _, f = features.logits_and_features(method, weights, batch_stats, x, task, valid)
          return f, data.train.labels[idx], valid.astype(f.dtype)

        f, labels, weight = jax.lax.map(feats, jnp.arange(count))
        return fecam.class_statistics(f.reshape(-1, f.shape[-1]), labels.reshape(-1),
                                      weight.reshape(-1), num_classes)

      empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(of_task, jnp.int32(0)))
      return jax.lax.map(lambda t: jax.lax.cond(t < num_seen, of_task, lambda _: empty, t),
                         jnp.arange(self.config.max_tasks))

    return jax.vmap(one_run, in_axes=(0, 0, trainer_lib.data_axes(data), 0))(
        params, batch_stats, data, hp)

  def _evaluate(self, params, batch_stats, data, split, task, num_seen, hp, stats):
    """{metric: int32 [R]} how many examples of task `task` of split `split` ('test' or 'val',
    static as in Trainer.evaluate) each run gets right, choosing among the first num_seen
    tasks. stats: `statistics`' result with 'fecam', else None. Counts: the host divides."""
    self.trainer.traces['infer_tasks'] += 1
    split = getattr(data, split)
    method = self.method
    bs = split.max_size if self.trainer.whole_split_eval else self.trainer.eval_batch(split)
    batch, count = self._batches(split, task, bs)

    def one_run(params, batch_stats, data, hp, stats):
      def with_tasks(k):
        def run(_):
          candidates = jnp.arange(k)
          seen = candidates < num_seen
          weights = jax.vmap(lambda t: method.eval_weights(params, t, hp))(candidates)
          task_stats = None if stats is None else jax.tree.map(lambda s: s[:k], stats)

          def hits(i):
            idx, valid = batch(i)
            x = data.inputs(split.images[idx], task, None, train=False)
            logits, feats = jax.vmap(
                lambda w, t: features.logits_and_features(method, w, batch_stats, x, t, valid))(
                    weights, candidates)
            return self._right(logits, feats, task_stats, seen, task, split.labels[idx], valid)

          return jax.tree.map(lambda h: jnp.sum(h, axis=0), jax.lax.map(hits, jnp.arange(count)))
        return run

      # compare_all: no loop, whose every turn a GPU waits on the host for.
      bucket = jnp.searchsorted(jnp.asarray(self.buckets), num_seen, method='compare_all')
      right = jax.lax.switch(bucket, [with_tasks(k) for k in self.buckets], None)
      return {name: n.astype(jnp.int32) for name, n in right.items()}

    return jax.vmap(one_run, in_axes=(0, 0, trainer_lib.data_axes(data), 0, 0))(
        params, batch_stats, data, hp, stats)

  def _right(self, logits, feats, stats, seen, task, labels, valid):
    """{metric: number of valid samples it gets right} for one batch of task `task`."""
    def right(tasks, classes=None):
      ok = (tasks == task) & valid
      return jnp.sum(ok if classes is None else ok & (classes == labels))

    chosen = entropy_tasks(logits, seen)
    out = {'entropy_task_accuracy': right(chosen),
           'entropy_accuracy': right(chosen, class_in_task(logits, chosen))}
    if stats is not None:
      nearest_task, (class_task, nearest_class) = fecam_choices(feats, stats, seen)
      out.update(fecam_task_accuracy=right(nearest_task),
                 fecam_task_mode_accuracy=right(nearest_task, class_in_task(logits, nearest_task)),
                 fecam_class_mode_accuracy=right(class_task, nearest_class))
    return out
