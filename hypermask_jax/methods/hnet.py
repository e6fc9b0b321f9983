"""HNET (von Oswald et al.): the hypernetwork generates all target weights from a task embedding.

Loss for task t: CE(f(x; h(e_t)), y) + beta * mean_{j<t} ||h(e_j) - h*_j||^2 (SPEC 1.2),
optionally regularised at the lookahead point theta + dtheta, over a random
subset of K previous tasks, and with only the current task's embedding trained.
"""

from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from hypermask_jax import hypernet
from hypermask_jax import layout
from hypermask_jax import regularizers
from hypermask_jax.methods import base


class HNET(base.HypernetworkMethod):
  """A target network whose weights a (chunked) hypernetwork makes.

  Only weights, kernels and biases are generated; BatchNorm's scale and offset, if
  the target has them, are the target's own params ('target'), shared by all tasks.
  """

  def __init__(self, config, input_shape, num_classes):
    super().__init__(config, input_shape, num_classes, layout.is_weight)

  def init_params(self, rng):
    params = {'hnet': self.hnet.init(rng, jnp.zeros((1,), jnp.int32))['params']}
    own = traverse_util.flatten_dict(self.init_target(jax.random.fold_in(rng, 1))['params'])
    own = {p: v for p, v in own.items() if not layout.is_weight(p)}
    return {**params, 'target': traverse_util.unflatten_dict(own)} if own else params

  def begin_task(self, params):
    """The regularisation targets: the hypernetwork's outputs now, for every task.

    A full hypernetwork (HMLP) stores them ([max_tasks, P]), or with
    reg_targets='snapshot' keeps a snapshot of its params to recompute them. A
    chunked one always keeps the snapshot, and `hypernet.chunked_distances`
    measures the distances from its output layer; 'stored' also keeps every
    task's inputs to that layer ([max_tasks, chunks, h]), 'snapshot'
    recomputes them.
    """
    tasks = jnp.arange(self.config.max_tasks)
    stored = self.config.reg_targets == 'stored'
    if self.config.chunk_size > 0:
      return {'hnet': params['hnet'],
              **({'hidden': self.hnet_hidden(params['hnet'], tasks)} if stored else {})}
    if stored:
      return {'hnet_outputs': self.hnet_outputs(params['hnet'], tasks)}
    return {'hnet': params['hnet']}

  def _distances_fn(self, memory):
    """(hnet params, rows [k]) -> the rows' squared distances [k] to their targets."""
    if self.config.chunk_size > 0:
      def distances(hnet_params, rows):
        hidden0 = (memory['hidden'][rows] if 'hidden' in memory
                   else self.hnet_hidden(memory['hnet'], rows))
        return hypernet.chunked_distances(self.hnet_hidden(hnet_params, rows), hnet_params['out'],
                                          hidden0, memory['hnet']['out'],
                                          self.hnet.last_chunk_size)
      return distances
    if 'hnet_outputs' in memory:
      targets = lambda rows: memory['hnet_outputs'][rows]
    else:
      targets = lambda rows: self.hnet_outputs(memory['hnet'], rows)
    return lambda hnet_params, rows: jnp.sum(
        jnp.square(self.hnet_outputs(hnet_params, rows) - targets(rows)), 1)

  def _weights(self, params, task):
    """Task `task`'s target params: its generated tensors plus the target's own (BatchNorm) ones."""
    return self.layout.unflatten(self.task_tensors(params['hnet'], task), params.get('target'))

  def _task_loss(self, params, batch_stats, batch, task, rng):
    """(CE of the batch with task `task`'s generated weights, (logits, batch_stats))."""
    x, y, _ = batch
    logits, batch_stats = self.run_target(self._weights(params, task), batch_stats, x, task,
                                          True, rng)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, batch_stats)

  def _only_current_embedding(self, grads, task):
    """Zeroes the gradient of every embedding but the current task's (the published runs)."""
    if self.config.train_embeddings != 'current':
      return grads
    emb = grads['hnet']['embeddings']
    keep = (jnp.arange(emb.shape[0]) == task)[:, None]
    return {**grads, 'hnet': {**grads['hnet'], 'embeddings': jnp.where(keep, emb, 0.0)}}

  def gradients(self, params, batch_stats, opt_state, tx, batch, task, step, memory, hp, rng,
                factored=False):
    """d CE / d theta at theta, plus beta * d R / d theta at theta + delta.

    delta is 0, or with `lookahead` hypercl's dTheta: the optimiser's step on
    the task-loss gradient alone, held constant. The two gradients are taken
    apart, as hypercl's loop takes them: the lookahead reuses the task
    gradient (the target runs forward and backward once per step), and the
    regulariser's gradient is taken inside its lax.switch
    (regularizers.output_reg_and_grad).
    """
    del step, factored
    rng_reg, rng_target = self.step_rngs(rng)
    (ce, (logits, batch_stats)), grads = jax.value_and_grad(self._task_loss, has_aux=True)(
        params, batch_stats, batch, task, rng_target)
    grads = self._only_current_embedding(grads, task)

    def reg_params():
      if not self.config.lookahead:
        return params['hnet']
      delta, _ = tx.update(grads, opt_state, params)
      return jax.tree.map(jnp.add, params['hnet'], delta['hnet'])

    reg, hnet_grads = regularizers.output_reg_and_grad(
        self._distances_fn(memory), reg_params, grads['hnet'], hp['beta'], task, self.row_sizes,
        rng_reg, self.config.max_tasks)
    grads = {**grads, 'hnet': hnet_grads}
    loss = ce + hp['beta'] * reg
    metrics = {'loss': loss, 'ce': ce, 'reg': reg, 'accuracy': base.accuracy(logits, batch[1])}
    return self._only_current_embedding(grads, task), metrics, batch_stats

  def eval_weights(self, params, task, hp):
    del hp
    return self._weights(params, task)

  def param_counts(self, params):
    hnet, target = base.count(params['hnet']), self.layout.size
    counts = {'hnet': hnet, 'target': target, 'compression': hnet / target}
    if 'target' in params:
      counts['target_own'] = base.count(params['target'])
    return counts
