"""The report's figures, drawn with matplotlib's object API (Agg rendering, no display, no pyplot).

Each function takes plain arrays and returns a matplotlib Figure; tasks are
numbered from 1. They stay legible from 3 to 100+ tasks: cell values are
written only in heatmaps of at most ANNOTATE_MAX rows and columns, tick labels
are thinned to about MAX_TICKS, and per-task colours become a colour scale
with a colour bar beyond LEGEND_MAX tasks.
"""

import math

from matplotlib import cm
from matplotlib import colors
from matplotlib.figure import Figure
import numpy as np

ANNOTATE_MAX = 20
MAX_TICKS = 20
LEGEND_MAX = 10
DPI = 110


def tick_step(n, max_ticks=MAX_TICKS):
  """1, 2, 5, 10, 20, ...: the smallest such step giving at most max_ticks ticks over n items."""
  for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
    if math.ceil(n / step) <= max_ticks:
      return step
  return math.ceil(n / max_ticks)


def thinned(n, max_ticks=MAX_TICKS):
  """The positions (0-based) of the ticks shown over n items: the first and every step-th."""
  step = tick_step(n, max_ticks)
  return [0] + [i for i in range(step - 1, n, step) if i > 0]


def _set_ticks(axis_set, labels):
  positions = thinned(len(labels))
  axis_set(positions, [labels[i] for i in positions])


def _task_axis(ax, n):
  """The x axis numbers tasks 1..n."""
  ticks = np.array(thinned(n)) + 1
  ax.set_xticks(ticks, [str(t) for t in ticks])


def task_labels(n):
  return [str(i + 1) for i in range(n)]


def heatmap(ax, values, row_labels, col_labels, *, cmap='viridis', vmin=None, vmax=None,
            fmt='{:.1f}', colorbar_label=None):
  """values [R, C] (NaN cells left blank), its numbers in the cells when small enough."""
  values = np.asarray(values, float)
  if vmin is not None and vmax is not None and vmin >= vmax:  # all cells equal: a 1-wide scale
    vmin = vmax - 1
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                    aspect='auto', interpolation='nearest')
  _set_ticks(ax.set_yticks, row_labels)
  _set_ticks(ax.set_xticks, col_labels)
  rows, cols = values.shape
  if max(rows, cols) <= ANNOTATE_MAX:
    size = 9 if max(rows, cols) <= 10 else 7
    norm = image.norm
    for (i, j), v in np.ndenumerate(values):
      if np.isfinite(v):
        dark = norm(v) < 0.55 if cmap == 'viridis' else abs(norm(v) - 0.5) > 0.3
        ax.text(j, i, fmt.format(v), ha='center', va='center', fontsize=size,
                color='white' if dark else 'black')
  bar = ax.figure.colorbar(image, ax=ax, shrink=0.85)
  if colorbar_label:
    bar.set_label(colorbar_label)
  return image


def _square_size(n, extra_width=1.5):
  side = min(max(4.5, 0.45 * n + 2), 11)
  return side + extra_width, side


def accuracy_matrix(acc, title):
  """A[i, j]: test accuracy on task j after training task i."""
  fig = Figure(figsize=_square_size(acc.shape[0]), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  n = acc.shape[0]
  heatmap(ax, acc, task_labels(n), task_labels(n), vmin=np.nanmin(acc), vmax=100,
          colorbar_label='test accuracy (%)')
  ax.set_xlabel('evaluated task')
  ax.set_ylabel('after training task')
  ax.set_title(title)
  return fig


def task_colors(n):
  """One colour per task: a qualitative map up to LEGEND_MAX tasks, else a continuous scale."""
  if n <= LEGEND_MAX:
    return [cm.tab10(i) for i in range(n)], None
  norm = colors.Normalize(1, n)
  return [cm.viridis(norm(i + 1)) for i in range(n)], cm.ScalarMappable(norm, cm.viridis)


def _task_legend(fig, ax, mappable):
  if mappable is None:
    ax.legend(title='task', fontsize=8, loc='best')
  else:
    fig.colorbar(mappable, ax=ax, label='task')


def accuracy_after_each_task(acc, title):
  """Each task's test accuracy after it and after every later task, and their mean."""
  n = acc.shape[0]
  fig = Figure(figsize=(8, 4.8), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  palette, mappable = task_colors(n)
  x = np.arange(1, n + 1)
  marker = 'o' if n <= LEGEND_MAX else None
  for j in range(n):
    ax.plot(x[j:], acc[j:, j], color=palette[j], marker=marker, markersize=4,
            lw=1.2 if n <= LEGEND_MAX else 0.6, label=str(j + 1))
  ax.plot(x, np.nanmean(acc, axis=1), color='black', lw=2.5, label='mean of seen tasks'
          if mappable is None else None)
  _task_legend(fig, ax, mappable)
  ax.set_xlabel('tasks trained')
  ax.set_ylabel('test accuracy (%)')
  _task_axis(ax, n)
  ax.grid(alpha=0.3)
  ax.set_title(title + ('' if mappable is None else ' (black: mean of seen tasks)'))
  return fig


def just_after_vs_final(acc, title):
  """Per task: its accuracy right after training it (A[j, j]) and after the last task."""
  n = acc.shape[0]
  just_after, final = np.diag(acc), acc[-1]
  fig = Figure(figsize=(max(6, min(0.35 * n + 3, 14)), 4.5), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  x = np.arange(1, n + 1)
  marker = 'o' if n <= 30 else None
  ax.plot(x, just_after, marker=marker, label=f'just after training (mean {just_after.mean():.2f})')
  ax.plot(x, final, marker=marker, label=f'after all {n} tasks (mean {final.mean():.2f})')
  ax.fill_between(x, final, just_after, color='tab:red', alpha=0.15, label='forgotten')
  _task_axis(ax, n)
  ax.set_xlabel('task')
  ax.set_ylabel('test accuracy (%)')
  ax.legend(loc='best', fontsize=9)
  ax.grid(alpha=0.3)
  ax.set_title(title)
  return fig


# Record fields that are not training-loss terms; names of the methods' loss terms.
NOT_LOSS = ('task', 'step', 'global_step', 'epoch', 'accuracy', 'val_accuracy',
            'best_val_accuracy', 'best_val_loss', 'learning_rate', 'steps_per_sec')
TERM_NAMES = {'loss': 'total loss', 'ce': 'cross-entropy', 'reg': 'output regulariser',
              'l1': 'L1 drift', 'learning_rate': 'learning rate', 'val_loss': 'validation loss'}


def training_curves(records, title):
  """Loss terms, train and validation accuracy (and the learning rate) over the global step.

  Dotted vertical lines mark where tasks ended (every task up to MAX_TICKS tasks, else those
  numbered on the top axis).
  """
  steps = np.array([r['global_step'] for r in records])
  losses = sorted((k for k in records[0] if k not in NOT_LOSS), key=lambda k: k != 'loss')
  panels = losses + ['accuracy'] + (['learning_rate'] if 'learning_rate' in records[0] else [])
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig = Figure(figsize=(4.6 * cols, 3.2 * rows + 0.5), dpi=DPI, layout='constrained')
  task_of = np.array([r['task'] for r in records])
  ends = [steps[task_of == t].max() for t in np.unique(task_of)]
  centers = [(a + b) / 2 for a, b in zip([0] + ends[:-1], ends)]
  for k, panel in enumerate(panels):
    ax = fig.add_subplot(rows, cols, k + 1)
    if panel == 'accuracy':
      ax.plot(steps, [r['accuracy'] for r in records], lw=1, label='train (batch)')
      ax.plot(steps, [r['val_accuracy'] for r in records], lw=1.2, label='validation')
      if 'best_val_accuracy' in records[0]:
        ax.plot(steps, [r['best_val_accuracy'] for r in records], lw=1, ls='--',
                label='best validation')
      ax.set_ylabel('accuracy (%)')
      ax.legend(fontsize=8)
    else:
      ax.plot(steps, [r[panel] for r in records], lw=1)
      ax.set_ylabel(TERM_NAMES.get(panel, panel))
      if panel == 'learning_rate':
        ax.set_yscale('log')
    shown = thinned(len(ends), max_ticks=10)
    for i in range(len(ends) - 1) if len(ends) <= MAX_TICKS else shown:
      ax.axvline(ends[i], color='grey', lw=0.6, ls=':')
    ax.set_xlabel('global step')
    ax.grid(alpha=0.2)
    top = ax.secondary_xaxis('top')
    top.set_xticks([centers[i] for i in shown], [str(i + 1) for i in shown], fontsize=7)
    top.set_xlabel('task', fontsize=8)
  fig.suptitle(title)
  return fig


def similarity(sim, title, colorbar_label):
  """A symmetric task x task matrix in [-1, 1] or [0, 1] (embedding similarity, mask overlap)."""
  n = sim.shape[0]
  fig = Figure(figsize=_square_size(n), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  low = -1 if np.nanmin(sim) < 0 else 0
  heatmap(ax, sim, task_labels(n), task_labels(n), cmap='RdBu_r' if low < 0 else 'viridis',
          vmin=low, vmax=1, fmt='{:.2f}', colorbar_label=colorbar_label)
  ax.set_xlabel('task')
  ax.set_ylabel('task')
  ax.set_title(title)
  return fig


def mask_statistics(layers, zero_fraction, mean_value, overlap_with_others, title):
  """Three layer x task heatmaps: % of mask entries at 0, mean mask value, mean overlap."""
  n_layers, n = mean_value.shape
  width = min(max(5, 0.45 * n + 2.5), 10)
  height = min(max(2.2, 0.38 * n_layers + 1.2), 9)
  fig = Figure(figsize=(width, 3 * height), dpi=DPI, layout='constrained')
  panels = ((zero_fraction, 'mask entries at 0 (%)', '{:.1f}', 100),
            (mean_value, 'mean mask value', '{:.2f}', 1),
            (overlap_with_others, 'mean overlap with the other tasks', '{:.2f}', 1))
  for k, (values, label, fmt, vmax) in enumerate(panels):
    ax = fig.add_subplot(3, 1, k + 1)
    heatmap(ax, values, layers, task_labels(n), vmin=0, vmax=vmax, fmt=fmt, colorbar_label=label)
    ax.set_title(label, fontsize=10)
    ax.set_ylabel('layer')
    ax.set_xlabel('task')
  fig.suptitle(title)
  return fig


def features_projection(points, task_ids, explained, title):
  """2-D projection of the target's penultimate features, one colour per task."""
  n = int(task_ids.max()) + 1
  fig = Figure(figsize=(7.5, 6), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  palette, mappable = task_colors(n)
  size = 10 if len(points) < 3000 else 4
  for t in range(n):
    sel = task_ids == t
    ax.scatter(points[sel, 0], points[sel, 1], s=size, color=palette[t], alpha=0.7,
               label=str(t + 1), linewidths=0)
  _task_legend(fig, ax, mappable)
  ax.set_xlabel(f'PC 1 ({100 * explained[0]:.1f}% of the variance)')
  ax.set_ylabel(f'PC 2 ({100 * explained[1]:.1f}% of the variance)')
  ax.set_title(title)
  return fig


def grid_points(labels, means, stds, title):
  """Mean final accuracy +- std over seeds per grid point, as horizontal bars."""
  n = len(labels)
  fig = Figure(figsize=(9, min(max(2.5, 0.4 * n + 1.2), 20)), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  y = np.arange(n)
  err = np.nan_to_num(stds)
  ax.barh(y, means, color='tab:blue', alpha=0.8)
  ax.errorbar(means, y, xerr=stds, fmt='none', ecolor='black', capsize=3)  # NaN std: no bar
  ax.set_yticks(y, labels, fontsize=8 if n <= 20 else 6)
  ax.invert_yaxis()
  low = max(0, np.min(np.asarray(means) - err) - 5)
  ax.set_xlim(low, min(100, np.max(np.asarray(means) + err) + 3))
  for i, (m, s) in enumerate(zip(means, stds)):
    text = f'{m:.2f}' + ('' if np.isnan(s) else f' ± {s:.2f}')
    ax.text(low + 0.3, i, text, va='center', fontsize=8, color='white')
  ax.set_xlabel('mean final accuracy (%), ± std over seeds')
  ax.grid(axis='x', alpha=0.3)
  ax.set_title(title)
  return fig


def field_heatmaps(row_field, row_labels, col_field, col_labels, panels, title):
  """Mean accuracy over two swept fields; one panel per combination of the other swept fields.

  panels: [(panel title, values [len(row_labels), len(col_labels)])].
  """
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  cell = 0.8
  width = max(4, cell * len(col_labels) + 2.5)
  height = max(3, cell * len(row_labels) + 1.5)
  fig = Figure(figsize=(width * cols, height * rows + 0.4), dpi=DPI, layout='constrained')
  finite = np.concatenate([v[np.isfinite(v)] for _, v in panels])
  for k, (panel_title, values) in enumerate(panels):
    ax = fig.add_subplot(rows, cols, k + 1)
    heatmap(ax, values, row_labels, col_labels, vmin=finite.min(), vmax=finite.max(),
            fmt='{:.2f}', colorbar_label='mean final accuracy (%)')
    ax.set_ylabel(row_field)
    ax.set_xlabel(col_field)
    if panel_title:
      ax.set_title(panel_title, fontsize=9)
  fig.suptitle(title)
  return fig


def final_accuracy_per_task(series, title):
  """Final accuracy on each task, mean +- std over seeds, one line per grid point.

  series: [(label, mean [T], std [T])]; T may differ between grid points.
  """
  n = max(len(m) for _, m, _ in series)
  fig = Figure(figsize=(max(9, min(0.35 * n + 7, 16)), 4.8), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  marker = 'o' if n <= 30 else None
  for label, mean, std in series:
    x = np.arange(1, len(mean) + 1)
    line, = ax.plot(x, mean, marker=marker, markersize=4, label=label)
    if np.isfinite(std).all():
      ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
  _task_axis(ax, n)
  ax.set_xlabel('task')
  ax.set_ylabel('accuracy after the last task (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
  ax.set_title(title)
  return fig


def pooled_rows(acc, sizes):
  """Each row of a [T, T] accuracy matrix averaged over the samples of its tasks (NaN: not
  evaluated), weighted by their test sizes."""
  return np.array([np.average(row[:i + 1], weights=sizes[:i + 1]) for i, row in enumerate(acc)])


def task_inference(acc, inferred, sizes, title):
  """With the task given vs inferred: each task's accuracy after the last task, and the accuracy
  over all samples of the tasks seen after each task. inferred: {metric: [T, T] matrix}."""
  n = acc.shape[0]
  fig = Figure(figsize=(13, 4.8), dpi=DPI, layout='constrained')
  final_ax, pooled_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  x = np.arange(1, n + 1)
  marker = 'o' if n <= 30 else None
  series = {'task given': acc, **inferred}
  for k, (name, matrix) in enumerate(series.items()):
    style = {'color': 'black', 'lw': 2.2} if k == 0 else {'lw': 1.3}
    final_ax.plot(x, matrix[-1], marker=marker, markersize=4, label=name, **style)
    pooled_ax.plot(x, pooled_rows(matrix, sizes), marker=marker, markersize=4, label=name,
                   **style)
  for ax, what, xlabel in ((final_ax, 'accuracy on each task after the last task', 'task'),
                           (pooled_ax, 'accuracy over all samples of the tasks seen',
                            'tasks trained')):
    _task_axis(ax, n)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('test accuracy (%)')
    ax.set_title(what, fontsize=10)
    ax.grid(alpha=0.3)
  pooled_ax.legend(fontsize=8, loc='best')
  fig.suptitle(title)
  return fig
