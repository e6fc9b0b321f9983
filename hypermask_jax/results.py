"""A run's results read back from its workdir, and runs grouped into grid points over seeds.

A run is a folder holding config.json; a sweep is any folder whose subfolders
(at any depth, e.g. <sweep>/runs/<name>/) hold runs. Runs whose configs are
equal except for the seed (and the fields that do not change results) form
one grid point; the fields that differ between grid points are the swept ones.
"""

import dataclasses
import json

from etils import epath
import numpy as np

from hypermask_jax import errors
from hypermask_jax import fields
from hypermask_jax import metrics
from hypermask_jax import outputs

NOT_GRID_FIELDS = ('seed',) + fields.RUN_SETTINGS


@dataclasses.dataclass
class Run:
  """What a run wrote. `accuracy` is [tasks done, tasks done] (%), NaN where j > i."""
  path: epath.Path
  config: dict  # flat: {field: value}, lists as tuples
  records: list  # the metrics log
  accuracy: np.ndarray
  summary: dict  # None while the run is unfinished
  embeddings: np.ndarray  # [num_tasks, E], None for methods without task embeddings
  task_inference: dict = None  # task_inference.json: {'mode', 'test_sizes', 'metrics'}, or None

  @property
  def name(self):
    return self.path.name

  @property
  def num_tasks(self):
    return self.config['num_tasks']

  @property
  def tasks_done(self):
    return self.accuracy.shape[0]

  @property
  def finished(self):
    return self.summary is not None

  def headline(self):
    """Mean accuracy, BWT and forgetting over the tasks done so far (the summary's if finished)."""
    if self.finished:
      return {k: self.summary[k] for k in ('mean_accuracy', 'bwt', 'forgetting')}
    return metrics.summary(self.accuracy) if self.tasks_done else {}


def _parsed(path, text, first_line=1):
  """json.loads(text), text read from path at its line first_line; errors.BadInput naming the
  file and line if it is damaged."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.BadInput(f'{path}: damaged ({e.msg}, line {first_line + e.lineno - 1}); a run '
                          'writes it whole, so something else cut or changed it') from None


def _json(path, default=None):
  return _parsed(path, path.read_text()) if path.exists() else default


def _records(path):
  """The metrics log's records. A run appends one line per record, so a last line without its
  newline is a record whose writing was cut (the run killed, or still writing): it is left out,
  as the run itself drops it when it resumes. Damage anywhere else is an error."""
  if not path.exists():
    return []
  lines = path.read_text().split('\n')[:-1]  # the text after the last newline is never whole
  return [_parsed(path, line, i + 1) for i, line in enumerate(lines)]


def load_run(path):
  path = epath.Path(path)
  rows = _json(path / outputs.ACCURACY_JSON, [])
  accuracy = np.full((len(rows), len(rows)), np.nan)
  for i, row in enumerate(rows):
    accuracy[i, :i + 1] = row[:i + 1]
  records = _records(path / outputs.METRICS)
  embeddings = _json(path / outputs.EMBEDDINGS)
  config = {k: tuple(v) if isinstance(v, list) else v  # hashable: runs are grouped by value
            for k, v in _json(path / outputs.CONFIG).items()}
  return Run(path=path, config=config, records=records,
             accuracy=accuracy, summary=_json(path / outputs.SUMMARY),
             embeddings=None if embeddings is None else np.asarray(embeddings),
             task_inference=_json(path / outputs.TASK_INFERENCE))


NOT_RUNS = ('checkpoints', 'checkpoints_unreadable', 'tensorboard', 'report')  # never hold runs


def find_runs(path):
  """The run folders at `path`: itself if it is a run, else every run below it (sorted)."""
  path = epath.Path(path)
  if (path / outputs.CONFIG).exists():
    return [path]
  return sorted(run for sub in path.iterdir() if sub.is_dir() and sub.name not in NOT_RUNS
                for run in find_runs(sub))


@dataclasses.dataclass
class GridPoint:
  """The finished runs of one config, one per seed."""
  label: str  # the swept fields' values, e.g. 'beta=0.001, lam=0.0005'
  fields: dict  # {swept field: value}
  runs: list

  @property
  def seeds(self):
    return [r.config['seed'] for r in self.runs]

  def stat(self, key):
    """(mean, std) of a summary number over the seeds; std is the sample std (NaN for one seed).

    (NaN, NaN) if a run's summary lacks it.
    """
    if any(key not in r.summary for r in self.runs):
      return float('nan'), float('nan')
    values = np.array([r.summary[key] for r in self.runs], float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float('nan')

  def matrices(self):
    """The runs' accuracy matrices stacked: [seeds, T, T]."""
    return np.stack([r.accuracy for r in self.runs])

  def final_rows(self):
    """Each seed's accuracy on every task after the last task: [seeds, T]."""
    return self.matrices()[:, -1]


def grid_fields(runs):
  """The config fields (less the seed and the bookkeeping fields) whose values differ among runs."""
  keys = sorted({k for r in runs for k in r.config} - set(NOT_GRID_FIELDS))
  return [k for k in keys if len({r.config.get(k) for r in runs}) > 1]


def format_value(value):
  return f'{value:g}' if isinstance(value, float) else str(value)


def sort_key(value):
  """Orders a field's values: numbers (and flags) by value, then anything else by its text."""
  return (0, value, '') if isinstance(value, (int, float)) else (1, 0, str(value))


def group(runs, prefix=''):
  """Grid points of the finished runs, ordered by the swept fields' values; `prefix` labels them."""
  runs = [r for r in runs if r.finished]
  swept = grid_fields(runs)
  points = {}
  for run in runs:
    points.setdefault(tuple(run.config.get(k) for k in swept), []).append(run)
  out = []
  for key in sorted(points, key=lambda key: [sort_key(v) for v in key]):
    fields = dict(zip(swept, key))
    label = ', '.join(f'{k}={format_value(v)}' for k, v in fields.items())
    label = ': '.join(s for s in (prefix, label) if s) or 'all runs'
    members = sorted(points[key], key=lambda r: r.config['seed'])
    out.append(GridPoint(label=label, fields=fields, runs=members))
  return out
