"""The results folder: resolved config, accuracy matrix, summary and metrics log.

Paths go through etils.epath, so a workdir may be local or any filesystem it
supports (e.g. gs://).
"""

import json

from etils import epath
import numpy as np

CONFIG = 'config.json'
SUMMARY = 'summary.json'
METRICS = 'metrics.jsonl'
ACCURACY_CSV = 'accuracy_matrix.csv'
ACCURACY_JSON = 'accuracy_matrix.json'


class WorkdirError(RuntimeError):
  """The workdir holds results that this run must not overwrite."""


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


class Workdir:
  """Writes one run's outputs and refuses to overwrite a finished run."""

  def __init__(self, path):
    self.path = epath.Path(path)

  def finished_summary(self):
    summary = self.path / SUMMARY
    return json.loads(summary.read_text()) if summary.exists() else None

  def start(self, config):
    """Checks the workdir against the requested config, then saves that config.

    Returns the finished run's summary if this exact config already finished
    here (nothing is rerun); raises WorkdirError if the workdir holds a finished
    run of a different config.
    """
    requested = flat_config(config)
    summary = self.finished_summary()
    if summary is not None:
      saved = json.loads((self.path / CONFIG).read_text())
      diff = config_diff(saved, requested)
      if diff:
        fields = '\n'.join(f'  {k}: saved {a!r}, requested {b!r}' for k, a, b in
                           ((k, *v) for k, v in diff.items()))
        raise WorkdirError(f'{self.path} holds a finished run with a different config; '
                           f'use another --workdir. Differing fields:\n{fields}')
      return summary
    self.path.mkdir(parents=True, exist_ok=True)
    (self.path / CONFIG).write_text(json.dumps(requested, indent=2, sort_keys=True))
    (self.path / METRICS).write_text('')
    return None

  def log_metrics(self, record):
    with (self.path / METRICS).open('a') as f:
      f.write(json.dumps(record) + '\n')

  def write_accuracy(self, acc):
    """Accuracy matrix in percent; NaN (JSON null, empty CSV cell) where j > i."""
    rows = [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in acc]
    (self.path / ACCURACY_JSON).write_text(json.dumps(rows))
    lines = ['after_task,' + ','.join(f'task_{j}' for j in range(acc.shape[1]))]
    lines += [f'{i},' + ','.join('' if v is None else f'{v:.4f}' for v in row)
              for i, row in enumerate(rows)]
    (self.path / ACCURACY_CSV).write_text('\n'.join(lines) + '\n')

  def write_summary(self, summary):
    """Written last: its presence marks the run as finished."""
    (self.path / SUMMARY).write_text(json.dumps(summary, indent=2))
