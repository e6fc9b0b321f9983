"""The results folder: resolved config, accuracy matrix, summary and metrics log.

Paths go through etils.epath, so a workdir may be local or any filesystem it
supports (e.g. gs://). Tasks are numbered from 1 in every file, as on the
console; JSON arrays are positional (row i is the state after task i + 1).

Nothing is written until every check of a start has passed (`check_start`
reads only); then `lock_and_create` takes the workdir's lock and `save_config`
records the config.
"""

import json
import os
import tempfile

from etils import epath

from hypermask_jax import errors
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


# Fields that change where results go, how often they are saved or how long a compiled call
# may take, not what the results are: they may differ between a run and its resume.
NOT_RESULT_FIELDS = ('data_dir', 'download', 'checkpoint_every_steps', 'checkpoints_to_keep',
                     'final_checkpoints_to_keep', 'max_call_seconds')


def result_diff(saved, requested):
  """The differing fields that change results."""
  return {k: v for k, v in config_diff(saved, requested).items() if k not in NOT_RESULT_FIELDS}


def describe_diff(diff):
  return '; '.join(f'{k}: saved {a!r}, requested {b!r}' for k, (a, b) in diff.items())


class Workdir:
  """Writes one run's outputs; refuses to mix configs, to overwrite a finished run, or to share."""

  def __init__(self, path):
    self.path = epath.Path(paths.absolute(path))
    self.lock = workdir_lock.WorkdirLock(self.path)

  def saved_config(self):
    """The flat config saved by an earlier start in this workdir, or None."""
    saved = self.path / CONFIG
    return json.loads(saved.read_text()) if saved.exists() else None

  def finished_summary(self, config):
    """The summary if this workdir holds a finished run of `config`; None if not finished.

    Raises WorkdirError if it holds a finished run of another config (fields
    that do not change results may differ).
    """
    summary = self.path / SUMMARY
    if not summary.exists():
      return None
    diff = result_diff(self.saved_config() or {}, flat_config(config))
    if diff:
      raise WorkdirError(f'--workdir={self.path} holds a finished run with a different config '
                         f'({describe_diff(diff)}); use another --workdir')
    return json.loads(summary.read_text())

  def check_start(self, config, allow_config_change=False):
    """Checks, writing nothing, that this run may start or resume here.

    Returns the result fields that differ from an unfinished run's saved config
    ({} for a new run); they differ only with allow_config_change.
    """
    if self.path.exists() and not self.path.is_dir():
      raise WorkdirError(f'--workdir={self.path}: is a file; it must be a folder (or not exist)')
    self.lock.probe()
    saved = self.saved_config()
    diff = result_diff(saved, flat_config(config)) if saved is not None else {}
    if diff and not allow_config_change:
      raise WorkdirError(f'--workdir={self.path} holds an unfinished run with a different config '
                         f'({describe_diff(diff)}); use another --workdir, or '
                         '--allow_config_change to resume it with the new config')
    self._check_writable()
    return diff

  def _check_writable(self):
    """Creates what is missing of the workdir and a file in it, then removes both."""
    if paths.is_remote(self.path):
      return
    missing, existing = [], str(self.path)
    while not os.path.exists(existing):
      missing.append(existing)
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise WorkdirError(f'--workdir={self.path}: {existing} is a file, not a folder')
    try:
      os.makedirs(self.path, exist_ok=True)
      fd, probe = tempfile.mkstemp(dir=self.path, prefix='.write_test')
      os.close(fd)
      os.unlink(probe)
    except OSError as e:
      raise WorkdirError(f'--workdir={self.path}: cannot write there ({e.strerror}); choose a '
                         'folder you can write to') from None
    finally:
      for folder in missing:  # deepest first: only the folders this check created
        try:
          os.rmdir(folder)
        except OSError:
          pass

  def lock_and_create(self):
    """After every check: creates the workdir and takes its lock (WorkdirBusy if taken)."""
    self.path.mkdir(parents=True, exist_ok=True)
    self.lock.acquire()

  def save_config(self, config):
    (self.path / CONFIG).write_text(json.dumps(flat_config(config), indent=2, sort_keys=True))

  def release(self):
    self.lock.release()

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
