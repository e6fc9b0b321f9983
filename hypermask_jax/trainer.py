"""The compiled part of training: the train state and the jitted functions over it.

One jitted function per kind of work, each compiled once per program: start a
task, run a number of steps (with the best-validation checks that fall within
them, `selection_every_steps`), end a chunk (validation, the plateau schedule,
the best-validation snapshot), evaluate a task. The task index, the step and
the number of steps a call runs are traced integers, and per-task state lives
in arrays of size max_tasks, so no task, epoch or call length recompiles.

A program trains R runs at once: every array of the state, the
hyperparameters and the tasks' permutations has a leading runs axis, and the
per-run functions are vmapped over it. The task index and the step are shared
and unbatched, so `lax.switch` and `lax.cond` on them stay real branches (a
batched predicate would turn them into selects that compute every branch).

The host loop (train.py) decides how many steps each call runs: calls end at
the chunk, checkpoint and task boundaries and are kept short enough in wall
time that a stop request is honoured quickly.
"""

import collections
import math

import flax
import jax
import jax.numpy as jnp
from jax.extend.core import jaxpr_as_fun
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import optax

from hypermask_jax import backend
from hypermask_jax import factored_adam
from hypermask_jax import hypernet
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
  rng: jax.Array  # the run's key; keyed by (task, step) and (task, epoch): no iterator state
  batch_stats: dict  # per-task BatchNorm running statistics ({} unless batch_norm='running')
  schedule: dict  # this task's plateau state, last and best validation accuracy
  best: dict  # params and batch_stats of the best validation epoch ({} unless selection=best_val)


def run_hyperparams(config):
  """One run's traced fields (fields.TRACED), as the per-run functions take them."""
  return {'seed': np.int32(config.seed), 'learning_rate': np.float32(config.learning_rate),
          'beta': np.float32(config.beta), 'lam': np.float32(config.lam),
          'sparsity': np.float32(config.sparsity), 'l1_masked': np.bool_(config.l1_masked)}


def hyperparams(configs):
  """The traced fields of each run of a program, stacked: {name: [R]}."""
  return jax.tree.map(lambda *values: np.stack(values), *map(run_hyperparams, configs))


# How each part of the state is laid out over the runs axis: the task and the step are shared.
STATE_AXES = TrainState(params=0, opt_state=0, memory=0, task=None, step=None, rng=0,
                        batch_stats=0, schedule=0, best=0)


def data_axes(data):
  """The task set's layout over the runs axis: the images are shared, the permutations per run."""
  return data.replace(train=None, val=None, test=None, perms=0)


def optimizer(learning_rate):
  """A fresh Adam per task (SPEC 1.1); its rate is traced (hyperparameter, plateau schedule)."""
  return optax.adam(learning_rate)


def new_schedule(hp, selection):
  """A task's schedule state: its plateau scheduler and no validation result yet."""
  schedule = {'plateau': schedules.plateau_init(hp['learning_rate']),
              'val_accuracy': jnp.float32(0), 'best_val_accuracy': jnp.float32(-jnp.inf)}
  if selection == 'best_val_loss':
    schedule.update(val_loss=jnp.float32(jnp.inf), best_val_loss=jnp.float32(jnp.inf))
  return schedule


class Trainer:
  """Compiled train/eval functions for one program; `traces` counts how often each was traced.

  `chunk` is the number of steps between validations (with epochs_per_task,
  one epoch); a call of `train_steps` runs at most `max_steps_per_call` of them.
  Every function takes and returns the state of all R runs of the program.
  """

  def __init__(self, config, method):
    self.config = config
    self.method = method
    self.traces = collections.Counter()
    self.whole_split_eval = targets.uses_batch_statistics_at_eval(method.target)
    fan_in = hypernet.chunk_fan_in(config)
    self.options = backend.compiler_options(config.method, fan_in)
    self.init_options = backend.init_compiler_options(config.method, fan_in)
    jit = lambda fn, **kwargs: jax.jit(fn, compiler_options=self.options, **kwargs)
    self.init_state = jax.jit(self._init_state, compiler_options=self.init_options)
    self.begin_task = jit(self._begin_task, donate_argnums=0)
    self.train_steps = jit(self._train_steps, donate_argnums=0)
    self.end_chunk = jit(self._end_chunk, donate_argnums=0)
    self.evaluate = jit(self._evaluate, static_argnames='split')

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

  def _runs(self, fn, *axes, out_axes=STATE_AXES):
    """fn of one run, vmapped over the runs axis of the arguments laid out as `axes`."""
    return jax.vmap(fn, in_axes=axes, out_axes=out_axes)

  def init_run(self, hp):
    """One run's fresh state (hp: that run's traced fields)."""
    rng = jax.random.PRNGKey(hp['seed'])  # raw uint32 key data: plain arrays in checkpoints
    params = self.method.init_params(jax.random.fold_in(rng, 0))
    memory = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          jax.eval_shape(self.method.begin_task, params))
    batch_stats = self.method.init_batch_stats()
    best = ({'params': params, 'batch_stats': batch_stats}
            if self.config.selection != 'last' else {})
    best = jax.tree.map(jnp.copy, best)  # its own buffers: the state is donated
    return TrainState(params=params, opt_state=optimizer(hp['learning_rate']).init(params),
                      memory=memory, task=jnp.int32(0), step=jnp.int32(0),
                      rng=jax.random.fold_in(rng, 1), batch_stats=batch_stats,
                      schedule=new_schedule(hp, self.config.selection), best=best)

  def fresh(self, task_set, configs, mesh=None):
    """(fresh state, task set, hyperparameters) of a program whose runs have these configs.

    With a mesh (devices.runs_mesh) the runs axis is split over its devices and
    the images replicated; without one, everything is on the default device.
    """
    hp = hyperparams(configs)
    data = tasks.for_runs(task_set, [c.seed for c in configs])
    if mesh is None:
      return self.init_state(hp), data, hp
    runs, shared = NamedSharding(mesh, PartitionSpec('runs')), NamedSharding(mesh, PartitionSpec())
    layout = lambda axes: jax.tree.map(lambda axis: runs if axis == 0 else shared, axes,
                                       is_leaf=lambda x: x is None)
    hp, data = jax.device_put(hp, runs), jax.device_put(data, layout(data_axes(data)))
    init = jax.jit(self._init_state, out_shardings=layout(STATE_AXES),
                   compiler_options=self.init_options)
    return init(hp), data, hp

  def _init_state(self, hp):
    self.traces['init_state'] += 1
    return self._runs(self.init_run, 0)(hp)

  def _begin_task(self, state, task, hp):
    self.traces['begin_task'] += 1

    def begin(state, hp):
      opt_state = (optimizer(hp['learning_rate']).init(state.params)
                   if self.method.fresh_optimizer_per_task else state.opt_state)
      return state.replace(memory=self.method.begin_task(state.params), opt_state=opt_state,
                           task=jnp.asarray(task, jnp.int32), step=jnp.int32(0),
                           schedule=new_schedule(hp, self.config.selection))
    return self._runs(begin, STATE_AXES, 0)(state, hp)

  def _train_step(self, state, data, hp):
    """One step of one run."""
    self.traces['train_step'] += 1
    task_rng, order_rng = jax.random.split(jax.random.fold_in(state.rng, state.task))
    rng = jax.random.fold_in(task_rng, state.step)
    images, labels, batch_tasks = tasks.draw_batch(
        data.train, self.method.batch_tasks(state.task), order_rng, state.step,
        self.config.batch_size)
    x = data.inputs(images, batch_tasks, jax.random.fold_in(rng, 1), train=True)
    learning_rate = state.schedule['plateau']['learning_rate']
    tx = optimizer(learning_rate)
    kernels = backend.factored_adam() == 'ffi'
    grads, aux, batch_stats = self.method.gradients(
        state.params, state.batch_stats, state.opt_state, tx, (x, labels, batch_tasks),
        state.task, state.step, state.memory, hp, jax.random.fold_in(rng, 2), factored=kernels)
    params, opt_state = factored_adam.apply(tx, learning_rate, grads, state.opt_state,
                                            state.params, kernels=kernels)
    return state.replace(params=params, opt_state=opt_state, batch_stats=batch_stats,
                         step=state.step + 1), aux

  def _train_steps(self, state, data, hp, num_steps):
    """Runs `num_steps` steps (a traced int in [1, max_steps_per_call]): (state, per-step metrics).

    The metrics are arrays [max_steps_per_call, R], filled for the first
    num_steps entries and zero after them; the host sums them, so how steps are
    grouped into calls never changes a logged number.
    """
    self.traces['train_steps'] += 1
    step = self._runs(self._train_step, STATE_AXES, data_axes(data), 0, out_axes=(STATE_AXES, 0))
    # Traced once (0.3-0.7 s for the HNET Split MNIST step): the one jaxpr gives the metrics' shapes and is
    # the loop's step. eval_shape and then a call in the loop traced it twice.
    step_jaxpr, shapes = jax.make_jaxpr(step, return_shape=True)(state, data, hp)
    metrics = jax.tree.map(lambda s: jnp.zeros((self.max_steps_per_call, *s.shape), s.dtype),
                           shapes[1])

    def body(i, carry):
      state, metrics = carry
      state, aux = jax.tree.unflatten(jax.tree.structure(shapes), jaxpr_as_fun(step_jaxpr)(
          *jax.tree.leaves((state, data, hp))))
      if self.checks_within_chunks(data):  # the step is shared by the runs: a real branch
        # Only what a check changes leaves the branch, so that the branch never has to copy the
        # params or the optimizer state.
        def checked(state):
          state = self._check_best(state, data, hp)
          return state.best, state.schedule
        best, schedule = jax.lax.cond(self.is_check_step(state.step), checked,
                                      lambda state: (state.best, state.schedule), state)
        state = state.replace(best=best, schedule=schedule)
      return state, jax.tree.map(lambda m, a: m.at[i].set(a), metrics, aux)

    return jax.lax.fori_loop(0, num_steps, body, (state, metrics))

  def checks_within_chunks(self, data):
    """Whether the compiled loop also checks for the best snapshot between chunk ends."""
    return (self.config.selection != 'last' and self.config.selection_every_steps > 0
            and data.val is not None)

  def is_check_step(self, step):
    """Whether the step just taken (`step` counts them from 1) ends with a best-snapshot check
    within the chunk: steps 1, 1 + every, 1 + 2 * every, ... (the reference checks after the
    iterations i % every == 0, counted from 0), except a chunk's last, which end_chunk checks."""
    return ((step - 1) % self.config.selection_every_steps == 0) & (step % self.chunk != 0)

  def _keep_best(self, state, val, loss):
    """One run's best snapshot after a validation (accuracy `val`, mean loss `loss`): the current
    params if they beat it, by accuracy or by loss."""
    schedule = dict(state.schedule)
    current = {'params': state.params, 'batch_stats': state.batch_stats}
    if self.config.selection == 'best_val':
      best, schedule['best_val_accuracy'] = schedules.keep_best(
          state.best, schedule['best_val_accuracy'], current, val)
    else:  # the lowest loss: the highest negated loss
      best, neg_loss = schedules.keep_best(state.best, -schedule['best_val_loss'], current, -loss)
      schedule['best_val_loss'] = -neg_loss
    return state.replace(schedule=schedule, best=best)

  def _check_best(self, state, data, hp):
    """A best-snapshot check between chunk ends, for every run: validation, no plateau step."""
    def check(state, data, hp):
      val, loss = self._val_metrics(state.params, state.batch_stats, data, data.val, state.task,
                                    hp)
      return self._keep_best(state, val, loss)
    return self._runs(check, STATE_AXES, data_axes(data), 0)(state, data, hp)

  def _end_chunk(self, state, data, hp):
    """Validation accuracy (and loss); the plateau step (on the accuracy); the best snapshot (by
    accuracy, or by loss), swapped in when the task ends."""
    self.traces['end_chunk'] += 1
    config = self.config

    if data.val is None:  # no validation split (config_checks refuses plateau and best_val)
      return state

    def end(state, data, hp):
      val, loss = self._val_metrics(state.params, state.batch_stats, data, data.val, state.task,
                                    hp)
      schedule = {**state.schedule, 'val_accuracy': val}
      if config.lr_schedule == 'plateau':
        schedule['plateau'] = schedules.plateau_update(
            schedule['plateau'], val, config.plateau_factor, config.plateau_patience,
            config.plateau_min_lr)
      if config.selection == 'best_val_loss':
        schedule['val_loss'] = loss
      state = state.replace(schedule=schedule)
      if config.selection == 'last':
        return state
      state = self._keep_best(state, val, loss)
      done = state.step >= config.steps_per_task
      chosen = jax.tree.map(lambda b, c: jnp.where(done, b, c), state.best,
                            {'params': state.params, 'batch_stats': state.batch_stats})
      return state.replace(**chosen)
    return self._runs(end, STATE_AXES, data_axes(data), 0)(state, data, hp)

  def _evaluate(self, params, batch_stats, data, split, task, hp):
    """How many examples of task `task` of split `split` ('test' or 'val') each run classifies
    correctly: int32 [R].

    The split is named, not passed, so each split compiles once (their sizes
    differ) and the trace count says which. Counts, not percentages: the host
    divides in float64, so runs that predict the same examples report the same
    accuracy however they were compiled.
    """
    self.traces[f'evaluate_{split}'] += 1
    split = getattr(data, split)
    hits = lambda params, batch_stats, data, hp: self._hits_and_loss(
        params, batch_stats, data, split, task, hp)[0]
    return self._runs(hits, 0, 0, data_axes(data), 0, out_axes=0)(params, batch_stats, data, hp)

  def _val_metrics(self, params, batch_stats, data, split, task, hp):
    """One run's (accuracy (%), mean cross-entropy) on task `task` of `split` (float32, for
    decisions on the device: plateau, best snapshot)."""
    hits, loss = self._hits_and_loss(params, batch_stats, data, split, task, hp)
    size = split.size[task]
    # Not weakly typed: they are state.
    return (100.0 * hits / size).astype(jnp.float32), (loss / size).astype(jnp.float32)

  def eval_batch(self, split):
    """Examples per evaluation batch: eval_batch_size, or the split's largest task if smaller
    (padding beyond it would be computed and thrown away)."""
    return min(self.config.eval_batch_size, split.max_size)

  def _hits_and_loss(self, params, batch_stats, data, split, task, hp):
    """One run's correct predictions (int32) and summed cross-entropy on task `task` of `split`,
    in fixed-size batches with padding masked out.

    A target that normalises with batch statistics sees the task's whole split
    as one batch (the reference's evaluation), its padding excluded from them.
    """
    weights = self.method.eval_weights(params, task, hp)
    size = split.size[task]
    bs = split.max_size if self.whole_split_eval else self.eval_batch(split)

    def correct(i):
      pos = i * bs + jnp.arange(bs)
      valid = pos < size
      idx = split.offset[task] + jnp.minimum(pos, size - 1)
      x = data.inputs(split.images[idx], task, None, train=False)
      logits = self.method.predict(weights, batch_stats, x, task, valid)
      labels = split.labels[idx]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (jnp.sum((jnp.argmax(logits, -1) == labels) & valid),
              jnp.sum(jnp.where(valid, ce, 0.0)))

    batches = jnp.arange(math.ceil(split.max_size / bs))
    hits, ce = jax.tree.map(jnp.sum, jax.lax.map(correct, batches))
    return hits.astype(jnp.int32), ce
