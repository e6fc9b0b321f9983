"""A sweep's tables, from the finished runs' folders: one row per run, one per grid point.

  runs.csv     one row per finished run: its swept values, mean final accuracy, BWT,
               forgetting, mean final validation accuracy, each task's final accuracy
  grid.csv     one row per grid point (the swept values other than the seed): the number
               of seeds and the mean and std over them of each column of runs.csv
  best.json    the grid point with the highest mean validation accuracy (never test)
  results.md   the grid points as the papers lay them out: benchmark, method, mean ± std

std is numpy's default, the population standard deviation (ddof=0). Any process
of a sweep (a shard too) rewrites them from every run that has finished, so
the last one to finish leaves the complete tables.
"""

import csv
import io
import json

from etils import epath
import numpy as np

from hypermask_jax import outputs
from hypermask_jax import sweep

RUNS_CSV = 'runs.csv'
GRID_CSV = 'grid.csv'
BEST = 'best.json'
RESULTS = 'results.md'
COLUMNS = ('mean_accuracy', 'bwt', 'forgetting', 'mean_val_accuracy')


def _finished(workdir, runs):
  """[(run, summary)] of the runs whose folder holds a summary."""
  found = []
  for run in runs:
    summary = epath.Path(workdir) / sweep.RUNS / run.name / outputs.SUMMARY
    if summary.exists():
      found.append((run, json.loads(summary.read_text())))
  return found


def _point(run):
  return {k: v for k, v in run.values.items() if k != 'seed'}


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


def _fmt(value):
  return '' if value is None else (f'{value:.4f}' if isinstance(value, float) else str(value))


def grid_points(finished):
  """[(point values, [summaries])] in the order the runs come."""
  points = {}
  for run, summary in finished:
    key = repr(sorted(_point(run).items()))
    points.setdefault(key, (_point(run), []))[1].append(summary)
  return list(points.values())


def stats(summaries, key):
  """(mean, std) over runs of summary[key] (None if a run lacks it)."""
  values = [s.get(key) for s in summaries]
  if any(v is None for v in values):
    return None, None
  return float(np.mean(values)), float(np.std(values))


def write(workdir, config, runs):
  """Rewrites the tables from the runs that have finished; returns the grid points' rows."""
  workdir = epath.Path(workdir)
  finished = _finished(workdir, runs)
  if not finished:
    return []
  swept = list(sweep.swept_values(config))
  num_tasks = max(len(s['accuracy_matrix']) for _, s in finished)
  task_columns = [f'task_{j + 1}' for j in range(num_tasks)]
  rows = []
  for run, summary in finished:
    final = summary['accuracy_matrix'][-1]
    rows.append([run.name, *(run.values[f] for f in swept),
                 *(_fmt(summary.get(c)) for c in COLUMNS), *(_fmt(a) for a in final)])
  _write(workdir / RUNS_CSV, _csv(['run', *swept, *COLUMNS, *task_columns], rows))

  point_fields = [f for f in swept if f != 'seed']
  grid = []
  for point, summaries in grid_points(finished):
    row = {'point': point, 'seeds': len(summaries)}
    for column in COLUMNS:
      row[column] = stats(summaries, column)
    finals = np.array([s['accuracy_matrix'][-1] for s in summaries], dtype=float)
    row['tasks'] = list(zip(finals.mean(0).tolist(), finals.std(0).tolist()))
    grid.append(row)
  header = [*point_fields, 'seeds'] + [f'{c}_{m}' for c in COLUMNS for m in ('mean', 'std')] + [
      f'{t}_{m}' for t in task_columns for m in ('mean', 'std')]
  lines = [[*(row['point'][f] for f in point_fields), row['seeds'],
            *(_fmt(v) for c in COLUMNS for v in row[c]),
            *(_fmt(v) for pair in row['tasks'] for v in pair)] for row in grid]
  _write(workdir / GRID_CSV, _csv(header, lines))

  scored = [row for row in grid if row['mean_val_accuracy'][0] is not None]
  if scored:
    best = max(scored, key=lambda row: row['mean_val_accuracy'][0])
    _write(workdir / BEST, json.dumps({
        'point': best['point'], 'seeds': best['seeds'], 'chosen_by': 'mean_val_accuracy',
        **{c: {'mean': best[c][0], 'std': best[c][1]} for c in COLUMNS}}, indent=2))

  first = finished[0][0].config
  target = (f"mlp {'-'.join(map(str, first.target_hidden))}" if first.target == 'mlp'
            else first.target)
  md = ['| benchmark | method | target | setting | seeds | accuracy (%) | BWT | forgetting |',
        '|---|---|---|---|---|---|---|---|']
  for row in grid:
    point = ', '.join(f'{k}={sweep.short(v)}' for k, v in row['point'].items()) or 'as configured'
    mean_std = lambda c: f'{row[c][0]:.2f} ± {row[c][1]:.2f}'
    md.append(f"| {first.dataset} | {first.method} | {target} | {point} | {row['seeds']} | "
              f"{mean_std('mean_accuracy')} | {mean_std('bwt')} | {mean_std('forgetting')} |")
  md.append('')
  md.append(f'Mean ± std (population, ddof=0) over seeds of {len(finished)} finished of '
            f'{len(runs)} runs; accuracy: mean final test accuracy over tasks.')
  _write(workdir / RESULTS, '\n'.join(md) + '\n')
  return grid
