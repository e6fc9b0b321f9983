"""The results folders: a run's config, accuracy matrix, summary and metrics log; the folder a
process trains in (checked, then locked); the record of a sweep.

Paths go through etils.epath, so a workdir may be local or any filesystem it
supports (e.g. gs://). Tasks are numbered from 1 in every file, as on the
console; JSON arrays are positional (row i is the state after task i + 1).

Nothing is written until every check of a start has passed (the checks only
read); then `Workdir.lock_and_create` takes the lock and `RunOutputs.save_config`
records each run's config.
"""

import json
import os
import tempfile

from etils import epath

from hypermask_jax import errors
from hypermask_jax import fields
from hypermask_jax import metrics
from hypermask_jax import paths
from hypermask_jax import workdir_lock

CONFIG = 'config.json'
SUMMARY = 'summary.json'
METRICS = 'metrics.jsonl'
ACCURACY_CSV = 'accuracy_matrix.csv'
ACCURACY_JSON = 'accuracy_matrix.json'
EMBEDDINGS = 'task_embeddings.json'
SIMILARITY_CSV = 'embedding_similarity.csv'
TASK_INFERENCE = 'task_inference.json'  # accuracies with the task inferred (task_inference.py)
WEIGHTS = 'checkpoint.json'  # where the run's weights are: its program's checkpoints, run index


class WorkdirError(errors.BadInput):
  """The workdir cannot take this run: a file, not writable, or holding other results."""


def config_diff(saved, requested):
  """Fields whose values differ between two flat config dicts."""
  keys = sorted(set(saved) | set(requested))
  return {k: (saved.get(k), requested.get(k)) for k in keys if saved.get(k) != requested.get(k)}


def flat_config(config):
  """The config as {dotted.field: JSON value} (tuples as lists), for saving and comparing."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if hasattr(value, 'items'):
        walk(name + '.', value)
      else:
        out[name] = list(value) if isinstance(value, tuple) else value
  walk('', config.to_dict())
  return out


def result_diff(saved, requested):
  """The differing fields that change results (fields.RUN_SETTINGS may differ)."""
  return {k: v for k, v in config_diff(saved, requested).items()
          if k not in fields.RUN_SETTINGS}


def describe_diff(diff):
  return '; '.join(f'{k}: saved {a!r}, requested {b!r}' for k, (a, b) in diff.items())


class Workdir:
  """A folder one process trains in: checked before anything is written, then locked."""

  def __init__(self, path):
    self.path = epath.Path(paths.absolute(path))
    self.lock = workdir_lock.WorkdirLock(self.path)

  def check_usable(self):
    """Raises WorkdirError if the folder is a file, in use or cannot be written; writes nothing."""
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f'{self.path}: is a file; the workdir must be a folder (or not exist)')
    self.lock.probe()
    if paths.is_remote(self.path):
      return
    missing, existing = [], str(self.path)
    while not os.path.exists(existing):
      missing.append(existing)
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise WorkdirError(f'{self.path}: {existing} is a file, not a folder')
    try:  # create what is missing and a file in it, then remove both
      os.makedirs(self.path, exist_ok=True)
      fd, probe = tempfile.mkstemp(dir=self.path, prefix='.write_test')
      os.close(fd)
      os.unlink(probe)
    except OSError as e:
      raise WorkdirError(f'{self.path}: cannot write there ({e.strerror}); choose a folder you '
                         'can write to') from None
    finally:
      for folder in missing:  # deepest first: only the folders this check created
        try:
          os.rmdir(folder)
        except OSError:
          pass

  def lock_and_create(self):
    """After every check: creates the folder and takes its lock (WorkdirBusy if taken)."""
    self.path.mkdir(parents=True, exist_ok=True)
    self.lock.acquire()

  def release(self):
    self.lock.release()


class RunOutputs:
  """One run's results folder; refuses to mix configs or to overwrite a finished run."""

  def __init__(self, path):
    self.path = epath.Path(paths.absolute(path))

  def saved_config(self):
    """The flat config saved by an earlier start of this run, or None."""
    saved = self.path / CONFIG
    return json.loads(saved.read_text()) if saved.exists() else None

  def finished_summary(self, config):
    """The summary if this folder holds a finished run of `config`; None if not finished.

    Raises WorkdirError if it holds a finished run of another config (fields
    that do not change results may differ).
    """
    summary = self.path / SUMMARY
    if not summary.exists():
      return None
    diff = result_diff(self.saved_config() or {}, flat_config(config))
    if diff:
      raise WorkdirError(f'{self.path} holds a finished run with a different config '
                         f'({describe_diff(diff)}); use another --workdir')
    return json.loads(summary.read_text())

  def changes(self, config, allow_config_change=False):
    """The result fields in which config differs from an unfinished run's saved one ({} if new).

    Raises WorkdirError if there are any, unless allow_config_change.
    """
    saved = self.saved_config()
    diff = result_diff(saved, flat_config(config)) if saved is not None else {}
    if diff and not allow_config_change:
      raise WorkdirError(f'{self.path} holds an unfinished run with a different config '
                         f'({describe_diff(diff)}); use another --workdir, or '
                         '--allow_config_change to resume it with the new config')
    return diff

  def save_config(self, config, program_folder, index):
    """The run's config, and where its weights are: run `index` of the checkpoints in
    program_folder (its own folder for a single run)."""
    self.path.mkdir(parents=True, exist_ok=True)
    (self.path / CONFIG).write_text(json.dumps(flat_config(config), indent=2, sort_keys=True))
    (self.path / WEIGHTS).write_text(json.dumps(
        {'folder': os.path.relpath(program_folder, self.path), 'index': index}))

  def checkpoint_location(self):
    """(the folder whose checkpoints hold this run's weights, the run's index in them)."""
    location = self.path / WEIGHTS
    if not location.exists():
      return self.path, 0
    saved = json.loads(location.read_text())
    return epath.Path(os.path.normpath(self.path / saved['folder'])), saved['index']

  def rewrite_metrics(self, records):
    """The metrics log as of the checkpoint being resumed (records after it are dropped)."""
    (self.path / METRICS).write_text(''.join(json.dumps(r) + '\n' for r in records))

  def log_metrics(self, record):
    with (self.path / METRICS).open('a') as f:
      f.write(json.dumps(record) + '\n')

  def write_accuracy(self, acc, tasks_done):
    """The first tasks_done rows of the accuracy matrix (%); None/empty where j > i."""
    rows = [[None if v is None else round(v, 4) for v in row[:tasks_done]]
            for row in acc[:tasks_done]]
    (self.path / ACCURACY_JSON).write_text(json.dumps(rows))
    lines = ['after_task,' + ','.join(f'task_{j + 1}' for j in range(tasks_done))]
    lines += [f'{i + 1},' + ','.join('' if v is None else f'{v:.4f}' for v in row)
              for i, row in enumerate(rows)]
    (self.path / ACCURACY_CSV).write_text('\n'.join(lines) + '\n')

  def write_task_inference(self, results):
    """The accuracies with the task inferred so far (inference_results.py)."""
    (self.path / TASK_INFERENCE).write_text(json.dumps(results))

  def write_embeddings(self, embeddings):
    """The learned task embeddings and their pairwise cosine similarity (compare tasks by it)."""
    (self.path / EMBEDDINGS).write_text(json.dumps(embeddings.tolist()))
    sim = metrics.cosine_similarity(embeddings)
    lines = ['task,' + ','.join(f'task_{j + 1}' for j in range(len(sim)))]
    lines += [f'{i + 1},' + ','.join(f'{v:.4f}' for v in row) for i, row in enumerate(sim)]
    (self.path / SIMILARITY_CSV).write_text('\n'.join(lines) + '\n')

  def write_summary(self, summary):
    """Written last: its presence marks the run as finished."""
    (self.path / SUMMARY).write_text(json.dumps(summary, indent=2))
