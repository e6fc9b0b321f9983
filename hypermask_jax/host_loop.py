"""The host loop of one program: its R runs' tasks, one after another, with progress,
checkpoints, evaluation and each run's results.

Training calls the compiled functions of trainer.py: each call runs as many
steps as fit in about half of `max_call_seconds` (and never crosses a chunk,
checkpoint or task boundary), so a stop request (SIGTERM, SIGINT) is honoured
within about that long, whatever `log_every_steps` is. Progress lines, metrics
records and checkpoints follow the chunks; after each task every task seen so
far is evaluated on its test split, for every run.
"""

import json
import time

from absl import logging
import jax
import numpy as np

from hypermask_jax import checkpoints
from hypermask_jax import devices
from hypermask_jax import environment
from hypermask_jax import inference_results
from hypermask_jax import metrics
from hypermask_jax import outputs
from hypermask_jax import preemption
from hypermask_jax import tensorboard
from hypermask_jax import trainer as trainer_lib

# The layout of `progress` in checkpoints; a checkpoint of another layout is refused on resume.
PROGRESS_FORMAT = 3


def bytes_of(tree):
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def format_bytes(n):
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'



def memory_per_run(trainer, config):
  """An estimate of one run's peak device memory: its state, plus gradients and Adam's update
  temporaries (twice the parameters)."""
  state = jax.eval_shape(trainer.init_run, trainer_lib.run_hyperparams(config))
  return bytes_of(state) + 2 * bytes_of(state.params)


def device_memory():
  """Bytes one device can hold: the accelerator's limit, or its share of 90% of the host's free
  memory (CPU devices share the host's)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return stats['bytes_limit']
  with open('/proc/meminfo') as f:
    available = next(int(line.split()[1]) for line in f if line.startswith('MemAvailable:'))
  return int(0.9 * available * 1024) // len(jax.local_devices())


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


def new_progress(runs, num_tasks):
  """What a checkpoint records besides the train state (JSON), for each run of the program."""
  return {'format': PROGRESS_FORMAT, 'runs': [run.name for run in runs],
          'accuracy': [[[None] * num_tasks for _ in range(num_tasks)] for _ in runs],
          'records': [[] for _ in runs], 'chunk': new_chunk(), 'wall_time': 0.0,
          'train_time': 0.0, 'steps_timed': 0}


def new_chunk():
  """The running sums of the chunk in progress (kept in checkpoints: a stop may come mid-chunk)."""
  return {'sums': {}, 'steps': 0, 'timed_steps': 0, 'timed_seconds': 0.0}


def _format_eta(seconds):
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def _spread(values, unit=''):
  """'3.21' for one run; '3.21 [3.05, 3.40]' (mean [min, max]) for several."""
  values = np.asarray(values)
  if values.size == 1:
    return f'{values[0]:.4g}{unit}'
  return f'{values.mean():.4g}{unit} [{values.min():.4g}, {values.max():.4g}]'


class ProgramLoop:
  """Trains the runs of one program from a fresh start or a restored checkpoint.

  `sweep_position` is (the program's index in the sweep, the number of programs,
  the steps this process has left in later programs) for the progress line and
  the ETA of the whole sweep, or None for a single run.
  """

  def __init__(self, program, outs, data, method, trainer, hp, checkpointer, stop,
               sweep_position=None):
    if not devices.is_primary():  # only process 0 writes the runs' files
      outs = [devices.Discard() for _ in outs]
    self.program, self.outs, self.data, self.method = program, outs, data, method
    self.trainer, self.hp, self.checkpointer, self.stop = trainer, hp, checkpointer, stop
    self.config = program.config
    self.num_runs = len(program.runs)
    self.sweep_position = sweep_position
    self.pacer = CallPacer(self.config.max_call_seconds)
    self.started = time.time()
    self.progress = new_progress(program.runs, self.config.num_tasks)
    self.boards = [tensorboard.Board(out.path) if devices.is_primary() else devices.Discard()
                   for out in outs]
    self.inference = (inference_results.Recorder(trainer, data, hp, self.num_runs)
                      if self.config.task_inference != 'none' else None)

  def close(self):
    for board in self.boards:
      board.close()

  def run(self, state, restored):
    config = self.config
    if restored is None:
      first_task, resume_mid_task = 0, False
    else:
      state, self.progress = restored
      task, step = (int(x) for x in devices.fetch((state.task, state.step)))
      logging.info('resumed from the checkpoint at task %d/%d step %d', task + 1,
                   config.num_tasks, step)
      resume_mid_task = self.progress['accuracy'][0][task][task] is None
      first_task = task if resume_mid_task else task + 1
    for run, out, board, records, accuracy in zip(self.program.runs, self.outs, self.boards,
                                                  self.progress['records'],
                                                  self.progress['accuracy']):
      out.rewrite_metrics(records)
      board.start(outputs.flat_config(run.config), records, accuracy)
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
    step = int(devices.fetch(state.step))  # kept on the host: one device read per call
    while step < steps:
      chunk_end = min((step // trainer.chunk + 1) * trainer.chunk, steps)
      next_save = ((task * steps + step) // every + 1) * every - task * steps
      n = self.pacer.steps(min(chunk_end, next_save, step + trainer.max_steps_per_call) - step)
      compiling = not self.pacer.compiled
      if compiling:
        logging.info('compiling the training step (once per program, or loaded from the '
                     'compilation cache; the first call also runs one step)')
      tic = time.time()
      state, aux = trainer.train_steps(state, self.data, self.hp, np.int32(n))
      aux = devices.fetch(aux)
      seconds = time.time() - tic
      if compiling:
        logging.info('first call (compile and one step): %.1f s', seconds)
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
    """Adds a call's per-step metrics of each run, one step after the other (the same sums
    however the steps were grouped into calls)."""
    chunk = self.progress['chunk']
    for key, values in aux.items():  # values: [max_steps_per_call, padded runs]
      totals = chunk['sums'].get(key, [0.0] * self.num_runs)
      for r in range(self.num_runs):
        total = totals[r]
        for value in values[:n, r]:
          total += float(value)
        totals[r] = total
      chunk['sums'][key] = totals
    chunk['steps'] += n
    if timed:
      chunk['timed_steps'] += n
      chunk['timed_seconds'] += seconds
      self.progress['steps_timed'] += n
      self.progress['train_time'] += seconds

  def log_chunk(self, state, task, step):
    """Each run's record (metrics.jsonl) and one progress line for the program."""
    config, progress = self.config, self.progress
    chunk = progress['chunk']
    schedule = devices.fetch(state.schedule)
    records = []
    for r in range(self.num_runs):
      means = {k: v[r] / chunk['steps'] for k, v in chunk['sums'].items()}
      means['accuracy'] *= 100.0
      record = {'task': task + 1, 'step': step,
                'global_step': task * config.steps_per_task + step, **means,
                'val_accuracy': float(schedule['val_accuracy'][r])}
      if config.epochs_per_task:
        record['epoch'] = step // self.trainer.chunk
      if config.lr_schedule == 'plateau':
        record['learning_rate'] = float(schedule['plateau']['learning_rate'][r])
      if config.selection == 'best_val':
        record['best_val_accuracy'] = float(schedule['best_val_accuracy'][r])
      if config.selection == 'best_val_loss':
        record['val_loss'] = float(schedule['val_loss'][r])
        record['best_val_loss'] = float(schedule['best_val_loss'][r])
      if chunk['timed_steps']:
        record['steps_per_sec'] = chunk['timed_steps'] / chunk['timed_seconds']
      progress['records'][r].append(record)
      self.outs[r].log_metrics(record)
      self.boards[r].log_metrics(record)
      records.append(record)
    progress['chunk'] = new_chunk()
    self.log_progress(records, task, step)

  def log_progress(self, records, task, step):
    config, progress = self.config, self.progress
    hidden = ('task', 'step', 'global_step', 'accuracy', 'val_accuracy', 'steps_per_sec')
    terms = [k for k in sorted(records[0], key=lambda k: (k != 'loss', k)) if k not in hidden]
    if self.num_runs > 1:
      terms = ['loss']
    shown = ' '.join(f'{k} {_spread([r[k] for r in records])}' for k in terms)
    rate = progress['steps_timed'] / max(progress['train_time'], 1e-9)
    remaining = (config.num_tasks - task) * config.steps_per_task - step
    where = ''
    if self.sweep_position is not None:
      index, count, later_steps = self.sweep_position
      remaining += later_steps
      where = f'program {index + 1}/{count} ({self.num_runs} runs) | '
    logging.info('%stask %d/%d step %d/%d | %s | train acc %s val acc %s | %s', where,
                 task + 1, config.num_tasks, step, config.steps_per_task, shown,
                 _spread([r['accuracy'] for r in records], '%'),
                 _spread([r['val_accuracy'] for r in records], '%'),
                 f'{rate:.1f} steps/s, ETA {_format_eta(remaining / rate)}'
                 if progress['steps_timed'] else 'steps/s after the first call')

  def evaluate_task(self, state, task):
    """Test accuracy of every task seen so far, for every run; then the end-of-task checkpoint."""
    if self.config.selection == 'best_val':
      best = devices.fetch(state.schedule['best_val_accuracy'])[:self.num_runs]
      logging.info('task %d: kept the parameters of the best validation epoch (%s)', task + 1,
                   _spread(best, '%'))
    if self.config.selection == 'best_val_loss':
      best = devices.fetch(state.schedule['best_val_loss'])[:self.num_runs]
      logging.info('task %d: kept the parameters of the epoch of lowest validation loss (%s)',
                   task + 1, _spread(best))
    columns = self.evaluate_all(state, 'test', task + 1)
    for r, out in enumerate(self.outs):
      accuracy = self.progress['accuracy'][r]
      accuracy[task][:task + 1] = columns[r]
      out.write_accuracy(accuracy, task + 1)
      self.boards[r].log_test_accuracy(columns[r], (task + 1) * self.config.steps_per_task)
    if self.num_runs == 1:
      logging.info('after task %d/%d: test accuracy (%%) of tasks 1-%d: %s | mean %.2f', task + 1,
                   self.config.num_tasks, task + 1, ' '.join(f'{a:.2f}' for a in columns[0]),
                   np.mean(columns[0]))
    else:
      logging.info('after task %d/%d: mean test accuracy of tasks 1-%d over %d runs: %s',
                   task + 1, self.config.num_tasks, task + 1, self.num_runs,
                   _spread([np.mean(c) for c in columns], '%'))
    if self.inference is not None:
      self.inference.evaluate(state, task, self.progress, self.outs)
    self.save(state)
    self.stop_if_requested(state, saved=True)
    return state

  def evaluate_all(self, state, split, num_tasks):
    """[run][task] accuracies (%) of the first num_tasks tasks on split `split` ('test', 'val')."""
    sizes = devices.fetch(getattr(self.data, split).size)
    by_task = [devices.fetch(self.trainer.evaluate(state.params, state.batch_stats, self.data,
                                                   split, j, self.hp))
               for j in range(num_tasks)]
    return [[100.0 * int(by_task[j][r]) / int(sizes[j]) for j in range(num_tasks)]
            for r in range(self.num_runs)]

  def save(self, state):
    config = self.config
    self.progress['wall_time'] = self.wall_before + time.time() - self.started
    task, step = (int(x) for x in devices.fetch((state.task, state.step)))
    logging.info('saving checkpoint %d (task %d/%d step %d)', task * config.steps_per_task + step,
                 task + 1, config.num_tasks, step)
    # A snapshot: the asynchronous save may serialise it after `progress` has moved on.
    self.checkpointer.save(task * config.steps_per_task + step, state,
                           json.loads(json.dumps(self.progress)))

  def stop_if_requested(self, state, saved):
    if devices.any_process(self.stop.requested):  # every process saves, or none
      if not saved:
        self.save(state)
      self.checkpointer.wait()
      task, step = (int(x) for x in devices.fetch((state.task, state.step)))
      raise preemption.Preempted(f'stopped by {self.stop.requested or "a signal to another process"}'
                                 f' at task {task + 1} step {step}; checkpoint saved')

  def finish(self, state):
    """Each run's summary (written last: it marks the run finished); then old checkpoints go."""
    config, progress = self.config, self.progress
    final_val = self.evaluate_all(state, 'val', config.num_tasks)
    params = devices.fetch(state.params)
    summaries = []
    for r, (run, out) in enumerate(zip(self.program.runs, self.outs)):
      run_params = jax.tree.map(lambda x, r=r: x[r], params)
      acc = np.array(progress['accuracy'][r], dtype=float)
      summary = {**metrics.summary(acc), 'accuracy_matrix': progress['accuracy'][r],
                 'final_val_accuracy': final_val[r],
                 'mean_val_accuracy': float(np.mean(final_val[r])),
                 'wall_time_sec': self.wall_before + time.time() - self.started,
                 'train_steps_per_sec': (progress['steps_timed']
                                         / max(progress['train_time'], 1e-9)),
                 'params': self.method.param_counts(run_params),
                 'traces': dict(self.trainer.traces), 'environment': environment.describe()}
      if self.inference is not None:
        flat, summary['task_inference'] = self.inference.summary(progress, r)
        summary.update(flat)
      if self.num_runs > 1 or run.values:
        summary['run'] = {'name': run.name, 'values': run.values,
                          'runs_in_program': self.num_runs}
      embeddings = self.method.task_embeddings(run_params)
      if embeddings is not None:
        out.write_embeddings(np.asarray(embeddings[:config.num_tasks]))
      out.write_summary(summary)
      self.boards[r].log_summary(summary, config.num_tasks * config.steps_per_task)
      summaries.append(summary)
    self.checkpointer.keep_newest(config.final_checkpoints_to_keep)
    return summaries


def restore(checkpointer, template, program, path):
  """The program's newest readable checkpoint, or None; refuses one of another layout or runs."""
  restored = checkpointer.restore_latest(template)
  if restored is None:
    return None
  progress = restored[1]
  if progress.get('format') != PROGRESS_FORMAT:
    raise checkpoints.CheckpointMismatch(
        f'the newest checkpoint in {path} was written by an older hypermask_jax (progress '
        f"format {progress.get('format', 1)}, now {PROGRESS_FORMAT}); finish that run with the "
        'version that started it, or use another --workdir')
  names = [run.name for run in program.runs]
  if progress.get('runs') != names:
    raise checkpoints.CheckpointMismatch(
        f'the newest checkpoint in {path} holds the runs {progress.get("runs")}, this program '
        f'{names} (runs_per_program or the devices changed); resume with the same settings, or '
        'use another --workdir')
  return restored


def padded_configs(program, padded):
  """The configs of the program's runs, the last repeated to fill `padded` runs."""
  configs = [run.config for run in program.runs]
  return configs + [configs[-1]] * (padded - len(configs))
