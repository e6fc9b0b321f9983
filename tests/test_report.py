"""The report: its figures plot the runs' own numbers; sweeps are grouped by config and averaged."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypermask_jax import report
from hypermask_jax import results
from hypermask_jax import train
from tests import fake_runs
from tests.test_train import tiny_config


def heatmap_axes(fig):
  """The axes of a figure that hold an image (not the colour bars)."""
  return [ax for ax in fig.axes if ax.images]


def shown(ax):
  """The values of an axes' heatmap, NaN where the cell is blank."""
  return ax.images[0].get_array().filled(np.nan)


def summary_matrix(path):
  rows = json.loads((path / 'summary.json').read_text())['accuracy_matrix']
  return np.array([[np.nan if v is None else v for v in row] for row in rows])


def test_run_figures_plot_the_runs_numbers(tmp_path):
  path = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(4, seed=0))
  acc = summary_matrix(path)
  figs = report.run_sections(results.load_run(path))
  assert set(figs) == {'accuracy_matrix.png', 'accuracy_after_each_task.png',
                       'just_after_vs_final.png', 'training_curves.png',
                       'embedding_similarity.png'}

  ax, = heatmap_axes(figs['accuracy_matrix.png'].figure)
  np.testing.assert_array_equal(shown(ax), acc)
  assert sorted(t.get_text() for t in ax.texts) == sorted(f'{v:.1f}' for v in acc[~np.isnan(acc)])
  assert (ax.get_xlabel(), ax.get_ylabel()) == ('evaluated task', 'after training task')

  ax = figs['accuracy_after_each_task.png'].figure.axes[0]
  lines = ax.get_lines()
  for j in range(4):  # task j, from the row after it was trained to the last one
    np.testing.assert_array_equal(lines[j].get_xdata(), np.arange(j + 1, 5))
    np.testing.assert_array_equal(lines[j].get_ydata(), acc[j:, j])
  np.testing.assert_allclose(lines[4].get_ydata(), [np.mean(acc[i, :i + 1]) for i in range(4)])

  ax = figs['just_after_vs_final.png'].figure.axes[0]
  just_after, final = ax.get_lines()
  np.testing.assert_array_equal(just_after.get_ydata(), np.diag(acc))
  np.testing.assert_array_equal(final.get_ydata(), acc[-1])
  summary = json.loads((path / 'summary.json').read_text())
  assert f"mean {summary['mean_accuracy']:.2f}" in final.get_label()

  records = [json.loads(line) for line in (path / 'metrics.jsonl').read_text().splitlines()]
  panels = {ax.get_ylabel(): ax for ax in figs['training_curves.png'].figure.axes}
  steps = [r['global_step'] for r in records]
  for label, field in (('total loss', 'loss'), ('cross-entropy', 'ce'),
                       ('output regulariser', 'reg'), ('L1 drift', 'l1')):
    curve = panels[label].get_lines()[0]
    np.testing.assert_array_equal(curve.get_xdata(), steps)
    np.testing.assert_array_equal(curve.get_ydata(), [r[field] for r in records])
  train_acc, val_acc = panels['accuracy (%)'].get_lines()[:2]
  np.testing.assert_array_equal(val_acc.get_ydata(), [r['val_accuracy'] for r in records])
  np.testing.assert_array_equal(train_acc.get_ydata(), [r['accuracy'] for r in records])
  boundaries = [line.get_xdata()[0] for line in panels['total loss'].get_lines()[1:]]
  assert boundaries == [100, 200, 300]  # where tasks 1, 2 and 3 ended

  ax, = heatmap_axes(figs['embedding_similarity.png'].figure)
  csv = np.loadtxt(path / 'embedding_similarity.csv', delimiter=',', skiprows=1)[:, 1:]
  np.testing.assert_allclose(shown(ax), csv, atol=1e-4)


def test_report_md_gives_the_summary_numbers_and_shows_its_figures(tmp_path):
  path = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(3, seed=1))
  report_md = report.write_report([path])
  assert report_md == path / 'report' / 'report.md'
  text = report_md.read_text()
  summary = json.loads((path / 'summary.json').read_text())
  numbers = ' | '.join(f'{summary[k]:.2f}' for k in ('mean_accuracy', 'bwt', 'forgetting'))
  assert f'| {numbers} |' in text
  linked = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
  assert len(linked) == 5
  assert all((report_md.parent / name).read_bytes()[:4] == b'\x89PNG' for name in linked)
  assert 'left out: the run has no checkpoint' in text


def test_an_unfinished_run_reports_the_tasks_done_so_far(tmp_path):
  path = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(3, seed=1))
  (path / 'summary.json').unlink()
  rows = json.loads((path / 'accuracy_matrix.json').read_text())[:2]
  (path / 'accuracy_matrix.json').write_text(json.dumps([row[:2] for row in rows]))
  text = report.write_report([path]).read_text()
  assert 'unfinished: 2 of 3 tasks evaluated' in text
  acc = np.array([[rows[0][0], np.nan], rows[1][:2]])
  mean, bwt = np.mean(acc[1]), acc[1, 0] - acc[0, 0]
  assert f'| {mean:.2f} | {bwt:.2f} | {-bwt:.2f} |' in text


def test_a_100_task_run_stays_legible(tmp_path):
  path = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(100, seed=0, drop=0.05))
  figs = report.run_sections(results.load_run(path))
  ax, = heatmap_axes(figs['accuracy_matrix.png'].figure)
  assert shown(ax).shape == (100, 100) and not ax.texts  # no numbers in 10,000 cells
  assert [t.get_text() for t in ax.get_xticklabels()] == ['1'] + [str(i) for i in range(5, 101, 5)]
  fig = figs['accuracy_after_each_task.png'].figure
  assert fig.axes[0].get_legend() is None and len(fig.axes) == 2  # a colour bar, not 100 entries
  loss = {ax.get_ylabel(): ax for ax in figs['training_curves.png'].figure.axes}['total loss']
  assert len(loss.get_lines()) - 1 <= 11  # task boundaries drawn at the numbered tasks only


def write_sweep(root, seeds=(1, 2, 3)):
  """2 x 2 grid over beta and lam, 3 seeds each: <root>/runs/<name>/."""
  for beta in (0.001, 0.005):
    for lam in (0.0005, 0.001):
      for seed in seeds:
        acc = fake_runs.fake_accuracy(3, seed=seed + int(beta * 1e4) + int(lam * 1e4),
                                      drop=beta * 500 + lam * 1000)
        fake_runs.write_fake_run(root / 'runs' / f'b{beta}_l{lam}_s{seed}', acc, beta=beta,
                                 lam=lam, seed=seed)


def test_a_sweep_is_grouped_by_config_and_averaged_over_seeds(tmp_path):
  sweep = tmp_path / 'sweep'
  write_sweep(sweep)
  unfinished = fake_runs.write_fake_run(sweep / 'runs' / 'late', fake_runs.fake_accuracy(3, 9),
                                        seed=4)
  (unfinished / 'summary.json').unlink()
  runs = [results.load_run(p) for p in results.find_runs(sweep)]
  assert len(runs) == 13
  figs, points = report.sweep_sections([('', runs)])
  assert [p.label for p in points] == ['beta=0.001, lam=0.0005', 'beta=0.001, lam=0.001',
                                       'beta=0.005, lam=0.0005', 'beta=0.005, lam=0.001']
  by_point = {}
  for run in runs:
    if run.finished:
      key = (run.config['beta'], run.config['lam'])
      by_point.setdefault(key, []).append(summary_matrix(run.path))
  matrices = [np.stack(by_point[(p.fields['beta'], p.fields['lam'])]) for p in points]
  finals = [m[:, -1].mean(axis=1) for m in matrices]  # each seed's mean final accuracy

  ax = figs['grid_points.png'].figure.axes[0]
  np.testing.assert_allclose([bar.get_width() for bar in ax.patches], [f.mean() for f in finals])
  errors = ax.containers[-1].lines[2][0].get_segments()
  np.testing.assert_allclose([(s[1, 0] - s[0, 0]) / 2 for s in errors],
                             [f.std(ddof=1) for f in finals])

  ax, = heatmap_axes(figs['field_heatmap.png'].figure)
  np.testing.assert_allclose(shown(ax), np.reshape([f.mean() for f in finals], (2, 2)))
  assert (ax.get_ylabel(), ax.get_xlabel()) == ('beta', 'lam')

  for k, m in enumerate(matrices):
    ax, = heatmap_axes(figs[f'mean_accuracy_matrix_{k + 1}.png'].figure)
    np.testing.assert_allclose(shown(ax), m.mean(axis=0))
  lines = figs['final_accuracy_per_task.png'].figure.axes[0].get_lines()
  for line, m in zip(lines, matrices):
    np.testing.assert_allclose(line.get_ydata(), m[:, -1].mean(axis=0))

  text = report.write_report([sweep]).read_text()
  assert f'{finals[0].mean():.2f} ± {finals[0].std(ddof=1):.2f}' in text
  assert '| beta=0.001, lam=0.0005 | 1, 2, 3 | 3 |' in text
  assert '`' + str(unfinished) + '` (3/3 tasks)' in text


def test_runs_and_sweeps_compared_side_by_side(tmp_path, monkeypatch):
  write_sweep(tmp_path / 'hypermask', seeds=(1, 2))
  for seed in (1, 2):
    fake_runs.write_fake_run(tmp_path / 'finetune' / f's{seed}', fake_runs.fake_accuracy(3, seed),
                             method='finetune', seed=seed)
  monkeypatch.chdir(tmp_path)
  report.main(['hypermask', 'finetune'])
  text = (tmp_path / 'report' / 'report.md').read_text()
  assert '# hypermask vs finetune' in text
  assert '| hypermask: beta=0.005, lam=0.001 | 1, 2 | 3 |' in text
  assert '| finetune | 1, 2 | 3 |' in text
  assert (tmp_path / 'report' / 'field_heatmap_hypermask.png').exists()
  assert (tmp_path / 'report' / 'grid_points.png').exists()


@pytest.mark.parametrize('argv,message', [
    (['missing'], "missing: not a folder; name a run's workdir or a folder of runs"),
    (['empty'], 'no run (a folder with config.json) in empty'),
    ([], 'the following arguments are required: WORKDIR'),
    (['empty', '--outt=x'], 'unrecognized arguments: --outt=x'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, argv,
                                                         message):
  (tmp_path / 'empty').mkdir()
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    report.main(argv)
  assert e.value.code == 2
  assert capsys.readouterr().err.splitlines() == [f'error: {message}']
  assert sorted(p.name for p in tmp_path.rglob('*')) == ['empty']


def cut_config(text):
  return text[:-5]  # inside the last field's string, on the last line left


def cut_third_record(text):
  lines = text.split('\n')
  lines[2] = lines[2][:-5]
  return '\n'.join(lines)


@pytest.mark.parametrize('name,cut,line', [
    ('config.json', cut_config, lambda text: text.count('\n') + 1),
    ('metrics.jsonl', cut_third_record, lambda text: 3)])
def test_a_damaged_run_file_is_named_in_one_line_exit_2(tmp_path, capsys, name, cut, line):
  run = tmp_path / 'run'
  fake_runs.write_fake_run(run, fake_runs.fake_accuracy(3, 1))
  damaged = cut((run / name).read_text())
  (run / name).write_text(damaged)
  with pytest.raises(SystemExit) as e:
    report.main([str(run)])
  assert e.value.code == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {run / name}: damaged ('), lines
  assert f', line {line(damaged)}); ' in lines[0], lines
  assert lines[0].endswith('a run writes it whole, so something else cut or changed it')
  assert not (run / 'report').exists()


def test_a_metrics_record_cut_while_being_written_is_left_out(tmp_path):
  """A run killed (or read) while appending a record leaves a last line with no newline: the
  report is made from the whole records before it."""
  run = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(3, 1))
  whole = results.load_run(run).records
  metrics_file = run / 'metrics.jsonl'
  with metrics_file.open('a') as f:
    f.write('{"task": 3, "step": 150, "global_step": 3')
  assert results.load_run(run).records == whole
  assert len(whole) == len(fake_runs.fake_records(3)) == 6
  report.main([str(run)])
  assert (run / 'report' / 'report.md').exists()


@pytest.mark.slow  # a short training run (mostly compiling), then the model's figures
def test_the_model_figures_of_a_trained_hypermask_run(tmp_path, monkeypatch, synthetic_task_set):
  """Masks and features from the final checkpoint, checked against the method's own weights."""
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: synthetic_task_set)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(sparsity=50.0), str(workdir), with_report=True)
  assert (workdir / 'report' / 'report.md').exists()  # written when the run ends
  run = results.load_run(workdir)
  model = report.model_stats.load_model(run, synthetic_task_set)
  figs = report.run_sections(run, model)
  eval_weights = jax.jit(model.method.eval_weights)

  # The masks, recovered from the weights each task runs with: M = (W * M) / W.
  masks = []
  for t in range(3):
    weights = eval_weights(model.params, jnp.int32(t), model.hp)
    masks.append({name: np.asarray(weights[layer][kind]) / model.params['target'][layer][kind]
                  for name, layer, kind in (('dense_0/weight', 'dense_0', 'weight'),
                                            ('dense_0/bias', 'dense_0', 'bias'),
                                            ('head/weight', 'head', 'weight'))})
  zeros, means, _ = heatmap_axes(figs['mask_statistics.png'].figure)
  layers = [t.get_text() for t in zeros.get_yticklabels()]
  assert layers == ['dense_0/weight', 'dense_0/bias', 'head/weight']  # no mask on the output bias
  for i, name in enumerate(layers):
    np.testing.assert_allclose(shown(zeros)[i], [100 * np.mean(m[name] == 0) for m in masks])
    np.testing.assert_allclose(shown(means)[i], [np.mean(m[name]) for m in masks], rtol=1e-5)
  assert 45 < shown(zeros)[0, 0] < 55  # sparsity 50: about half of a kernel's mask is 0

  ax, = heatmap_axes(figs['mask_overlap.png'].figure)
  flat = [np.concatenate([m[name].ravel() for name in layers]) for m in masks]
  by_hand = np.sum(np.minimum(flat[0], flat[2])) / np.sum(np.maximum(flat[0], flat[2]))
  np.testing.assert_allclose(shown(ax)[0, 2], by_hand, rtol=1e-5)
  np.testing.assert_allclose(np.diag(shown(ax)), 1.0)

  # Penultimate features of the MLP (one hidden layer): relu(x W0^T + b0) with each task's weights,
  # for the 200 test samples of each task, as the figure shows them.
  features, task_ids = report.model_stats.penultimate_features(model, 3, 200)
  data = synthetic_task_set
  for t in range(3):
    w = eval_weights(model.params, jnp.int32(t), model.hp)['dense_0']
    x = data.inputs(data.test.images[:200], t, None, train=False)
    np.testing.assert_allclose(features[task_ids == t], jax.nn.relu(x @ w['weight'].T + w['bias']),
                               rtol=1e-4, atol=1e-5)
  projected, _ = report.model_stats.pca(features)
  scatters = figs['features_pca.png'].figure.axes[0].collections
  assert len(scatters) == 3
  for t, scatter in enumerate(scatters):
    np.testing.assert_allclose(scatter.get_offsets(), projected[task_ids == t], rtol=1e-6)


def test_pca_projects_on_the_directions_of_largest_variance():
  rs = np.random.RandomState(0)
  x = rs.normal(size=(200, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
  projected, explained = report.model_stats.pca(x)
  u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
  np.testing.assert_allclose(np.abs(projected), np.abs(u[:, :2] * s[:2]), atol=1e-9)
  np.testing.assert_allclose(explained, s[:2] ** 2 / np.sum(s ** 2))
  assert explained[0] > 0.8  # the axis with std 5 of a total variance of about 30


def test_task_inference_is_plotted_beside_the_task_given(tmp_path):
  """Its figure and table show the saved matrices, pooled with the tasks' test sizes."""
  path = fake_runs.write_fake_run(tmp_path / 'run', fake_runs.fake_accuracy(3, seed=2))
  inferred = fake_runs.fake_accuracy(3, seed=3, drop=4.0)
  sizes = [100, 300, 100]
  matrix = [[None if np.isnan(v) else float(v) for v in row] for row in inferred]
  (path / 'task_inference.json').write_text(json.dumps(
      {'mode': 'entropy', 'test_sizes': sizes, 'metrics': {'entropy_accuracy': matrix}}))
  section = report.run_sections(results.load_run(path))['task_inference.png']
  final_ax, pooled_ax = section.figure.axes[:2]
  given, entropy = final_ax.get_lines()
  np.testing.assert_array_equal(given.get_ydata(), summary_matrix(path)[-1])
  np.testing.assert_array_equal(entropy.get_ydata(), inferred[-1])
  pooled = pooled_ax.get_lines()[1].get_ydata()
  np.testing.assert_allclose(pooled[1], np.average(inferred[1, :2], weights=sizes[:2]))
  np.testing.assert_allclose(pooled[2], np.average(inferred[2], weights=sizes))
  table = '\n'.join(section.text)
  assert '| task | task given | entropy_accuracy |' in table
  assert f'| all samples | {np.average(summary_matrix(path)[-1], weights=sizes):.2f} | ' \
         f'{pooled[2]:.2f} |' in table
