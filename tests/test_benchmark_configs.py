"""The benchmarks: the shortened configs they name run as written; the step benchmark's floors."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from experiments import shortened_runs
from hypermask_jax import config_checks
from hypermask_jax import cpu_kernels
from tests.conftest import needs_cpu_kernels


@pytest.mark.parametrize('name', shortened_runs.CONFIGS)
def test_shortened_configs_resolve_as_train_and_evaluate_takes_them(name):
  """hypermask_jax gets the config as shortened (epochs stay epochs); the PyTorch loop gets the
  same config with its steps counted."""
  config = shortened_runs.shortened_config(name, 2, 100)
  assert config_checks.resolve(config).num_tasks == 2  # what train_and_evaluate does first
  steps = shortened_runs.with_steps(config)
  if config.epochs_per_task:
    assert config.steps_per_task is None
    assert steps.steps_per_task == config.epochs_per_task * 141 >= 100  # 4500 images, batch 32
  else:
    assert steps.steps_per_task == config.steps_per_task == 100


def run_step_benchmark(*args):
  return subprocess.run(
      [sys.executable, 'experiments/benchmark_step.py', '--config=configs/hnet_split_mnist.py:small',
       *args], capture_output=True, text=True, cwd=pathlib.Path(__file__).resolve().parents[1])


@pytest.mark.slow
def test_step_benchmark_floors_follow_the_tasks_regularised():
  """benchmark_step's floors are its own figures' quotients, its step a call's fixed cost spread
  over the call's steps plus the step past it, and the FLOP count grows with the old tasks'
  regulariser rows: none at task 1, 2 at task 3, 4 at task 5 (--tasks, any order)."""
  run = run_step_benchmark('--steps=2', '--repeats=1', '--tasks=5,1,3')
  assert run.returncode == 0, run.stderr
  # Its checkpoint measurement saves with orbax, whose INFO logs (some 60 lines) stay quiet.
  assert not re.search(r'^I\d{4} .*\] ', run.stderr, re.M), run.stderr[:3000]
  out = run.stdout
  pattern = (r'task +(\d+) .* jax +([\d.]+) ms/step \(a call: (-?[\d.]+) ms, (\d+) page faults, '
             r'\+ (-?[\d.]+) ms per step\) \| moves >= ([\d.]+) GB .* at ([\d.]+) GB/s: '
             r'([\d.]+) ms \| computes ([\d.]+) GFLOP at ([\d.]+) GFLOP/s: ([\d.]+) ms \| floor '
             r'([\d.]+) ms, share (\d+)%')
  rows = [[float(v) for v in m.groups()] for m in re.finditer(pattern, out)]
  assert [row[0] for row in rows] == [1, 3, 5], out
  for row in rows:
    _, step, fixed, _, marginal = row[:5]
    # --steps=2: a call's fixed cost over its 2 steps (printed to 0.1, 0.01 and 0.01 ms)
    assert step == pytest.approx(marginal + fixed / 2, abs=0.05)
  rows = [row[:2] + row[5:] for row in rows]
  for _, step, gb, bandwidth, memory, gflop, rate, compute, floor, share in rows:
    # The GB are printed to 0.001 (0.004 GB here: +-12%), the floor to 0.01 ms.
    assert memory == pytest.approx(gb / bandwidth * 1e3, rel=0.05,
                                   abs=0.0005 / bandwidth * 1e3 + 0.02)
    assert compute == pytest.approx(gflop / rate * 1e3, rel=0.05, abs=0.02)
    assert floor == max(memory, compute)
    assert share == pytest.approx(100 * floor / step, abs=1)
  # Each old task regularised is a full pass of the chunked hypernetwork.
  assert rows[2][5] > rows[1][5] > 1.2 * rows[0][5]


@pytest.mark.parametrize('tasks', ['6', pytest.param('0', marks=pytest.mark.slow),
                                   pytest.param('2,x', marks=pytest.mark.slow)])
def test_step_benchmark_refuses_tasks_outside_the_config(tasks):
  run = run_step_benchmark(f'--tasks={tasks}')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: --tasks must list task numbers in [1, 5], e.g. --tasks=1,2,5; got {tasks}')


def test_step_benchmark_refuses_no_repeats():
  run = run_step_benchmark('--repeats=0')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == 'error: --repeats must be at least 1; got 0'


def run_wide_product_benchmark(*args):
  return subprocess.run([sys.executable, 'experiments/benchmark_wide_product.py', *args],
                        capture_output=True, text=True,
                        cwd=pathlib.Path(__file__).resolve().parents[1])


@needs_cpu_kernels
@pytest.mark.slow
def test_wide_product_benchmark_times_both_forms_and_they_agree():
  run = run_wide_product_benchmark('--m=3001', '--n=30', '--rows=1,3', '--calls=2')
  assert run.returncode == 0, run.stderr
  rows = re.findall(r'^ +(\d+) rows: \| xla +[\d.]+ / +[\d.]+ \| ffi +[\d.]+ / +[\d.]+ \| '
                    r'speed-up [\d.]+x \| difference (\S+)$', run.stdout, re.M)
  assert [int(r) for r, _ in rows] == [1, 3]
  assert all(float(difference) < 1e-5 for _, difference in rows)


def test_wide_product_benchmark_refuses_a_row_count_of_zero():
  run = run_wide_product_benchmark('--rows=2,0')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      'error: --rows must list counts of at least 1, e.g. --rows=2,10; got 2,0')


def run_conv_benchmark(*args):
  return subprocess.run([sys.executable, 'experiments/benchmark_conv.py', *args],
                        capture_output=True, text=True,
                        cwd=pathlib.Path(__file__).resolve().parents[1])


@pytest.mark.slow
def test_conv_benchmark_times_every_form_and_they_agree():
  """Every ResNet-20 conv shape in each HYPERMASK_CONV form (by default; ffi where the kernels
  build), the forms' results within float rounding of the first's (0 for the strided convs,
  which nhwc_vjp and ffi run as im2col)."""
  kernels = not cpu_kernels.unavailable_reason()
  run = run_conv_benchmark('--batch=2', '--steps=2', '--repeats=1',
                           *([] if kernels else ['--forms=nhwc_vjp,im2col,xla']))
  assert run.returncode == 0, run.stderr
  pattern = (r'(\d+) x +\d+ x +(\d+) -> +(\d+), stride (\d): \| nhwc_vjp +[\d.]+ ms \(difference '
             r'0\.0e\+00\) \| im2col +[\d.]+ ms \(difference (\S+)\) \| xla +[\d.]+ ms '
             r'\(difference (\S+)\)' + (r' \| ffi +[\d.]+ ms \(difference (\S+)\)$' if kernels
                                      else '()$'))
  rows = re.findall(pattern, run.stdout, re.M)
  assert [tuple(map(int, row[:4])) for row in rows] == [
      (32, 32, 32, 1), (16, 64, 64, 1), (8, 128, 128, 1), (32, 32, 64, 2), (16, 64, 128, 2)]
  for *_, stride, im2col, xla, ffi in rows:
    assert float(xla) < 1e-4
    assert float(im2col) < 1e-4 and (float(im2col) == 0) == (stride == '2')
    assert not kernels or float(ffi) < 1e-4 and (float(ffi) == 0) == (stride == '2')


def test_conv_benchmark_refuses_an_unknown_form():
  run = run_conv_benchmark('--forms=nhwc_vjp,cudnn')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      'error: --forms must list some of nhwc_vjp,im2col,xla,ffi; got nhwc_vjp,cudnn')


def run_vs_torch(*args, pythonpath=None, prelude=''):
  """experiments/benchmark_vs_torch.py with `args`; `prelude`: Python run first in its process."""
  root = pathlib.Path(__file__).resolve().parents[1]
  code = (f'{prelude}\nimport runpy, sys\nsys.argv = {["benchmark_vs_torch.py", *args]!r}\n'
          "runpy.run_path('experiments/benchmark_vs_torch.py', run_name='__main__')")
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in (pythonpath, str(root)) if p)}
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=root,
                        env=env)


@pytest.mark.parametrize('args,error', [
    (['--frameworks=jax,tf'], "--frameworks takes jax, torch or both; got 'jax,tf'"),
    (['--configs=split_mnist,mnist'], "unknown configs ['mnist']: choose from " +
     str(shortened_runs.CONFIGS)),
    (['--steps=0'], '--steps must be at least 1; got 0'),
    (['--out=no_such_folder/table.json'],
     '--out must be a file in an existing folder; got no_such_folder/table.json'),
    (['--frameworks=torch'], '--frameworks=torch needs torch and hypnettorch: pip install -r '
     'requirements-torch.txt (or --frameworks=jax)'),
])
def test_vs_torch_benchmark_refuses_bad_flags_before_any_run(args, error, tmp_path):
  """One line, exit 2, nothing run and nothing written; PyTorch missing is found up front (here
  hidden from the script, as where it is not installed), not in each config's worker."""
  hide_torch = ('import importlib.util\nfind = importlib.util.find_spec\n'
                "importlib.util.find_spec = lambda name, *a: (None if name in ('torch', "
                "'hypnettorch') else find(name, *a))")
  out = [] if args[0].startswith('--out') else [f'--out={tmp_path / "t.json"}']
  run = run_vs_torch(*args, *out, prelude=hide_torch)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines() == [f'error: {error}']
  assert run.stdout == '' and not list(tmp_path.iterdir())


def test_vs_torch_benchmark_names_the_runs_that_failed(tmp_path):
  """A worker that fails (here PyTorch raising on import) is named, with its error, the table
  of the others is written, and the exit status is 1."""
  for module in ('torch', 'hypnettorch'):
    (tmp_path / module).mkdir()
    (tmp_path / module / '__init__.py').write_text(f'raise ImportError("no {module} here")\n')
  out = tmp_path / 'table.json'
  run = run_vs_torch('--frameworks=torch', '--configs=split_mnist', '--tasks=1', '--steps=2',
                     f'--out={out}', pythonpath=str(tmp_path))
  assert run.returncode == 1, run.stderr[-3000:]
  assert 'split_mnist / torch failed (exit 1):' in run.stdout
  assert 'ImportError: no torch here' in run.stdout
  assert run.stdout.splitlines()[-1] == 'failed (their errors above): split_mnist / torch'
  assert json.loads(out.read_text()) == {'tasks': 1, 'steps': 2, 'kernels': None, 'rows': []}


@needs_cpu_kernels
@pytest.mark.slow
def test_vs_torch_benchmark_runs_the_jax_side_and_writes_its_table(tmp_path):
  """--frameworks=jax: the kernels are built first (their line printed and kept), then a
  shortened run whose row holds each task's time."""
  out = tmp_path / 'table.json'
  run = run_vs_torch('--frameworks=jax', '--configs=hnet_split_mnist', '--tasks=2', '--steps=5',
                     f'--out={out}')
  assert run.returncode == 0, run.stderr[-3000:]
  assert re.match(r'hypermask_jax C\+\+ kernels: \S+\.so \((already built|built in [\d.]+ s)\) '
                  r'\(before the runs; not counted in the table\)\n', run.stdout)
  table = json.loads(out.read_text())
  assert table['kernels'] == run.stdout.splitlines()[0].split(' (before the runs')[0]
  [row] = table['rows']
  assert (row['config'], row['framework']) == ('hnet_split_mnist', 'jax')
  result = row['result']
  assert (result['num_tasks'], result['steps_per_task']) == (2, 5)
  assert len(result['task_seconds']) == 2 and result['steps_per_sec'] > 0
  assert result['wall'] >= sum(result['task_seconds']) * 0.99 and result['peak_bytes'] > 0
