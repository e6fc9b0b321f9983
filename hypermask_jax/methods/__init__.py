"""Continual-learning methods. Each differs from the others only where the method differs.

A method is a class built from (config, input_shape, num_classes) with:
  init_params(rng) -> params                   (a dict of pytrees)
  init_batch_stats() -> the target's BatchNorm statistics ({} unless kept per task)
  begin_task(params) -> memory                 (what later tasks regularise towards)
  gradients(params, batch_stats, opt_state, tx, batch, task, step, memory, hp, rng)
      -> (grads, metrics, batch_stats)
  eval_weights(params, task, hp) -> weights    (the target params task `task` runs with)
  predict(weights, batch_stats, x, tasks, valid) -> logits   (evaluation mode)
  batch_tasks(task) -> the task(s) a training batch is drawn from (an int array: their union)
  fresh_optimizer_per_task: bool
  param_counts(params) -> dict; task_embeddings(params) -> array or None
The data, the training loop (train.py), evaluation and outputs are shared.
"""

from hypermask_jax.methods.baselines import Finetune
from hypermask_jax.methods.baselines import Joint
from hypermask_jax.methods.hnet import HNET
from hypermask_jax.methods.hypermask import HyperMask

METHODS = {'hypermask': HyperMask, 'hnet': HNET, 'finetune': Finetune, 'joint': Joint}
