"""The host loop shared by all methods: tasks one after another, with progress, checkpoints,
evaluation and results.

A start is all checks first (config, workdir, data), then the commitment
(lock, config.json), so a refused start leaves the workdir as it was. Training
calls the compiled functions of trainer.py: each call runs as many steps as
fit in `max_call_seconds` (and never crosses a chunk, checkpoint or task
boundary), so a stop request (SIGTERM, SIGINT) is honoured within about that
long, whatever `log_every_steps` is. Progress lines, metrics records and
checkpoints follow the chunks; after each task every task seen so far is
evaluated on its test split.
"""

import json
import time

from absl import logging
import jax
import numpy as np

from hypermask_jax import checkpoints
from hypermask_jax import config_checks
from hypermask_jax import environment
from hypermask_jax import metrics
from hypermask_jax import outputs
from hypermask_jax import preemption
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods import base


def build(config, input_shape, num_classes):
  """(method, trainer, hyperparameters) for a resolved config."""
  method = METHODS[config.method](config, input_shape, num_classes)
  return method, trainer_lib.Trainer(config, method), trainer_lib.hyperparams(config)


def state_shapes(config):
  """The train state's array shapes for config, without computing anything."""
  _, trainer, hp = build(config, tasks.input_shape(config.dataset),
                         tasks.NUM_CLASSES[config.dataset])
  state = jax.eval_shape(trainer.init_state, config.seed, hp)
  return jax.tree.map(lambda x: (x.shape, x.dtype), state)


def _with_field(config, field, value):
  """A copy of config with the dotted `field` set to a saved (JSON) value."""
  config = config.copy_and_resolve_references()
  *parents, name = field.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  with config.ignore_type(), config.unlocked():
    node[name] = tuple(value) if isinstance(node[name], tuple) else value
  return config


def refuse_shape_changes(config, changed):
  """Raises ConfigError if resuming with the `changed` fields would change the state's shapes.

  `changed` maps each differing field to (saved value, requested value); the
  fields named are those whose change alone changes a shape (all of them if
  only their combination does).
  """
  shapes = state_shapes(config)
  saved = config
  for field, (value, _) in changed.items():
    saved = _with_field(saved, field, value)
  if state_shapes(saved) == shapes:
    return
  culprits = [f for f, (value, _) in changed.items()
              if state_shapes(_with_field(config, f, value)) != shapes] or list(changed)
  raise config_checks.ConfigError(
      f"--allow_config_change cannot resume with {', '.join(culprits)} changed: "
      f"{'it changes' if len(culprits) == 1 else 'they change'} the shapes of the saved train "
      'state; keep the saved value, or use another --workdir')


def _format_eta(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def log_results(summary, path):
  """The final row of the accuracy matrix and the headline numbers, on the console."""
  final = [a for a in summary['accuracy_matrix'][-1] if a is not None]
  logging.info('final test accuracy (%%) of tasks 1-%d: %s', len(final),
               ' '.join(f'{a:.2f}' for a in final))
  logging.info('done: mean accuracy %.2f%%, BWT %.2f, forgetting %.2f; results in %s',
               summary['mean_accuracy'], summary['bwt'], summary['forgetting'], path)


def train_and_evaluate(config, workdir, allow_config_change=False):
  """Runs the whole task sequence of `config` in `workdir`, resuming from its newest checkpoint.

  Returns the summary. Raises errors.BadInput (before anything is written) for
  a config, workdir or dataset it cannot run with, and preemption.Preempted
  after saving if SIGTERM or SIGINT arrived; running the same call again
  continues where it stopped and ends with the results an uninterrupted run
  would have produced.
  """
  config = config_checks.resolve(config)
  out = outputs.Workdir(workdir)
  finished = out.finished_summary(config)
  if finished is not None:
    logging.info('%s already holds the finished results of this config; not retraining.',
                 out.path)
    log_results(finished, out.path)
    return finished
  changed = out.check_start(config, allow_config_change)
  if changed:
    refuse_shape_changes(config, changed)
  logging.info('%s', environment.one_line())
  logging.info('loading data: %s (TFDS %s) from %s', config.dataset,
               tasks.TFDS_NAMES[config.dataset], config.data_dir or 'the TFDS default data_dir')
  data = tasks.load_task_set(config)
  config = config_checks.fit_to_data(config, data)
  method, trainer, hp = build(config, data.input_shape, data.num_classes)
  state = trainer.init_state(config.seed, hp)
  logging.info('%d tasks of %d training steps; parameters: %s', config.num_tasks,
               config.steps_per_task, base.describe_counts(method.param_counts(state.params)))
  out.lock_and_create()
  try:
    checkpointer = checkpoints.Checkpointer(out.path, config.checkpoints_to_keep)
    try:
      restored = checkpointer.restore_latest(state)
      if restored is not None and restored[1].get('format') != PROGRESS_FORMAT:
        raise checkpoints.CheckpointMismatch(
            f'the newest checkpoint in {out.path} was written by an older hypermask_jax '
            f"(progress format {restored[1].get('format', 1)}, now {PROGRESS_FORMAT}); finish "
            'that run with the version that started it, or use another --workdir')
      out.save_config(config)
      with preemption.StopSignals() as stop:
        return TaskLoop(config, out, data, method, trainer, hp, checkpointer, stop).run(
            state, restored)
    finally:
      checkpointer.close()
  finally:
    out.release()


class CallPacer:
  """How many steps the next compiled call runs: as many as take about max_seconds / 2.

  The first call of a process compiles, so it runs one step and is not timed.
  The size then follows the measured time per step, at most doubling from one
  call to the next, and drops at each new task (whose regulariser may cost more).
  """

  def __init__(self, max_seconds):
    self.max_seconds = max_seconds
    self.size = 1
    self.compiled = False

  def steps(self, limit):
    return max(1, min(limit, self.size))

  def record(self, steps, seconds):
    """Returns whether this call is timed (it did not compile)."""
    if not self.compiled:
      self.compiled = True
      return False
    fit = int(self.max_seconds / 2 / max(seconds / steps, 1e-9))
    self.size = max(1, min(fit, 2 * self.size))
    return True

  def new_task(self):
    self.size = max(1, self.size // 4)


# The layout of `progress` in checkpoints; a checkpoint of another layout is refused on resume.
PROGRESS_FORMAT = 2


def new_progress(num_tasks):
  """What a checkpoint records besides the train state (JSON)."""
  return {'format': PROGRESS_FORMAT, 'accuracy': [[None] * num_tasks for _ in range(num_tasks)],
          'records': [], 'chunk': new_chunk(), 'wall_time': 0.0, 'train_time': 0.0,
          'steps_timed': 0}


def new_chunk():
  """The running sums of the chunk in progress (kept in checkpoints: a stop may come mid-chunk)."""
  return {'sums': {}, 'steps': 0, 'timed_steps': 0, 'timed_seconds': 0.0}


class TaskLoop:
  """The task loop of one run, from a fresh start or from a restored checkpoint."""

  def __init__(self, config, out, data, method, trainer, hp, checkpointer, stop):
    self.config, self.out, self.data, self.method = config, out, data, method
    self.trainer, self.hp, self.checkpointer, self.stop = trainer, hp, checkpointer, stop
    self.pacer = CallPacer(config.max_call_seconds)
    self.started = time.time()
    self.progress = new_progress(config.num_tasks)

  def run(self, state, restored):
    config = self.config
    if restored is None:
      first_task, resume_mid_task = 0, False
    else:
      state, self.progress = restored
      task, step = int(state.task), int(state.step)
      logging.info('resumed from the checkpoint at task %d/%d step %d', task + 1,
                   config.num_tasks, step)
      resume_mid_task = self.progress['accuracy'][task][task] is None
      first_task = task if resume_mid_task else task + 1
    self.out.rewrite_metrics(self.progress['records'])
    self.wall_before = self.progress['wall_time']
    for task in range(first_task, config.num_tasks):
      if not (resume_mid_task and task == first_task):
        state = self.trainer.begin_task(state, task, self.hp)
        self.pacer.new_task()
      state = self.train_task(state, task)
      state = self.evaluate_task(state, task)
    return self.finish(state)

  def train_task(self, state, task):
    """Trains task `task` from state.step to its end, in calls that end at every boundary."""
    config, trainer = self.config, self.trainer
    steps, every = config.steps_per_task, config.checkpoint_every_steps
    step = int(state.step)  # kept on the host: one device read per call
    while step < steps:
      chunk_end = min((step // trainer.chunk + 1) * trainer.chunk, steps)
      next_save = ((task * steps + step) // every + 1) * every - task * steps
      n = self.pacer.steps(min(chunk_end, next_save, step + trainer.max_steps_per_call) - step)
      if not self.pacer.compiled:
        logging.info('compiling the training step (once per run; the first call also runs one '
                     'step)')
      tic = time.time()
      state, aux = trainer.train_steps(state, self.data, self.hp, np.int32(n))
      aux = jax.device_get(aux)
      seconds = time.time() - tic
      self.add_to_chunk(aux, n, seconds, timed=self.pacer.record(n, seconds))
      step += n
      if step == chunk_end:
        state = trainer.end_chunk(state, self.data, self.hp)
        self.log_chunk(state, task, step)
      if step < steps:  # the end of a task is saved (and a stop honoured) after its evaluation
        saved = step == next_save
        if saved:
          self.save(state)
        self.stop_if_requested(state, saved)
    return state

  def add_to_chunk(self, aux, n, seconds, timed):
    """Adds a call's per-step metrics, one step after the other (the same sums however the
    steps were grouped into calls)."""
    chunk = self.progress['chunk']
    for key, values in aux.items():
      total = chunk['sums'].get(key, 0.0)
      for value in values[:n]:
        total += float(value)
      chunk['sums'][key] = total
    chunk['steps'] += n
    if timed:
      chunk['timed_steps'] += n
      chunk['timed_seconds'] += seconds
      self.progress['steps_timed'] += n
      self.progress['train_time'] += seconds

  def log_chunk(self, state, task, step):
    """The chunk's record (metrics.jsonl) and progress line."""
    config, progress = self.config, self.progress
    chunk = progress['chunk']
    means = {k: v / chunk['steps'] for k, v in chunk['sums'].items()}
    means['accuracy'] *= 100.0
    schedule = jax.device_get(state.schedule)
    record = {'task': task + 1, 'step': step, 'global_step': task * config.steps_per_task + step,
              **means, 'val_accuracy': float(schedule['val_accuracy'])}
    if config.epochs_per_task:
      record['epoch'] = step // self.trainer.chunk
    if config.lr_schedule == 'plateau':
      record['learning_rate'] = float(schedule['plateau']['learning_rate'])
    if config.selection == 'best_val':
      record['best_val_accuracy'] = float(schedule['best_val_accuracy'])
    if chunk['timed_steps']:
      record['steps_per_sec'] = chunk['timed_steps'] / chunk['timed_seconds']
    progress['records'].append(record)
    progress['chunk'] = new_chunk()
    self.out.log_metrics(record)
    hidden = ('task', 'step', 'global_step', 'accuracy', 'val_accuracy', 'steps_per_sec')
    shown = {k: record[k] for k in sorted(record, key=lambda k: (k != 'loss', k))
             if k not in hidden}
    rate = progress['steps_timed'] / max(progress['train_time'], 1e-9)
    remaining = (config.num_tasks - task) * config.steps_per_task - step
    logging.info('task %d/%d step %d/%d | %s | train acc %.2f%% val acc %.2f%% | %s',
                 task + 1, config.num_tasks, step, config.steps_per_task,
                 ' '.join(f'{k} {v:.4g}' for k, v in shown.items()), record['accuracy'],
                 record['val_accuracy'],
                 f'{rate:.1f} steps/s, ETA {_format_eta(remaining / rate)}'
                 if progress['steps_timed'] else 'steps/s after the first call')

  def evaluate_task(self, state, task):
    """Test accuracy of every task seen so far; then the end-of-task checkpoint."""
    if self.config.selection == 'best_val':
      logging.info('task %d: kept the parameters of the best validation epoch (%.2f%%)',
                   task + 1, float(state.schedule['best_val_accuracy']))
    row = [float(self.trainer.evaluate(state.params, state.batch_stats, self.data,
                                       self.data.test, j, self.hp)) for j in range(task + 1)]
    self.progress['accuracy'][task][:task + 1] = row
    self.out.write_accuracy(self.progress['accuracy'], task + 1)
    logging.info('after task %d/%d: test accuracy (%%) of tasks 1-%d: %s | mean %.2f', task + 1,
                 self.config.num_tasks, task + 1, ' '.join(f'{a:.2f}' for a in row),
                 np.mean(row))
    self.save(state)
    self.stop_if_requested(state, saved=True)
    return state

  def save(self, state):
    config = self.config
    self.progress['wall_time'] = self.wall_before + time.time() - self.started
    task, step = int(state.task), int(state.step)
    logging.info('saving checkpoint %d (task %d/%d step %d)', task * config.steps_per_task + step,
                 task + 1, config.num_tasks, step)
    # A snapshot: the asynchronous save may serialise it after `progress` has moved on.
    self.checkpointer.save(task * config.steps_per_task + step, state,
                           json.loads(json.dumps(self.progress)))

  def stop_if_requested(self, state, saved):
    if self.stop.requested:
      if not saved:
        self.save(state)
      self.checkpointer.wait()
      raise preemption.Preempted(f'stopped by {self.stop.requested} at task {int(state.task) + 1}'
                                 f' step {int(state.step)}; checkpoint saved')

  def finish(self, state):
    """The summary (written last: it marks the run finished); then old checkpoints go."""
    config, progress = self.config, self.progress
    acc = np.array(progress['accuracy'], dtype=float)
    summary = {**metrics.summary(acc), 'accuracy_matrix': progress['accuracy'],
               'wall_time_sec': self.wall_before + time.time() - self.started,
               'train_steps_per_sec': progress['steps_timed'] / max(progress['train_time'], 1e-9),
               'params': self.method.param_counts(state.params),
               'traces': dict(self.trainer.traces), 'environment': environment.describe()}
    embeddings = self.method.task_embeddings(state.params)
    if embeddings is not None:
      self.out.write_embeddings(np.asarray(embeddings[:config.num_tasks]))
    self.out.write_summary(summary)
    self.checkpointer.keep_newest(config.final_checkpoints_to_keep)
    log_results(summary, self.out.path)
    return summary
