"""HyperMask: a hypernetwork maps each task embedding to a semi-binary mask over one shared target.

Loss for task t: CE(f(x; W * M_t), y) + beta / max(1, t) * R_h + lambda * R_1
(SPEC 1.1). This module holds what is specific to the method; the training
loop in train.py is shared.
"""

import jax
import jax.numpy as jnp
import optax

from hypermask_jax import hypernet
from hypermask_jax import mask as mask_lib
from hypermask_jax import regularizers
from hypermask_jax import targets


class HyperMask:
  """Builds the target and the hypernetwork from a config, and defines the method's loss."""

  def __init__(self, config, input_dim, num_classes):
    self.config = config
    self.target = targets.MLP(hidden=tuple(config.target_hidden), num_classes=num_classes)
    self.input_dim = input_dim
    shapes = jax.eval_shape(self.target.init, jax.random.key(0), jnp.zeros((1, input_dim)))
    self.layout = mask_lib.Layout.of(shapes['params'])
    self.hnet = hypernet.HMLP(num_outputs=self.layout.size, max_tasks=config.max_tasks,
                              embedding_size=config.embedding_size, hidden=tuple(config.hnet_hidden))
    self.buckets = regularizers.bucket_sizes(config.max_tasks)
    self.sparse = config.sparsity > 0

  def init_params(self, rng):
    rng_target, rng_hnet = jax.random.split(rng)
    target = self.target.init(rng_target, jnp.zeros((1, self.input_dim)))['params']
    hnet = self.hnet.init(rng_hnet, jnp.zeros((1,), jnp.int32))['params']
    return {'hnet': hnet, 'target': target}

  def begin_task(self, params):
    """What a new task regularises towards: every embedding's output and the current weights."""
    outputs = self.hnet.apply({'params': params['hnet']}, jnp.arange(self.config.max_tasks))
    return {'hnet_outputs': outputs, 'target': params['target']}

  def masks(self, params, flat_output, sparsity):
    return mask_lib.masks_from_output(self.layout, params['target'], flat_output, sparsity,
                                      self.sparse)

  def loss(self, params, x, y, task, step, memory, hp):
    """Returns (loss, metrics) for one batch of task `task` at step `step` of that task."""
    hnet_fn = lambda tasks: self.hnet.apply({'params': params['hnet']}, tasks)
    output, reg = regularizers.outputs_and_output_reg(hnet_fn, task, memory['hnet_outputs'],
                                                       self.buckets)
    sparsity = mask_lib.sparsity_at(hp['sparsity'], task, step, self.config.steps_per_task)
    masks = self.masks(params, output, sparsity)
    logits = self.target.apply({'params': mask_lib.apply_masks(params['target'], masks)}, x)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    l1 = regularizers.l1_drift(params['target'], memory['target'],
                               masks if self.config.l1_masked else None)
    l1 = jnp.where(task > 0, l1, 0.0)
    loss = ce + hp['beta'] / jnp.maximum(task, 1) * reg + hp['lam'] * l1
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, {'loss': loss, 'ce': ce, 'reg': reg, 'l1': l1, 'accuracy': accuracy}

  def eval_weights(self, params, task, hp):
    """The target weights task `task` runs with at evaluation (full sparsity)."""
    output = self.hnet.apply({'params': params['hnet']}, task[None])[0]
    return mask_lib.apply_masks(params['target'], self.masks(params, output, hp['sparsity']))

  def apply(self, weights, x):
    return self.target.apply({'params': weights}, x)

  def param_counts(self, params):
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    return {'hnet': count(params['hnet']), 'target': count(params['target']),
            'masked': self.layout.size}
