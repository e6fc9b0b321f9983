"""What methods share: the interface's defaults, and the hypernetwork methods' common parts."""

import jax
import jax.numpy as jnp

from hypermask_jax import hypernet
from hypermask_jax import layout
from hypermask_jax import regularizers
from hypermask_jax import targets


def count(tree):
  return int(sum(x.size for x in jax.tree.leaves(tree)))


class Method:
  """Defaults for the method interface described in methods/__init__.py."""
  fresh_optimizer_per_task = True

  def __init__(self, config, input_dim, num_classes):
    self.config = config
    self.input_dim = input_dim
    self.num_classes = num_classes

  def batch_tasks(self, task, rng, batch_size):
    """Training batches come from the current task only."""
    del rng, batch_size
    return task

  def gradients(self, params, opt_state, tx, batch, task, step, memory, hp, rng):
    """d loss / d params (HNET overrides this for its lookahead)."""
    del opt_state, tx
    return jax.grad(self.loss, has_aux=True)(params, batch, task, step, memory, hp, rng)

  def task_embeddings(self, params):
    """The learned task embeddings [max_tasks, E], or None for methods without them."""
    return params.get('hnet', {}).get('embeddings')


class HypernetworkMethod(Method):
  """A target MLP and a hypernetwork whose flat output covers the target tensors `select` picks."""

  def __init__(self, config, input_dim, num_classes, select):
    super().__init__(config, input_dim, num_classes)
    self.target = targets.MLP(hidden=tuple(config.target_hidden), num_classes=num_classes)
    shapes = jax.eval_shape(self.target.init, jax.random.key(0), jnp.zeros((1, input_dim)))
    self.layout = layout.Layout.of(shapes['params'], select)
    self.hnet = hypernet.build(config, self.layout.size)
    self.row_sizes = regularizers.row_sizes(config.max_tasks, config.reg_subset)

  def hnet_outputs(self, hnet_params, tasks):
    """Raw hypernetwork outputs [k, P] for int task indices [k]."""
    return self.hnet.apply({'params': hnet_params}, tasks)

  def reg_rng(self, rng):
    """The regulariser samples old tasks only with a reg_subset."""
    return rng if self.config.reg_subset else None


def describe_counts(counts):
  """'hnet 105,779, target 113,610, compression 0.931': parameter counts for the console."""
  return ', '.join(f'{k} {v:,}' if isinstance(v, int) else f'{k} {v:.3g}' for k, v in counts.items())


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)
