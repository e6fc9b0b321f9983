"""The training loop shared by all methods: tasks one after another, each a compiled lax.scan.

One jitted function per kind of work (start a task, run a chunk of steps,
evaluate a task), each compiled once per config: the task index and the step
are traced integers and per-task state lives in arrays of size max_tasks.
A chunk ends with a validation pass inside the same compiled program; with
epochs_per_task a chunk is one epoch, and the plateau schedule and the
best-validation snapshot are updated there (they live in the train state).
"""

import collections
import json
import math
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypermask_jax import checkpoints
from hypermask_jax import config_checks
from hypermask_jax import metrics
from hypermask_jax import outputs
from hypermask_jax import preemption
from hypermask_jax import schedules
from hypermask_jax import targets
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods import base


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
  """Compiled train/eval functions for one config; `traces` counts how often each was traced."""

  def __init__(self, config, method):
    self.config = config
    self.method = method
    self.traces = collections.Counter()
    if config.epochs_per_task:
      self.chunk = config.steps_per_task // config.epochs_per_task  # one epoch
    else:
      self.chunk = min(config.log_every_steps, config.steps_per_task)
    self.whole_split_eval = targets.uses_batch_statistics_at_eval(method.target)
    self.begin_task = jax.jit(self._begin_task, donate_argnums=0)
    self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0)
    self.evaluate = jax.jit(self._evaluate)

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
    task_rng, order_rng = jax.random.split(jax.random.fold_in(state.rng, state.task))
    rng = jax.random.fold_in(task_rng, state.step)
    images, labels, batch_tasks = tasks.draw_batch(
        data.train, self.method.batch_tasks(state.task), order_rng, state.step,
        self.config.batch_size)
    x = data.inputs(images, batch_tasks, jax.random.fold_in(rng, 1), train=True)
    tx = optimizer(state.schedule['plateau']['learning_rate'])
    grads, aux, batch_stats = self.method.gradients(
        state.params, state.batch_stats, state.opt_state, tx, (x, labels, batch_tasks),
        state.task, state.step, state.memory, hp, jax.random.fold_in(rng, 2))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                         batch_stats=batch_stats, step=state.step + 1), aux

  def _train_chunk(self, state, data, hp):
    """Runs self.chunk steps (those past steps_per_task skipped: one shape), then validates."""
    self.traces['train_chunk'] += 1

    def body(state, _):
      active = state.step < self.config.steps_per_task
      skip = lambda state: (state, jax.tree.map(jnp.zeros_like, aux_shape))
      new_state, aux = jax.lax.cond(active, lambda s: self._train_step(s, data, hp), skip, state)
      return new_state, (aux, active)

    aux_shape = jax.eval_shape(lambda s: self._train_step(s, data, hp)[1], state)
    state, aux = jax.lax.scan(body, state, length=self.chunk)
    return self._end_of_chunk(state, data, hp), aux

  def _end_of_chunk(self, state, data, hp):
    """Validation accuracy; the plateau step; the best snapshot, swapped in when the task ends."""
    config = self.config
    if data.val is None:  # no validation split (config_checks refuses plateau and best_val)
      return state
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


def _format_eta(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def _schedule_fields(config, schedule, epoch):
  """What the metrics log adds with epochs, a plateau schedule, best-validation selection."""
  fields = {'epoch': epoch} if config.epochs_per_task else {}
  if config.lr_schedule == 'plateau':
    fields['learning_rate'] = float(schedule['plateau']['learning_rate'])
  if config.selection == 'best_val':
    fields['best_val_accuracy'] = float(schedule['best_val_accuracy'])
  return fields


def _new_progress(num_tasks):
  """What a checkpoint records besides the train state (JSON)."""
  return {'accuracy': [[None] * num_tasks for _ in range(num_tasks)], 'records': [],
          'wall_time': 0.0, 'train_time': 0.0, 'steps_timed': 0,
          'random_init_accuracy': [None] * num_tasks,  # R_j: the initial params on task j
          'before_training_accuracy': [None] * num_tasks}  # A[j-1, j]: task j before training it


def train_and_evaluate(config, workdir, allow_config_change=False):
  """Runs the whole task sequence of `config` in `workdir`, resuming from its newest checkpoint.

  Returns the summary. Raises preemption.Preempted after saving if SIGTERM or
  SIGINT arrived; running the same call again continues where it stopped and
  ends with the results an uninterrupted run would have produced.
  """
  config = config_checks.resolve(config)
  out = outputs.Workdir(workdir)
  finished = out.start(config, allow_config_change)
  if finished is not None:
    logging.info('%s already holds the finished results of this config; not retraining.',
                 workdir)
    return finished
  data = tasks.load_task_set(config)
  config = config_checks.fit_to_data(config, data)
  method = METHODS[config.method](config, data.input_shape, data.num_classes)
  trainer = Trainer(config, method)
  hp = hyperparams(config)
  checkpointer = checkpoints.Checkpointer(workdir, config.checkpoints_to_keep)
  with preemption.StopSignals() as stop:
    try:
      return _run(config, out, data, method, trainer, hp, checkpointer, stop)
    finally:
      checkpointer.close()


def _run(config, out, data, method, trainer, hp, checkpointer, stop):
  """The task loop, from a fresh start or from the newest checkpoint."""
  started = time.time()
  num_tasks, steps = config.num_tasks, config.steps_per_task
  state = trainer.init_state(config.seed, hp)
  counts = method.param_counts(state.params)
  logging.info('Settings: %s', config_checks.describe(config))
  logging.info('Parameters: %s', base.describe_counts(counts))
  restored = checkpointer.restore_latest(state)
  if restored is None:
    progress, first_task, resume_mid_task = _new_progress(num_tasks), 0, False
    progress['random_init_accuracy'] = [
        float(trainer.evaluate(state.params, state.batch_stats, data, data.test, j, hp))
        for j in range(num_tasks)]
  else:
    state, progress = restored
    task, step = int(state.task), int(state.step)
    logging.info('Resumed from the checkpoint at task %d step %d.', task + 1, step)
    resume_mid_task = progress['accuracy'][task][task] is None
    first_task = task if resume_mid_task else task + 1
  out.rewrite_metrics(progress['records'])
  wall_before = progress['wall_time']
  compiled = False  # the first chunk of this process includes compiling: not timed

  def save(state):
    progress['wall_time'] = wall_before + time.time() - started
    step = int(state.task) * steps + int(state.step)
    logging.info('saving checkpoint %d (task %d step %d)', step, int(state.task) + 1,
                 int(state.step))
    # A snapshot: the asynchronous save may serialise it after `progress` has moved on.
    checkpointer.save(step, state, json.loads(json.dumps(progress)))

  def stop_if_requested(state, saved):
    if stop.requested:
      if not saved:
        save(state)
      checkpointer.wait()
      raise preemption.Preempted(f'stopped by {stop.requested} at task {int(state.task) + 1} '
                                 f'step {int(state.step)}; checkpoint saved')

  for task in range(first_task, num_tasks):
    if not (resume_mid_task and task == first_task):
      state = trainer.begin_task(state, task, hp)
    step = int(state.step)  # kept on the host: one device read per chunk
    while step < steps:
      before = task * steps + step
      tic = time.time()
      state, (aux, active) = trainer.train_chunk(state, data, hp)
      aux, active, step, schedule = jax.device_get((aux, active, state.step, state.schedule))
      step = int(step)
      elapsed = time.time() - tic
      if compiled:
        progress['train_time'] += elapsed
        progress['steps_timed'] += int(active.sum())
      compiled = True
      rate = progress['steps_timed'] / max(progress['train_time'], 1e-9)
      means = {k: float(np.sum(v * active) / max(active.sum(), 1)) for k, v in aux.items()}
      # Without a validation split no validation accuracy is logged (the test split stays unseen).
      val = {} if data.val is None else {'val_accuracy': float(schedule['val_accuracy'])}
      fields = _schedule_fields(config, schedule, step // trainer.chunk)
      record = {'task': task, 'step': step, **means, **val, **fields, 'steps_per_sec': rate}
      progress['records'].append(record)
      out.log_metrics(record)
      remaining = (num_tasks - task) * steps - step
      terms = ' '.join(f'{k} {v:.4g}' for k, v in {**means, **fields}.items()
                       if k != 'accuracy')
      logging.info('task %d/%d step %d/%d | %s | train acc %.2f val acc %s | %.1f steps/s '
                   'ETA %s', task + 1, num_tasks, step, steps, terms,
                   100 * means['accuracy'], f"{val['val_accuracy']:.2f}" if val else '-', rate,
                   _format_eta(remaining / rate) if progress['steps_timed'] else '?')
      if step < steps:  # the end of a task is saved (and a stop honoured) after eval
        periodic = ((task * steps + step) // config.checkpoint_every_steps
                    > before // config.checkpoint_every_steps)
        if periodic:
          save(state)
        stop_if_requested(state, saved=periodic)
    if config.selection == 'best_val':
      logging.info('task %d: kept the parameters of the best validation epoch (%.2f%%)',
                   task + 1, float(state.schedule['best_val_accuracy']))
    row = [float(trainer.evaluate(state.params, state.batch_stats, data, data.test, j, hp))
           for j in range(task + 1)]
    progress['accuracy'][task][:task + 1] = row
    if task + 1 < num_tasks:  # the next task before its training, for forward transfer
      progress['before_training_accuracy'][task + 1] = float(
          trainer.evaluate(state.params, state.batch_stats, data, data.test, task + 1, hp))
    out.write_accuracy(progress['accuracy'], task + 1)
    logging.info('after task %d: test accuracy %s (mean %.2f)', task + 1,
                 ' '.join(f'{a:.2f}' for a in row), np.mean(row))
    save(state)
    stop_if_requested(state, saved=True)

  acc = np.array(progress['accuracy'], dtype=float)
  summary = {**metrics.summary(acc, progress['before_training_accuracy'],
                               progress['random_init_accuracy']),
             'accuracy_matrix': progress['accuracy'],
             'wall_time_sec': wall_before + time.time() - started,
             'train_steps_per_sec': progress['steps_timed'] / max(progress['train_time'], 1e-9),
             'params': counts, 'traces': dict(trainer.traces)}
  embeddings = method.task_embeddings(state.params)
  if embeddings is not None:
    out.write_embeddings(np.asarray(embeddings[:num_tasks]))
  out.write_summary(summary)
  logging.info('done: mean accuracy %.2f, BWT %.2f, forgetting %.2f, FWT %.2f; results in %s',
               summary['mean_accuracy'], summary['bwt'], summary['forgetting'], summary['fwt'],
               out.path)
  return summary
