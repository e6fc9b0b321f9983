"""The compiled part of training: the train state and the jitted functions over it.

One jitted function per kind of work, each compiled once per config: start a
task, run a number of steps, end a chunk (validation, the plateau schedule,
the best-validation snapshot), evaluate a task. The task index, the step and
the number of steps a call runs are traced integers, and per-task state lives
in arrays of size max_tasks, so no task, epoch or call length recompiles.

The host loop (train.py) decides how many steps each call runs: calls end at
the chunk, checkpoint and task boundaries and are kept short enough in wall
time that a stop request is honoured quickly.
"""

import collections
import math

import flax
import jax
import jax.numpy as jnp
import optax

from hypermask_jax import backend
from hypermask_jax import schedules
from hypermask_jax import targets
from hypermask_jax.data import tasks

# The most steps one call runs: its per-step metrics come back to the host as [this] arrays.
MAX_STEPS_PER_CALL = 1024


@flax.struct.dataclass
class TrainState:
  """Everything training needs: all of it a pytree, so it can be donated, vmapped or saved."""
  params: dict
  opt_state: optax.OptState
  memory: dict  # what the method keeps from before the current task (regularisation targets)
  task: jax.Array  # int32 scalar
  step: jax.Array  # int32 scalar, step within the task
  rng: jax.Array  # the run's key; batch draws use fold_in(task, step), so no iterator state
  batch_stats: dict  # per-task BatchNorm running statistics ({} unless batch_norm='running')
  schedule: dict  # this task's plateau state, last and best validation accuracy
  best: dict  # params and batch_stats of the best validation epoch ({} unless selection=best_val)


def hyperparams(config):
  """The traced hyperparameters: they may later be vmapped over a grid without recompiling."""
  return {k: jnp.asarray(config[k], jnp.float32)
          for k in ('learning_rate', 'beta', 'lam', 'sparsity')}


def optimizer(learning_rate):
  """A fresh Adam per task (SPEC 1.1); its rate is traced (hyperparameter, plateau schedule)."""
  return optax.adam(learning_rate)


def new_schedule(hp):
  """A task's schedule state: its plateau scheduler and no validation result yet."""
  return {'plateau': schedules.plateau_init(hp['learning_rate']),
          'val_accuracy': jnp.float32(0), 'best_val_accuracy': jnp.float32(-jnp.inf)}


class Trainer:
  """Compiled train/eval functions for one config; `traces` counts how often each was traced.

  `chunk` is the number of steps between validations (with epochs_per_task,
  one epoch); a call of `train_steps` runs at most `max_steps_per_call` of them.
  """

  def __init__(self, config, method):
    self.config = config
    self.method = method
    self.traces = collections.Counter()
    self.whole_split_eval = targets.uses_batch_statistics_at_eval(method.target)
    options = backend.compiler_options()
    self.begin_task = jax.jit(self._begin_task, donate_argnums=0, compiler_options=options)
    self.train_steps = jax.jit(self._train_steps, donate_argnums=0, compiler_options=options)
    self.end_chunk = jax.jit(self._end_chunk, donate_argnums=0, compiler_options=options)
    self.evaluate = jax.jit(self._evaluate, compiler_options=options)

  @property
  def chunk(self):
    """Steps between validations: one epoch, or log_every_steps (needs steps_per_task set)."""
    config = self.config
    if config.epochs_per_task:
      return config.steps_per_task // config.epochs_per_task
    return min(config.log_every_steps, config.steps_per_task)

  @property
  def max_steps_per_call(self):
    return min(self.chunk, MAX_STEPS_PER_CALL)

  def init_state(self, seed, hp):
    rng = jax.random.PRNGKey(seed)  # raw uint32 key data: plain arrays in checkpoints
    params = self.method.init_params(jax.random.fold_in(rng, 0))
    memory = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          jax.eval_shape(self.method.begin_task, params))
    batch_stats = self.method.init_batch_stats()
    best = ({'params': params, 'batch_stats': batch_stats}
            if self.config.selection == 'best_val' else {})
    best = jax.tree.map(jnp.copy, best)  # its own buffers: the state is donated
    return TrainState(params=params, opt_state=optimizer(hp['learning_rate']).init(params),
                      memory=memory, task=jnp.int32(0), step=jnp.int32(0),
                      rng=jax.random.fold_in(rng, 1), batch_stats=batch_stats,
                      schedule=new_schedule(hp), best=best)

  def _begin_task(self, state, task, hp):
    self.traces['begin_task'] += 1
    opt_state = (optimizer(hp['learning_rate']).init(state.params)
                 if self.method.fresh_optimizer_per_task else state.opt_state)
    return state.replace(memory=self.method.begin_task(state.params), opt_state=opt_state,
                         task=jnp.asarray(task, jnp.int32), step=jnp.int32(0),
                         schedule=new_schedule(hp))

  def _train_step(self, state, data, hp):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.task), state.step)
    rng_batch, rng_inputs = jax.random.split(rng)
    batch_tasks = self.method.batch_tasks(state.task, jax.random.fold_in(rng, 1),
                                          self.config.batch_size)
    images, labels = tasks.draw_batch(data.train, batch_tasks, rng_batch, self.config.batch_size)
    x = data.inputs(images, batch_tasks, rng_inputs, train=True)
    tx = optimizer(state.schedule['plateau']['learning_rate'])
    grads, aux, batch_stats = self.method.gradients(
        state.params, state.batch_stats, state.opt_state, tx, (x, labels, batch_tasks),
        state.task, state.step, state.memory, hp, jax.random.fold_in(rng, 2))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                         batch_stats=batch_stats, step=state.step + 1), aux

  def _train_steps(self, state, data, hp, num_steps):
    """Runs `num_steps` steps (a traced int in [1, max_steps_per_call]): (state, per-step metrics).

    The metrics are arrays [max_steps_per_call], filled for the first num_steps
    entries and zero after them; the host sums them, so how steps are grouped
    into calls never changes a logged number.
    """
    self.traces['train_steps'] += 1
    shapes = jax.eval_shape(lambda s: self._train_step(s, data, hp)[1], state)
    metrics = jax.tree.map(lambda s: jnp.zeros((self.max_steps_per_call, *s.shape), s.dtype),
                           shapes)

    def body(i, carry):
      state, metrics = carry
      state, aux = self._train_step(state, data, hp)
      return state, jax.tree.map(lambda m, a: m.at[i].set(a), metrics, aux)

    return jax.lax.fori_loop(0, num_steps, body, (state, metrics))

  def _end_chunk(self, state, data, hp):
    """Validation accuracy; the plateau step; the best snapshot, swapped in when the task ends."""
    self.traces['end_chunk'] += 1
    config = self.config
    val = self._accuracy(state.params, state.batch_stats, data, data.val, state.task, hp)
    schedule = {**state.schedule, 'val_accuracy': val}
    if config.lr_schedule == 'plateau':
      schedule['plateau'] = schedules.plateau_update(
          schedule['plateau'], val, config.plateau_factor, config.plateau_patience,
          config.plateau_min_lr)
    if config.selection != 'best_val':
      return state.replace(schedule=schedule)
    best, schedule['best_val_accuracy'] = schedules.keep_best(
        state.best, schedule['best_val_accuracy'],
        {'params': state.params, 'batch_stats': state.batch_stats}, val)
    done = state.step >= config.steps_per_task
    chosen = jax.tree.map(lambda b, c: jnp.where(done, b, c), best,
                          {'params': state.params, 'batch_stats': state.batch_stats})
    return state.replace(schedule=schedule, best=best, **chosen)

  def _evaluate(self, params, batch_stats, data, split, task, hp):
    self.traces['evaluate'] += 1
    return self._accuracy(params, batch_stats, data, split, task, hp)

  def _accuracy(self, params, batch_stats, data, split, task, hp):
    """Accuracy (%) of task `task` on `split`, in fixed-size batches with padding masked out.

    A target that normalises with batch statistics sees the task's whole split
    as one batch (the reference's evaluation), its padding excluded from them.
    """
    weights = self.method.eval_weights(params, task, hp)
    size = split.size[task]
    bs = split.max_size if self.whole_split_eval else self.config.eval_batch_size

    def correct(i):
      pos = i * bs + jnp.arange(bs)
      valid = pos < size
      idx = split.offset[task] + jnp.minimum(pos, size - 1)
      x = data.inputs(split.images[idx], task, None, train=False)
      logits = self.method.predict(weights, batch_stats, x, task, valid)
      return jnp.sum((jnp.argmax(logits, -1) == split.labels[idx]) & valid)

    batches = jnp.arange(math.ceil(split.max_size / bs))
    hits = jnp.sum(jax.lax.map(correct, batches))
    return (100.0 * hits / size).astype(jnp.float32)  # not weakly typed: it is state
