"""Sweeps: the runs of config.sweep, grouped into vmapped programs; their tables; bad sweeps."""

import csv
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import sweep
from hypermask_jax import sweep_results
from hypermask_jax import train
from tests.test_cli import TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]
# vmapping R runs lets XLA fuse and vectorise their arithmetic differently than for one run, so
# the last bits of a loss differ (about 1e-9 relative) and could in principle flip a borderline
# prediction: runs inside a sweep must equal a run alone within this many accuracy points. With
# a few hundred test examples per task one example is 0.3 points, so this asks for the same
# predictions (and the small Permuted MNIST config on real MNIST gave identical matrices).
TOLERANCE = 0.1


def tiny_config(**sweep_values):
  config = permuted_mnist.get_config('small')
  config.update(dict(num_tasks=3, target_hidden=(16,), hnet_hidden=(8,), embedding_size=4,
                     batch_size=32, steps_per_task=12, log_every_steps=6, eval_batch_size=64))
  for field, values in sweep_values.items():
    config.sweep[field] = values
  return config


@pytest.fixture
def patched_data(monkeypatch, synthetic_task_set):
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: synthetic_task_set)


def test_the_runs_are_the_product_of_the_lists_with_the_seed_last():
  runs = sweep.expand(tiny_config(seed=(1, 2), beta=(1e-3, 5e-4)))
  assert [r.name for r in runs] == ['beta=0.001,seed=1', 'beta=0.001,seed=2',
                                    'beta=0.0005,seed=1', 'beta=0.0005,seed=2']
  assert [(r.config.beta, r.config.seed) for r in runs] == [(1e-3, 1), (1e-3, 2), (5e-4, 1),
                                                            (5e-4, 2)]
  assert all(not r.config.sweep for r in runs)  # each run's config is a plain config
  single = sweep.expand(tiny_config())
  assert len(single) == 1 and single[0].name == '' and not sweep.is_sweep(tiny_config())


def test_traced_fields_share_a_program_and_static_fields_split_it():
  runs = sweep.expand(tiny_config(seed=(1, 2), hnet_hidden=((8,), (16,)), sparsity=(0, 30)))
  programs = sweep.group(runs, lambda config: 100)
  assert [len(p.runs) for p in programs] == [4, 4]
  assert {p.config.hnet_hidden for p in programs} == {(8,), (16,)}
  assert all(p.config.sparsity == 30.0 for p in programs)  # any sparse run: the sparse path
  capped = sweep.group(runs, lambda config: 3)
  assert [len(p.runs) for p in capped] == [3, 1, 3, 1]
  assert [p.index for p in sweep.shard(capped, 1, 2)] == [1, 3]


@pytest.mark.parametrize('values,message', [
    ({'nonexistent': (1, 2)}, 'config.sweep.nonexistent: no such config field to sweep'),
    ({'beta': ()}, 'config.sweep.beta: empty; give at least one value'),
    ({'beta': ('abc',)}, "config.sweep.beta: 'abc' is not of the field's type (float"),
    ({'beta': (1e-3, -1.0)}, "config.sweep (run {'beta': -1.0}): config.beta=-1.0: must be a "
                             'number in [0, inf)'),
    ({'seed': (1, 1)}, "config.sweep: two runs are named 'seed=1'"),
])
def test_a_bad_sweep_is_refused_naming_the_field(values, message):
  with pytest.raises(config_checks.ConfigError) as e:
    sweep.expand(tiny_config(**values))
  assert message in str(e.value)


@pytest.mark.slow
def test_a_run_in_a_sweep_equals_the_run_alone_and_the_tables_add_up(tmp_path, patched_data):
  result = train.train_and_evaluate(tiny_config(seed=(1, 2, 3), lam=(1e-3, 0.0)),
                                    str(tmp_path / 'sweep'))
  assert len(result['runs']) == 6
  for seed in (1, 2, 3):
    config = tiny_config()
    config.seed = seed
    alone = train.train_and_evaluate(config, str(tmp_path / f'seed{seed}'))
    together = result['runs'][f'lam=0.001,seed={seed}']
    np.testing.assert_allclose(np.array(together['accuracy_matrix'], dtype=float),
                               np.array(alone['accuracy_matrix'], dtype=float),
                               atol=TOLERANCE)
    assert together['traces'] == alone['traces']  # the sweep's program compiled once as well
    assert together['run']['runs_in_program'] == 6
    run_dir = tmp_path / 'sweep' / 'runs' / f'lam=0.001,seed={seed}'
    saved = json.loads((run_dir / 'config.json').read_text())
    assert saved['seed'] == seed and saved['lam'] == 1e-3  # its own values
    assert {p.name for p in run_dir.iterdir()} >= {
        'config.json', 'metrics.jsonl', 'accuracy_matrix.csv', 'accuracy_matrix.json',
        'summary.json', 'task_embeddings.json', 'embedding_similarity.csv'}

  rows = list(csv.DictReader((tmp_path / 'sweep' / 'grid.csv').open()))
  assert sorted(row['lam'] for row in rows) == ['0', '0.001']
  for row in rows:
    finals = [s['mean_accuracy'] for name, s in result['runs'].items()
              if name.startswith(f"lam={float(row['lam']):g},")]
    assert row['seeds'] == '1 2 3'
    assert float(row['mean_accuracy_mean']) == pytest.approx(np.mean(finals), abs=1e-4)
    assert float(row['mean_accuracy_std']) == pytest.approx(np.std(finals, ddof=1), abs=1e-4)
  best = json.loads((tmp_path / 'sweep' / 'best.json').read_text())
  vals = {float(r['lam']): float(r['mean_val_accuracy_mean']) for r in rows}
  assert best['chosen_by'] == 'mean_val_accuracy' and best['point']['lam'] == max(vals,
                                                                                key=vals.get)
  table = (tmp_path / 'sweep' / 'results.md').read_text()
  finals = [result['runs'][f'lam=0,seed={seed}']['mean_accuracy'] for seed in (1, 2, 3)]
  assert f'| lam=0 | 3 | {np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f} |' in table


@pytest.mark.slow  # a whole sweep
def test_a_finished_sweep_is_not_rerun_and_another_sweep_is_refused(tmp_path, patched_data):
  workdir = str(tmp_path / 'sweep')
  first = train.train_and_evaluate(tiny_config(seed=(1, 2)), workdir)
  again = train.train_and_evaluate(tiny_config(seed=(1, 2)), workdir)
  assert again['runs'] == first['runs']
  with pytest.raises(sweep.outputs.WorkdirError, match='holds another sweep'):
    train.train_and_evaluate(tiny_config(seed=(1, 2, 3)), workdir)
  with pytest.raises(sweep.outputs.WorkdirError, match='holds a sweep; a single run needs'):
    train.train_and_evaluate(tiny_config(), workdir)


def cli(workdir, data_dir, *extra, env_extra=None):
  # A tuple field given twice concatenates (ml_collections), so extra replaces TINY's flags.
  names = {arg.split('=')[0] for arg in extra}
  tiny = [arg for arg in TINY if arg.split('=')[0] not in names]
  return subprocess.run(
      [sys.executable, '-m', 'hypermask_jax.main', '--config=configs/permuted_mnist.py:small',
       *tiny, f'--config.data_dir={data_dir}', f'--workdir={workdir}', *extra],
      cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT), **(env_extra or {})},
      capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize('extra,message', [
    (['--config.sweep.nonexistent=1,2'],
     'error: --config.sweep.nonexistent: no such config field to sweep'),
    pytest.param(['--config.sweep.beta=abc,def'],
                 "error: config.sweep.beta: 'abc' is not of the field's",
                 marks=pytest.mark.slow),  # also in process: test_a_bad_sweep_is_refused...
    (['--config.sweep.seed=1,2', '--config.target_hidden=(3000000,)'],
     'does not fit even at one run per program'),
])
def test_bad_sweep_on_the_command_line(small_mnist_data_dir, tmp_path, extra, message):
  result = cli(tmp_path / 'sweep', small_mnist_data_dir, *extra)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert not (tmp_path / 'sweep').exists()


def tables(workdir):
  return {name: (pathlib.Path(workdir) / name).read_text()
          for name in (sweep_results.RUNS_CSV, sweep_results.GRID_CSV, sweep_results.RESULTS)}


def assert_same_accuracy(sweep_dir, reference_dir):
  """Each run of sweep_dir has the accuracy matrix of its namesake in reference_dir; returns
  sweep_dir's summaries."""
  summaries = []
  for run_dir in (reference_dir / 'runs').iterdir():
    reference = json.loads((run_dir / 'summary.json').read_text())
    summary = json.loads((sweep_dir / 'runs' / run_dir.name / 'summary.json').read_text())
    np.testing.assert_allclose(np.array(summary['accuracy_matrix'], dtype=float),
                               np.array(reference['accuracy_matrix'], dtype=float),
                               atol=TOLERANCE)
    summaries.append(summary)
  assert summaries
  return summaries


GRID = ['--config.sweep.beta=5e-4,1e-3', '--config.sweep.lam=1e-3,0.0', '--config.sweep.seed=1,2']


@pytest.mark.slow
def test_a_grid_with_seeds_on_four_devices_gives_the_one_device_results(small_mnist_data_dir,
                                                                        tmp_path):
  one = cli(tmp_path / 'one', small_mnist_data_dir, *GRID)
  assert one.returncode == 0, one.stderr[-3000:]
  four = cli(tmp_path / 'four', small_mnist_data_dir, *GRID,
             env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert four.returncode == 0, four.stderr[-3000:]
  assert '8 run(s)' in four.stderr and 'on 4 device(s)' in four.stderr
  for summary in assert_same_accuracy(tmp_path / 'four', tmp_path / 'one'):
    assert summary['environment']['device_count'] == 4


@pytest.mark.slow
def test_a_sweep_killed_anywhere_resumes_to_the_same_tables(small_mnist_data_dir, tmp_path):
  full = cli(tmp_path / 'full', small_mnist_data_dir, *GRID, '--config.runs_per_program=3')
  assert full.returncode == 0, full.stderr[-3000:]
  assert full.stderr.count('compiling the training step') == 3  # programs of 3, 3 and 2 runs
  workdir = tmp_path / 'killed'
  for sig, pattern in ((signal.SIGTERM, 'program 2/3'), (signal.SIGKILL, 'task 2/2 step 10/20')):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'hypermask_jax.main', '--config=configs/permuted_mnist.py:small',
         *TINY, *GRID, '--config.runs_per_program=3', f'--config.data_dir={small_mnist_data_dir}',
         f'--workdir={workdir}'], cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)},
        stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
      if pattern in line:
        proc.send_signal(sig)
        break
    proc.stderr.read()
    code = proc.wait(timeout=600)
    assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL)
  resumed = cli(workdir, small_mnist_data_dir, *GRID, '--config.runs_per_program=3')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'program 1/' not in resumed.stderr  # the finished program is not rerun
  assert tables(workdir) == tables(tmp_path / 'full')


@pytest.mark.slow
def test_shards_run_their_share_and_any_later_run_collects_them(small_mnist_data_dir, tmp_path):
  workdir = tmp_path / 'sharded'
  two_programs = ['--config.sweep.hnet_hidden=(8,),(12,)', '--config.sweep.seed=1,2']
  first = cli(workdir, small_mnist_data_dir, *two_programs, '--sweep_shard=0/2')
  assert first.returncode == 0, first.stderr[-3000:]
  done = {p.name for p in (workdir / 'runs').iterdir() if (p / 'summary.json').exists()}
  assert done == {'hnet_hidden=8,seed=1', 'hnet_hidden=8,seed=2'}
  second = cli(workdir, small_mnist_data_dir, *two_programs, '--sweep_shard=1/2')
  assert second.returncode == 0, second.stderr[-3000:]
  rows = list(csv.DictReader((workdir / sweep_results.RUNS_CSV).open()))
  assert len(rows) == 4  # the last shard to finish wrote the complete tables
  collect = cli(workdir, small_mnist_data_dir, *two_programs)
  assert collect.returncode == 0 and 'compiling' not in collect.stderr


@pytest.mark.slow
def test_two_processes_share_a_sweep_and_give_the_one_process_results(small_mnist_data_dir,
                                                                      tmp_path):
  """jax.distributed on one machine: 2 processes x 2 CPU devices, as 2 hosts would run it."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  seeds = ['--config.sweep.seed=1,2,3,4']
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'hypermask_jax.main', '--config=configs/permuted_mnist.py:small',
       *TINY, *seeds, f'--config.data_dir={small_mnist_data_dir}', f'--workdir={tmp_path / "two"}'],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_COORDINATOR_ADDRESS': f'localhost:{port}',
           'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i),
           'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}) for i in range(2)]
  logs = [p.communicate(timeout=900)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [log[-2000:] for log in logs]
  one = cli(tmp_path / 'one', small_mnist_data_dir, *seeds)
  assert one.returncode == 0, one.stderr[-2000:]
  assert 'sweep tables in' in logs[0] and 'sweep tables in' not in logs[1]  # process 0 writes
  for summary in assert_same_accuracy(tmp_path / 'two', tmp_path / 'one'):
    assert summary['environment']['process_count'] == 2
