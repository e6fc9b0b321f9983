"""HyperMask: a hypernetwork maps each task embedding to a semi-binary mask over one shared target.

Loss for task t: CE(f(x; W * M_t), y) + beta / max(1, t) * R_h + lambda * R_1 (SPEC 1.1).

As in the reference, the hypernetwork also produces the output layer's bias:
that mask is not applied in the forward pass (the bias is shared unmasked),
but it weights the bias's L1 drift term and its raw outputs are part of the
output regulariser.
"""

import jax
import jax.numpy as jnp
import optax

from hypermask_jax import factored_adam
from hypermask_jax import layout
from hypermask_jax import mask as mask_lib
from hypermask_jax import regularizers
from hypermask_jax import wide_dense
from hypermask_jax.methods import base


class HyperMask(base.HypernetworkMethod):
  """The target's own weights, masked per task by the hypernetwork's output."""

  def __init__(self, config, input_shape, num_classes):
    super().__init__(config, input_shape, num_classes, layout.is_weight)
    self.sparse = config.sparsity > 0

  def init_params(self, rng):
    rng_target, rng_hnet = jax.random.split(rng)
    target = self.init_target(rng_target)['params']
    hnet = self.hnet.init(rng_hnet, jnp.zeros((1,), jnp.int32))['params']
    return {'hnet': hnet, 'target': target}

  def begin_task(self, params):
    """What a new task regularises towards: every embedding's output and the current weights."""
    outputs = self.hnet_outputs(params['hnet'], jnp.arange(self.config.max_tasks))
    return {'hnet_outputs': outputs, 'target': params['target']}

  def masks(self, params, tensors, sparsity):
    """The mask of every generated tensor ({path: tensor}), the output bias's included."""
    return mask_lib.masks_from_tensors(params['target'], tensors, sparsity, self.sparse)

  def masked_weights(self, params, masks):
    """W * M for the forward pass: every weight but the output bias, which runs unmasked."""
    return mask_lib.apply_masks(params['target'], masks, layout.is_masked)

  def loss(self, params, batch_stats, batch, task, step, memory, hp, rng, probes=None):
    """Returns (loss, (metrics, batch_stats)) for one batch of task `task` at step `step`.

    probes: the full hypernetwork's output-layer probe (`gradients`), or None.
    """
    x, y, _ = batch
    rng_reg, rng_target = self.step_rngs(rng)
    output, reg = regularizers.outputs_and_output_reg(
        lambda tasks, live_rows, rows: self.hnet_outputs(
            params['hnet'], tasks, live_rows, (memory['hnet_outputs'], rows), probes),
        task, self.row_sizes, rng_reg, self.config.max_tasks)
    sparsity = mask_lib.sparsity_at(hp['sparsity'], task, step, self.config.steps_per_task)
    masks = self.masks(params, self.layout.split(output), sparsity)
    logits, batch_stats = self.run_target(self.masked_weights(params, masks), batch_stats, x,
                                          task, True, rng_target)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    l1_weights = jax.tree.map(lambda m: jnp.where(hp['l1_masked'], m, 1.0), masks)  # traced
    l1 = regularizers.l1_drift(params['target'], memory['target'], l1_weights)
    l1 = jnp.where(task > 0, l1, 0.0)
    loss = ce + hp['beta'] / jnp.maximum(task, 1) * reg + hp['lam'] * l1
    return loss, ({'loss': loss, 'ce': ce, 'reg': reg, 'l1': l1,
                   'accuracy': base.accuracy(logits, y)}, batch_stats)

  def gradients(self, params, batch_stats, opt_state, tx, batch, task, step, memory, hp, rng,
                factored=False):
    """d loss / d params; with factored and a full hypernetwork (HMLP), the gradients of its
    output layer's kernel and input as a factored_adam.FactoredGradient: the kernel's is never
    built as an array, and the input's is computed in the same pass over the kernel as its
    update.

    The output layer's probe (wide_dense.WideDense) gives the cotangent of its
    output rows, ct [1 + k, P] as factors, for the current task and the k rows
    regularised (regularizers.outputs_and_output_reg's one row count for a
    full hypernetwork); the layer's input rows x are the hidden rows of the
    same tasks, and the first 1 + min(task, k) of them are live. The hidden
    layers' and the embeddings' gradients come from x's (FactoredGradient.backprop).
    """
    if not factored or self.config.chunk_size:
      return super().gradients(params, batch_stats, opt_state, tx, batch, task, step, memory,
                               hp, rng)
    (k,) = self.row_sizes
    probes = {'out': {'rows': wide_dense.probe(1 + k, self.layout.size)}}
    (grads, probe_grads), (metrics, batch_stats) = jax.grad(
        self.loss, argnums=(0, 8), has_aux=True)(params, batch_stats, batch, task, step, memory,
                                                  hp, rng, probes)
    rows, _ = regularizers.previous_rows(task, k, self.step_rngs(rng)[0], self.config.max_tasks)
    tasks = jnp.concatenate([task[None], rows.astype(task.dtype)])
    hidden = {name: p for name, p in params['hnet'].items() if name != 'out'}
    x, hidden_vjp = jax.vjp(
        lambda hidden: self.hnet.apply({'params': hidden}, tasks, hidden_only=True), hidden)
    kernel = factored_adam.FactoredGradient(*probe_grads['out']['rows'], x,
                                            1 + jnp.minimum(task, k),
                                            jax.tree_util.Partial(_hnet_grads, hidden_vjp))
    out = {**grads['hnet']['out'], 'kernel': kernel}
    return {**grads, 'hnet': {**grads['hnet'], 'out': out}}, metrics, batch_stats

  def eval_weights(self, params, task, hp):
    """The target weights task `task` runs with at evaluation (full sparsity)."""
    tensors = self.task_tensors(params['hnet'], task)
    return self.masked_weights(params, self.masks(params, tensors, hp['sparsity']))

  def param_counts(self, params):
    return {'hnet': base.count(params['hnet']), 'target': base.count(params['target']),
            'generated': self.layout.size}


def _hnet_grads(hidden_vjp, d_x):
  """The hypernetwork's hidden layers' and embeddings' gradients from its output layer's input's."""
  return {'hnet': hidden_vjp(d_x)[0]}
