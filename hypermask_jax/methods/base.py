"""What methods share: the interface's defaults, the target network, the hypernetwork parts."""

import jax
import jax.numpy as jnp

from hypermask_jax import hypernet
from hypermask_jax import layout
from hypermask_jax import regularizers
from hypermask_jax import targets


def count(tree):
  return int(sum(x.size for x in jax.tree.leaves(tree)))


class Method:
  """Defaults for the method interface described in methods/__init__.py.

  The target has one output head of num_classes shared by all tasks, or, with
  config.output_heads='per_task' (and always for the baselines), max_tasks
  heads in one output layer, task t reading its own slice.
  """
  fresh_optimizer_per_task = True
  one_head_per_task = False

  def __init__(self, config, input_shape, num_classes):
    self.config = config
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    per_task = self.one_head_per_task or config.output_heads == 'per_task'
    num_heads = config.max_tasks if per_task else 1
    self.target = targets.build(config, num_classes, num_heads)
    self.target_shapes = jax.eval_shape(self.init_target, jax.random.key(0))

  def init_target(self, rng):
    """The target's variables: 'params' and, with per-task running statistics, 'batch_stats'."""
    return self.target.init({'params': rng, 'dropout': rng}, jnp.zeros((1, *self.input_shape)))

  def init_batch_stats(self):
    if 'batch_stats' not in self.target_shapes:
      return {}
    return self.init_target(jax.random.key(0))['batch_stats']

  def run_target(self, weights, batch_stats, x, tasks, train, rng=None, valid=None):
    """(logits, batch_stats): the target with `weights`; training updates the running statistics."""
    variables = {'params': weights, **({'batch_stats': batch_stats} if batch_stats else {})}
    rngs = {'dropout': rng} if train else {}
    if train and batch_stats:
      logits, updated = self.target.apply(variables, x, tasks, True, rngs=rngs,
                                          mutable=['batch_stats'])
      return logits, updated['batch_stats']
    return self.target.apply(variables, x, tasks, train, valid, rngs=rngs), batch_stats

  def predict(self, weights, batch_stats, x, tasks, valid=None):
    """Evaluation-mode logits."""
    return self.run_target(weights, batch_stats, x, tasks, train=False, valid=valid)[0]

  def batch_tasks(self, task):
    """Training batches come from the current task only."""
    return task

  def gradients(self, params, batch_stats, opt_state, tx, batch, task, step, memory, hp, rng,
                factored=False):
    """d loss / d params (HNET overrides this for its lookahead; HyperMask, with factored, to
    give its hypernetwork's output kernel's gradient as a factored_adam.FactoredGradient)."""
    del opt_state, tx, factored
    grads, (metrics, batch_stats) = jax.grad(self.loss, has_aux=True)(
        params, batch_stats, batch, task, step, memory, hp, rng)
    return grads, metrics, batch_stats

  def task_embeddings(self, params):
    """The learned task embeddings [max_tasks, E], or None for methods without them."""
    return params.get('hnet', {}).get('embeddings')


class HypernetworkMethod(Method):
  """A target network and a hypernetwork whose flat output covers the tensors `select` picks."""

  def __init__(self, config, input_shape, num_classes, select):
    super().__init__(config, input_shape, num_classes)
    self.layout = layout.Layout.of(self.target_shapes['params'], select)
    self.hnet = hypernet.build(config, self.layout.size)
    self.row_sizes = regularizers.row_sizes(config.max_tasks, config.reg_subset,
                                            bucketed=config.chunk_size > 0)

  def hnet_outputs(self, hnet_params, tasks, live_rows=None, targets=None, probes=None):
    """Raw hypernetwork outputs [k, P] for int task indices [k] (HMLP: the first live_rows).

    With targets = (table [T, P], rows [k - 1]): (the output of tasks[0], the
    other rows' squared distances to table[rows]), see hypernet.distances.
    probes: HMLP's output layer's probe (wide_dense.WideDense), or None.
    """
    variables = {'params': hnet_params, **({'probes': probes} if probes is not None else {})}
    return self.hnet.apply(variables, tasks, live_rows, targets)

  def task_tensors(self, hnet_params, task):
    """Task `task`'s generated tensors, {path: tensor} with the target's shapes (`Layout.split`).

    A chunked hypernetwork cuts them from its chunks' outputs
    (`hypernet.chunk_dense_pieces`), never from the flat output cut to the
    layout's size: cut first, the gradient was padded back with zeros in the
    backward, one more pass over the output (the published HNET Permuted
    MNIST step at task 1 took 4-5% more, 9.79-9.84 against 9.35-9.42 ms per
    step, experiments/compare_checkouts.py, 12 calls of 50 steps;
    Permuted MNIST-100's 3%, 24.42 against 23.61 ms; the parameters the same
    to the bit).
    """
    if isinstance(self.hnet, hypernet.ChunkedHMLP):
      return self.layout.assemble(
          self.hnet.apply({'params': hnet_params}, task[None], pieces=self.layout.sizes))
    return self.layout.split(self.hnet_outputs(hnet_params, task[None])[0])

  def hnet_hidden(self, hnet_params, tasks):
    """A chunked hypernetwork's output-layer inputs [k, chunks, h] for task indices [k]."""
    return self.hnet.apply({'params': hnet_params}, tasks, hidden_only=True)

  def step_rngs(self, rng):
    """(the regulariser's key, or None without a reg_subset; the target's dropout key)."""
    rng_reg, rng_target = jax.random.split(rng)
    return (rng_reg if self.config.reg_subset else None), rng_target


def describe_counts(counts):
  """'hnet 105,779, target 113,610, compression 0.931': parameter counts for the console."""
  return ', '.join(f'{k} {v:,}' if isinstance(v, int) else f'{k} {v:.3g}' for k, v in counts.items())


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)
