"""HNET (von Oswald et al.): the hypernetwork generates all target weights from a task embedding.

Loss for task t: CE(f(x; h(e_t)), y) + beta * mean_{j<t} ||h(e_j) - h*_j||^2 (SPEC 1.2),
optionally regularised at the lookahead point theta + dtheta, over a random
subset of K previous tasks, and with only the current task's embedding trained.
"""

import jax
import jax.numpy as jnp
import optax

from hypermask_jax import layout
from hypermask_jax import regularizers
from hypermask_jax.methods import base


class HNET(base.HypernetworkMethod):
  """A target network without weights of its own, and a (chunked) hypernetwork that makes them."""

  def __init__(self, config, input_dim, num_classes):
    super().__init__(config, input_dim, num_classes, layout.is_weight)

  def init_params(self, rng):
    return {'hnet': self.hnet.init(rng, jnp.zeros((1,), jnp.int32))['params']}

  def begin_task(self, params):
    """Regularisation targets: every embedding's output now, or a snapshot to recompute them."""
    if self.config.reg_targets == 'snapshot':
      return {'hnet': params['hnet']}
    return {'hnet_outputs': self.hnet_outputs(params['hnet'], jnp.arange(self.config.max_tasks))}

  def _targets_fn(self, memory):
    if self.config.reg_targets == 'snapshot':
      return lambda rows: jax.lax.stop_gradient(self.hnet_outputs(memory['hnet'], rows))
    return lambda rows: memory['hnet_outputs'][rows]

  def _task_loss(self, hnet_params, batch, task):
    x, y, _ = batch
    logits = self.apply(self.layout.unflatten(self.hnet_outputs(hnet_params, task[None])[0]), x, task)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  def loss(self, params, batch, task, step, memory, hp, rng, delta=None):
    """Task loss at theta; output regulariser at theta + delta (delta: the lookahead step)."""
    del step
    reg_params = params['hnet'] if delta is None else jax.tree.map(
        jnp.add, params['hnet'], delta['hnet'])
    output, reg = regularizers.outputs_and_output_reg(
        lambda rows: self.hnet_outputs(reg_params, rows), self._targets_fn(memory), task,
        self.row_sizes, self.reg_rng(rng), self.config.max_tasks)
    if delta is None:  # the current task's output came with the regulariser's batch
      x, y, _ = batch
      logits = self.apply(self.layout.unflatten(output), x, task)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    else:
      ce, logits = self._task_loss(params['hnet'], batch, task)
    loss = ce + hp['beta'] * reg
    return loss, {'loss': loss, 'ce': ce, 'reg': reg, 'accuracy': base.accuracy(logits, batch[1])}

  def _only_current_embedding(self, grads, task):
    """Zeroes the gradient of every embedding but the current task's (the published runs)."""
    if self.config.train_embeddings != 'current':
      return grads
    emb = grads['hnet']['embeddings']
    keep = (jnp.arange(emb.shape[0]) == task)[:, None]
    return {'hnet': {**grads['hnet'], 'embeddings': jnp.where(keep, emb, 0.0)}}

  def lookahead_delta(self, params, opt_state, tx, batch, task):
    """The update the optimiser would make from the task-loss gradient alone (held constant)."""
    grads = jax.grad(lambda p: self._task_loss(p['hnet'], batch, task)[0])(params)
    delta, _ = tx.update(self._only_current_embedding(grads, task), opt_state, params)
    return jax.lax.stop_gradient(delta)

  def gradients(self, params, opt_state, tx, batch, task, step, memory, hp, rng):
    delta = self.lookahead_delta(params, opt_state, tx, batch, task) if self.config.lookahead \
        else None
    grads, metrics = jax.grad(self.loss, has_aux=True)(params, batch, task, step, memory, hp,
                                                         rng, delta)
    return self._only_current_embedding(grads, task), metrics

  def eval_weights(self, params, task, hp):
    del hp
    return self.layout.unflatten(self.hnet_outputs(params['hnet'], task[None])[0])

  def apply(self, weights, x, tasks):
    del tasks
    return self.target.apply({'params': weights}, x)

  def param_counts(self, params):
    hnet, target = base.count(params['hnet']), self.layout.size
    return {'hnet': hnet, 'target': target, 'compression': hnet / target}
