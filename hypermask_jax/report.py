"""PNG figures and a report.md for one run, a sweep, or several runs and sweeps side by side.

  python -m hypermask_jax.report WORKDIR [WORKDIR ...] [--out=DIR]

One run (a folder holding config.json): the accuracy matrix, each task's
accuracy after every later task, just-after-training vs final accuracy, the
training curves, the task-embedding similarity, HyperMask's mask statistics
and a PCA of the target's penultimate features (the last two from the newest
checkpoint, on the run's test data). Written to <WORKDIR>/report/.

Several runs (a sweep folder, e.g. <sweep>/runs/<name>/..., or several
arguments): runs are grouped into grid points by their config less the seed;
the report gives mean +- std per grid point, the mean accuracy matrix of each,
a heatmap over two swept fields and the final accuracy per task of every grid
point. With several arguments, each one's folder name labels its grid points
(e.g. hypermask vs hnet vs finetune vs joint). Written to <WORKDIR>/report/
for one argument, else to --out (default ./report).
"""

import dataclasses
import math
import time

from absl import logging
from etils import epath
import numpy as np

from hypermask_jax import errors
from hypermask_jax import figures
from hypermask_jax import metrics
from hypermask_jax import model_stats
from hypermask_jax import results
from hypermask_jax.data import tfds_io

REPORT_DIR = 'report'
REPORT = 'report.md'
FEATURES_PER_TASK = 3000  # test samples in the feature projection, split over the tasks
TABLE_MAX = 20  # per-task tables list every task up to this many tasks
LINES_MAX = 10  # grid points drawn in the per-task comparison (the best ones)


@dataclasses.dataclass
class Section:
  """One figure of the report: report.md shows `heading`, then `text` (lines), then the figure."""
  heading: str
  figure: object  # a matplotlib Figure
  text: tuple = ()


def _table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return [*lines, *('| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows), '']


def _describe(run):
  c = run.config
  text = f"**{c['method']}** on **{c['dataset']}**, {run.num_tasks} tasks, seed {c['seed']}"
  if not run.finished:
    return text + f'; unfinished: {run.tasks_done} of {run.num_tasks} tasks evaluated.'
  s = run.summary
  return text + (f"; finished, {s['wall_time_sec']:.0f} s of wall time, "
                 f"{s['train_steps_per_sec']:.1f} train steps/s.")


def _per_task_table(acc):
  just_after, final = np.diag(acc), acc[-1]
  rows = [(j + 1, f'{a:.2f}', f'{f:.2f}', f'{f - a:+.2f}')
          for j, (a, f) in enumerate(zip(just_after, final))]
  if len(rows) > TABLE_MAX:
    change = final - just_after
    rows = [(name, f'{fn(just_after):.2f}', f'{fn(final):.2f}', f'{fn(change):+.2f}')
            for name, fn in (('min', np.min), ('median', np.median), ('max', np.max))]
  return _table(('task', 'just after training', 'after the last task', 'change'), rows)


def _task_inference_section(run, title):
  """The Section comparing the accuracy with the task given and inferred (task_inference.py)."""
  saved, done = run.task_inference, run.tasks_done
  sizes = np.asarray(saved['test_sizes'], float)
  inferred = {}
  for name, matrix in saved['metrics'].items():
    rows = np.full((done, done), np.nan)
    for i, row in enumerate(matrix[:done]):
      rows[i, :i + 1] = [np.nan if v is None else v for v in row[:i + 1]]
    inferred[name] = rows
  series = {'task given': run.accuracy, **inferred}
  header = ('task', *series)
  rows = [(j + 1, *(f'{m[-1, j]:.2f}' for m in series.values())) for j in range(done)]
  if done > TABLE_MAX:
    rows = []
  rows += [('mean', *(f'{np.mean(m[-1]):.2f}' for m in series.values())),
           ('all samples', *(f'{figures.pooled_rows(m, sizes)[-1]:.2f}' for m in series.values())),
           ('average incremental',
            *(f'{np.mean(figures.pooled_rows(m, sizes)):.2f}' for m in series.values()))]
  text = (f"Test accuracy (%) with the task inferred ({saved['mode']}), beside the task given, "
          f'after task {done}: per task, their mean, over all samples of the tasks (weighted by '
          'their test sizes), and that pooled accuracy averaged over the tasks trained '
          '("average incremental"). A prediction counts only with the right task and the right '
          'class.', '', *_table(header, rows))
  return Section('Task inference', figures.task_inference(
      run.accuracy, inferred, sizes, title(f"task inference ({saved['mode']})")), text)


def run_sections(run, model=None):
  """{file name: Section} of one run; model (model_stats.Model) adds masks and features."""
  out = {}
  run_label = f"{run.name} ({run.config['method']}, {run.config['dataset']})"
  title = lambda what: f'{what}\n{run_label}'
  acc = run.accuracy
  if run.tasks_done:
    out['accuracy_matrix.png'] = Section(
        'Accuracy matrix', figures.accuracy_matrix(acc, title('accuracy matrix')),
        ('Row i, column j: the test accuracy (%) on task j after training task i.', ''))
    out['accuracy_after_each_task.png'] = Section(
        "Each task's test accuracy after every later task",
        figures.accuracy_after_each_task(acc, title("each task's test accuracy")))
    out['just_after_vs_final.png'] = Section(
        'Just after training vs after all tasks',
        figures.just_after_vs_final(acc, title('just after training vs after all tasks')),
        tuple(_per_task_table(acc)))
  if run.task_inference and run.tasks_done:
    out['task_inference.png'] = _task_inference_section(run, title)
  if run.records:
    out['training_curves.png'] = Section(
        'Training curves', figures.training_curves(run.records, run_label),
        ('Loss terms and accuracies per chunk over the global step; dotted lines: task '
         'boundaries.', ''))
  if run.embeddings is not None:
    out['embedding_similarity.png'] = Section(
        'Task-embedding similarity', figures.similarity(
            metrics.cosine_similarity(run.embeddings), title('task-embedding cosine similarity'),
            'cosine similarity'))
  if model is None:
    return out
  tasks_seen = max(run.tasks_done, 1)
  if model.is_hypermask:
    stats = model_stats.mask_statistics(model, tasks_seen)
    out['mask_statistics.png'] = Section(
        'Mask statistics per layer and task', figures.mask_statistics(
            stats.layers, stats.zero_fraction, stats.mean_value, stats.layer_overlap,
            title(f'masks, checkpoint at step {model.step}')),
        (f'From the checkpoint at step {model.step}: per masked layer and task, the share of '
         'mask entries at exactly 0, the mean mask value, and the mean overlap with the other '
         "tasks' masks of that layer (weighted Jaccard: sum of minima / sum of maxima).", ''))
    out['mask_overlap.png'] = Section('Mask overlap between tasks', figures.similarity(
        stats.overlap, title('mask overlap over all masked weights (weighted Jaccard)'),
        'overlap'))
  features, task_ids = model_stats.penultimate_features(
      model, tasks_seen, max(10, FEATURES_PER_TASK // tasks_seen))
  points, explained = model_stats.pca(features)
  out['features_pca.png'] = Section('Penultimate features (PCA)', figures.features_projection(
      points, task_ids, explained, title('penultimate features of test samples (PCA)')),
      (f'The inputs of the output layer for {len(points) // tasks_seen} test samples of each '
       f'task, each task run with its own weights (checkpoint at step {model.step}), on their '
       'first two principal components.', ''))
  return out


def _model_or_reason(run, data):
  """(model_stats.Model or None, why there is none)."""
  try:
    model = model_stats.load_model(run, data)
  except tfds_io.DatasetUnavailableError as e:
    return None, f'the dataset is not available here: {str(e).splitlines()[0]}'
  return model, None if model is not None else 'the run has no checkpoint.'


def write_run_report(workdir, out_dir=None, data=None):
  """Writes one run's figures and report.md (default <workdir>/report/); returns its path.

  data: the run's task set, if the caller holds it (a training loop at its end), to save
  loading it again.
  """
  started = time.time()
  run = results.load_run(workdir)
  model, no_model = _model_or_reason(run, data)
  sections = run_sections(run, model)
  lines = [f'# {run.name}', '', f'`{run.path}`: {_describe(run)}', '']
  headline = run.headline()
  if headline:
    lines += _table(('mean accuracy (%)', 'BWT', 'forgetting'),
                    [tuple(f'{headline[k]:.2f}' for k in ('mean_accuracy', 'bwt', 'forgetting'))])
  if run.finished:
    lines += ['Parameters: ' + ', '.join(f'{k} {v:,}' if isinstance(v, int) else f'{k} {v:.3g}'
                                         for k, v in run.summary['params'].items()), '']
  if no_model:
    lines += [f'Mask statistics and features are left out: {no_model}', '']
  return _save(epath.Path(out_dir or run.path / REPORT_DIR), lines, sections, started)


def _save(out_dir, lines, sections, started):
  """Saves the figures and report.md: `lines`, then each section with its figure."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, section in sections.items():
    with (out_dir / name).open('wb') as f:
      section.figure.savefig(f, format='png')
    lines += [f'## {section.heading}', '', *section.text, f'![{section.heading}]({name})', '']
  report = out_dir / REPORT
  report.write_text('\n'.join(lines))
  logging.info('Report written to %s in %.1f s.', report, time.time() - started)
  return report


def _mean_std(point, key):
  mean, std = point.stat(key)
  return f'{mean:.2f}' + ('' if math.isnan(std) else f' ± {std:.2f}')


def _field_heatmap(points, prefix):
  """A Section: mean accuracy over the two swept fields with the most values (numeric fields
  first), one panel per combination of the other swept fields; None below two swept fields."""
  swept = list(points[0].fields)
  if len(swept) < 2:
    return None
  values = {k: sorted({p.fields[k] for p in points}, key=results.sort_key) for k in swept}
  numeric = lambda k: all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in values[k])
  row, col = sorted(swept, key=lambda k: (not numeric(k), -len(values[k])))[:2]
  others = [k for k in swept if k not in (row, col)]
  panels = {}
  for p in sorted(points, key=lambda p: [results.sort_key(p.fields[k]) for k in others]):
    grid = panels.setdefault(tuple(p.fields[k] for k in others),
                             np.full((len(values[row]), len(values[col])), np.nan))
    grid[values[row].index(p.fields[row]), values[col].index(p.fields[col])] = (
        p.stat('mean_accuracy')[0])
  fmt = results.format_value
  titled = [(', '.join(f'{k}={fmt(v)}' for k, v in zip(others, combo)), grid)
            for combo, grid in panels.items()]
  source = f'{prefix}: ' if prefix else ''
  return Section(f'{source}mean accuracy over {row} x {col}', figures.field_heatmaps(
      row, [fmt(v) for v in values[row]], col, [fmt(v) for v in values[col]], titled,
      f'{source}mean final accuracy over seeds'))


def sweep_sections(sources):
  """({file name: Section}, grid points) for [(source label, [Run])]."""
  heatmaps, points = {}, []
  for prefix, runs in sources:
    source_points = results.group(runs, prefix)
    points += source_points
    heatmap = _field_heatmap(source_points, prefix) if source_points else None
    if heatmap:
      heatmaps[f"field_heatmap{'_' + prefix if prefix else ''}.png"] = heatmap
  if not points:
    return {}, points
  means, stds = zip(*(p.stat('mean_accuracy') for p in points))
  out = {'grid_points.png': Section('Mean ± std per grid point', figures.grid_points(
      [p.label for p in points], means, stds, 'mean final accuracy per grid point')), **heatmaps}
  best = sorted(points, key=lambda p: -p.stat('mean_accuracy')[0])[:LINES_MAX]
  series = []
  for p in points:
    if p in best:
      rows = p.final_rows()
      std = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.full(rows.shape[1], np.nan)
      series.append((p.label, rows.mean(axis=0), std))
  shown = '' if len(best) == len(points) else f', the {len(best)} best of {len(points)}'
  out['final_accuracy_per_task.png'] = Section(
      'Final accuracy per task' + shown, figures.final_accuracy_per_task(
          series, f'accuracy on each task after the last task\n(mean ± std over seeds{shown})'))
  digits = len(str(len(points)))
  for k, p in enumerate(points):
    out[f'mean_accuracy_matrix_{k + 1:0{digits}d}.png'] = Section(
        f'Mean accuracy matrix, {p.label}', figures.accuracy_matrix(
            p.matrices().mean(axis=0),
            f"mean accuracy matrix over seeds {', '.join(map(str, p.seeds))}\n{p.label}"))
  return out, points


def write_sweep_report(paths, out_dir):
  """Writes the report of every run below `paths`, grouped into grid points; returns its path."""
  started = time.time()
  paths = [epath.Path(p) for p in paths]
  sources = [(p.name if len(paths) > 1 else '', [results.load_run(r) for r in results.find_runs(p)])
             for p in paths]
  sections, points = sweep_sections(sources)
  all_runs = [r for _, runs in sources for r in runs]
  unfinished = [r for r in all_runs if not r.finished]
  lines = ['# ' + ' vs '.join(p.name for p in paths), '',
           f'{len(all_runs) - len(unfinished)} finished runs in {len(points)} grid points '
           '(runs whose configs differ only in the seed).', '']
  if unfinished:
    lines += ['Unfinished, left out: ' + ', '.join(f'`{r.path}` ({r.tasks_done}/{r.num_tasks} '
                                                   'tasks)' for r in unfinished), '']
  if points:
    lines += ['## Mean ± std over seeds per grid point', '',
              'Std is the sample standard deviation over seeds.', '']
    lines += _table(('grid point', 'seeds', 'tasks', 'mean accuracy (%)', 'BWT', 'forgetting'),
                    [(p.label, ', '.join(map(str, p.seeds)), p.runs[0].num_tasks,
                      _mean_std(p, 'mean_accuracy'), _mean_std(p, 'bwt'),
                      _mean_std(p, 'forgetting')) for p in points])
  return _save(epath.Path(out_dir), lines, sections, started)


def write_report(paths, out_dir=None):
  """One run's report, or that of every run below `paths` by grid point; returns report.md.
  Raises errors.BadInput, before it writes, for a path that is no folder or holds no run."""
  paths = [epath.Path(p) for p in paths]
  for path in paths:
    if not path.is_dir():
      raise errors.BadInput(f'{path}: not a folder; name a run\'s workdir or a folder of runs')
  runs = [r for p in paths for r in results.find_runs(p)]
  if not runs:
    raise errors.BadInput(f'no run (a folder with config.json) in {", ".join(map(str, paths))}')
  if len(runs) == 1:
    report = write_run_report(runs[0], out_dir)
  else:
    default = paths[0] / REPORT_DIR if len(paths) == 1 else epath.Path(REPORT_DIR)
    report = write_sweep_report(paths, out_dir or default)
  return report


def main(argv=None):
  parser = errors.ArgumentParser(prog='python -m hypermask_jax.report',
                                 description=__doc__.split('\n\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='a run folder, or a folder of runs (a sweep)')
  parser.add_argument('--out', help='folder for the report (default: WORKDIR/report for one '
                      'WORKDIR, else ./report)')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    write_report(args.workdirs, args.out)
  except errors.BadInput as e:
    errors.exit_bad_input(e)


if __name__ == '__main__':
  main()
