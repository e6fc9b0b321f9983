"""A sweep's tables, from its finished runs' folders: one row per run, one per grid point.

  runs.csv     one row per finished run: its swept values, mean final accuracy, BWT,
               forgetting, mean final validation accuracy, each task's final accuracy
  grid.csv     one row per grid point (the runs whose configs differ only in the seed):
               the seeds, and the mean and std over them of each column of runs.csv
  best.json    the grid point with the highest mean validation accuracy (never test)
  results.md   the grid points as the papers lay them out: benchmark, method, mean ± std

Grid points and their statistics come from results.py, as in the report: std is
the sample standard deviation over seeds (empty for a single seed). Any process
of a sweep (a shard too) rewrites the tables from every run that has finished,
so the last one to finish leaves the complete tables.
"""

import csv
import io
import json
import math

from etils import epath
import numpy as np

from hypermask_jax import outputs
from hypermask_jax import results
from hypermask_jax import sweep

RUNS_CSV = 'runs.csv'
GRID_CSV = 'grid.csv'
BEST = 'best.json'
RESULTS = 'results.md'
COLUMNS = ('mean_accuracy', 'bwt', 'forgetting', 'mean_val_accuracy')


def _write(path, text):
  """Writes through a temporary file and a rename, so a concurrent reader never sees half."""
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_text(text)
  tmp.replace(path)


def _csv(header, rows):
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(header)
  writer.writerows(rows)
  return out.getvalue()


def _number(value):
  """A table cell: 4 decimals; empty for NaN (a std over one seed) or a missing value."""
  return '' if value is None or math.isnan(value) else f'{value:.4f}'


def _json_number(value):
  return None if math.isnan(value) else value


def _target(config):
  if config['target'] == 'mlp':
    return 'mlp ' + '-'.join(map(str, config['target_hidden']))
  return config['target']


def write(workdir, config, runs):
  """Rewrites the tables from the runs that have finished; returns the grid points."""
  workdir = epath.Path(workdir)
  folders = [workdir / sweep.RUNS / run.name for run in runs]
  finished = [results.load_run(f) for f in folders if (f / outputs.SUMMARY).exists()]
  if not finished:
    return []
  swept = list(sweep.swept_values(config))
  num_tasks = max(run.tasks_done for run in finished)
  tasks = [f'task_{j + 1}' for j in range(num_tasks)]
  rows = [[run.name, *(sweep.short(run.config[f]) for f in swept),
           *(_number(run.summary.get(c)) for c in COLUMNS),
           *(_number(a) for a in run.accuracy[-1])] for run in finished]
  _write(workdir / RUNS_CSV, _csv(['run', *swept, *COLUMNS, *tasks], rows))

  points = results.group(finished)
  point_fields = list(points[0].fields)
  lines = []
  for point in points:
    finals = point.final_rows()
    spread = finals.std(axis=0, ddof=1) if len(finals) > 1 else np.full(num_tasks, np.nan)
    lines.append([*(sweep.short(point.fields[f]) for f in point_fields),
                  ' '.join(map(str, point.seeds)),
                  *(_number(v) for c in COLUMNS for v in point.stat(c)),
                  *(_number(v) for pair in zip(finals.mean(axis=0), spread) for v in pair)])
  header = [*point_fields, 'seeds', *(f'{c}_{m}' for c in COLUMNS for m in ('mean', 'std')),
            *(f'{t}_{m}' for t in tasks for m in ('mean', 'std'))]
  _write(workdir / GRID_CSV, _csv(header, lines))

  scored = [p for p in points if not math.isnan(p.stat('mean_val_accuracy')[0])]
  if scored:
    best = max(scored, key=lambda p: p.stat('mean_val_accuracy')[0])
    _write(workdir / BEST, json.dumps({
        'point': best.fields, 'seeds': best.seeds, 'chosen_by': 'mean_val_accuracy',
        **{c: dict(zip(('mean', 'std'), map(_json_number, best.stat(c)))) for c in COLUMNS}},
        indent=2))

  md = ['| benchmark | method | target | setting | seeds | accuracy (%) | BWT | forgetting |',
        '|---|---|---|---|---|---|---|---|']
  for point in points:
    first = point.runs[0].config
    setting = ', '.join(f'{k}={sweep.short(v)}' for k, v in point.fields.items())

    def mean_std(column):
      mean, std = point.stat(column)
      return f'{mean:.2f}' + ('' if math.isnan(std) else f' ± {std:.2f}')
    md.append(f"| {first['dataset']} | {first['method']} | {_target(first)} | "
              f"{setting or 'as configured'} | {len(point.runs)} | {mean_std('mean_accuracy')} | "
              f"{mean_std('bwt')} | {mean_std('forgetting')} |")
  md += ['', f'Mean ± sample std over seeds, from the {len(finished)} finished of {len(runs)} '
         'runs; accuracy: the mean final test accuracy over the tasks.']
  _write(workdir / RESULTS, '\n'.join(md) + '\n')
  return points
