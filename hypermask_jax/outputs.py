"""The results folder: resolved config, accuracy matrix, summary and metrics log.

Paths go through etils.epath, so a workdir may be local or any filesystem it
supports (e.g. gs://).
"""

import json

from etils import epath

from hypermask_jax import metrics

CONFIG = 'config.json'
SUMMARY = 'summary.json'
METRICS = 'metrics.jsonl'
ACCURACY_CSV = 'accuracy_matrix.csv'
ACCURACY_JSON = 'accuracy_matrix.json'
EMBEDDINGS = 'task_embeddings.json'
SIMILARITY_CSV = 'embedding_similarity.csv'


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


# Fields that change where results go or how often they are saved, not what they are.
NOT_RESULT_FIELDS = ('data_dir', 'download', 'checkpoint_every_steps', 'checkpoints_to_keep')


def _diff_message(path, what, diff):
  fields = '\n'.join(f'  {k}: saved {a!r}, requested {b!r}' for k, (a, b) in diff.items())
  return f'{path} holds {what} with a different config. Differing fields:\n{fields}'


class Workdir:
  """Writes one run's outputs; refuses to mix configs or to overwrite a finished run."""

  def __init__(self, path):
    self.path = epath.Path(path)

  def start(self, config, allow_config_change=False):
    """Checks the workdir against the requested config, then saves that config.

    Returns the summary if this config already finished here (nothing is
    rerun). Raises WorkdirError if the workdir holds a finished run of another
    config, or an unfinished one whose config differs in a field that changes
    results (unless allow_config_change).
    """
    requested = flat_config(config)
    saved_file, summary_file = self.path / CONFIG, self.path / SUMMARY
    saved = json.loads(saved_file.read_text()) if saved_file.exists() else None
    if summary_file.exists():
      diff = config_diff(saved or {}, requested)
      if diff:
        raise WorkdirError(_diff_message(self.path, 'a finished run', diff)
                           + '\nUse another --workdir.')
      return json.loads(summary_file.read_text())
    if saved is not None:
      diff = {k: v for k, v in config_diff(saved, requested).items() if k not in NOT_RESULT_FIELDS}
      if diff and not allow_config_change:
        raise WorkdirError(_diff_message(self.path, 'an unfinished run', diff)
                           + '\nUse another --workdir, or --allow_config_change to resume it '
                           'with the new config.')
    self.path.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(json.dumps(requested, indent=2, sort_keys=True))
    return None

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
    lines = ['after_task,' + ','.join(f'task_{j}' for j in range(tasks_done))]
    lines += [f'{i},' + ','.join('' if v is None else f'{v:.4f}' for v in row)
              for i, row in enumerate(rows)]
    (self.path / ACCURACY_CSV).write_text('\n'.join(lines) + '\n')

  def write_embeddings(self, embeddings):
    """The learned task embeddings and their pairwise cosine similarity (compare tasks by it)."""
    (self.path / EMBEDDINGS).write_text(json.dumps(embeddings.tolist()))
    sim = metrics.cosine_similarity(embeddings)
    lines = ['task,' + ','.join(f'task_{j}' for j in range(len(sim)))]
    lines += [f'{i},' + ','.join(f'{v:.4f}' for v in row) for i, row in enumerate(sim)]
    (self.path / SIMILARITY_CSV).write_text('\n'.join(lines) + '\n')

  def write_summary(self, summary):
    """Written last: its presence marks the run as finished."""
    (self.path / SUMMARY).write_text(json.dumps(summary, indent=2))
