"""Baselines that frame every result: fine-tuning (lower bound) and joint training (upper bound).

Both train the target network directly, with one output head per task.
"""

import jax.numpy as jnp
import optax

from hypermask_jax.methods import base


class Finetune(base.Method):
  """The target trained task after task with no protection against forgetting."""
  one_head_per_task = True

  def init_params(self, rng):
    return {'target': self.init_target(rng)['params']}

  def begin_task(self, params):
    del params
    return {}

  def loss(self, params, batch_stats, batch, task, step, memory, hp, rng):
    del task, step, memory, hp
    x, y, batch_tasks = batch
    logits, batch_stats = self.run_target(params['target'], batch_stats, x, batch_tasks, True,
                                          rng)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce, ({'loss': ce, 'ce': ce, 'accuracy': base.accuracy(logits, y)}, batch_stats)

  def eval_weights(self, params, task, hp):
    del task, hp
    return params['target']

  def param_counts(self, params):
    return {'target': base.count(params['target'])}


class Joint(Finetune):
  """One model trained on all tasks at once: batches drawn from all tasks' examples, one Adam.

  It runs the same number of steps as the sequential methods (num_tasks *
  steps_per_task); the accuracy matrix's rows show its progress.
  """
  fresh_optimizer_per_task = False

  def batch_tasks(self, task):
    """Every batch is drawn from the union of all tasks' training examples."""
    del task
    return jnp.arange(self.config.num_tasks)
