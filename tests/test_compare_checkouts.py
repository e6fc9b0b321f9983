"""compare_checkouts times two checkouts in one process: each trains with its own code."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from experiments import step_chunks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def compare(before, *args):
  return subprocess.run(
      [sys.executable, 'experiments/compare_checkouts.py', '--config=configs/split_mnist.py:small',
       f'--before={before}', '--task=2', '--steps=2', '--calls=2', *args],
      capture_output=True, text=True, cwd=ROOT)


CHANGES = {  # file in hypermask_jax/, the text changed, what it becomes
    'same': None,
    'doubled_rate': ('trainer.py', 'return optax.adam(learning_rate)',
                     'return optax.adam(2 * learning_rate)'),
    'more_params': ('hypernet.py', '(self.max_tasks, self.embedding_size))',
                    '(self.max_tasks + 1, self.embedding_size))'),
}


@pytest.mark.slow
@pytest.mark.parametrize('change', CHANGES)
def test_each_checkout_trains_with_its_own_code(tmp_path, change):
  """A copy of this checkout trains the same parameters; a copy whose Adam step is doubled
  other values (built first); one with other parameters is not compared."""
  shutil.copytree(ROOT / 'hypermask_jax', tmp_path / 'hypermask_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  if CHANGES[change]:
    name, old, new = CHANGES[change]
    source = (tmp_path / 'hypermask_jax' / name).read_text()
    assert source.count(old) >= 1
    (tmp_path / 'hypermask_jax' / name).write_text(source.replace(old, new))
  run = compare(tmp_path, f'--first={"this" if change == "doubled_rate" else "before"}')
  assert run.returncode == 0, run.stderr
  rows = re.findall(r'^(before|this) +(\S+) +fastest +([\d.]+) +median +([\d.]+) +calls((?: [\d.]+)+)$',
                    run.stdout, re.M)
  assert [(name, len(calls.split())) for name, _, _, _, calls in rows] == [('before', 2),
                                                                           ('this', 2)]
  assert rows[0][1] == str(tmp_path) and rows[1][1] == str(ROOT)
  # The ratios' median, from the calls' times as printed (to 0.05 ms).
  pairs = list(zip(*(map(float, row[4].split()) for row in rows)))
  low, high = (sum((this + d) / (before - d) for before, this in pairs) / 2 for d in (-0.05, 0.05))
  median = float(re.search(r'^this / before, call by call: median ([\d.]+), this faster in '
                           r'[012] of 2 calls$', run.stdout, re.M).group(1))
  assert low - 1e-3 <= median <= high + 1e-3, (median, pairs)
  if change == 'more_params':
    assert 'parameters after 6 steps: not compared, the two versions have different ones' in (
        run.stdout)
    return
  difference = float(re.search(r'largest parameter difference after 6 steps: (\S+)',
                               run.stdout).group(1))
  assert (difference > 0) == (change == 'doubled_rate')


@pytest.mark.slow  # the flags' path, as the bad flag value below
def test_refuses_a_folder_without_the_library(tmp_path):
  run = compare(tmp_path)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f"error: --before must name a checkout holding hypermask_jax/; got '{tmp_path}'")


@pytest.mark.slow  # the flags' path, as the bad flag value below
def test_refuses_no_calls():
  run = compare(ROOT, '--calls=0')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      'error: --steps and --calls must be at least 1; got 2 and 0')


def test_a_bad_flag_value_is_one_line_and_exit_2():
  run = compare(ROOT, '--task=two')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines() == [
      "error: --task=two: invalid literal for int() with base 10: 'two'"]


def test_a_config_the_other_checkout_refuses_is_one_line_and_exit_2(tmp_path):
  """The other checkout's BadInput is another class than this one's: still one line, exit 2."""
  shutil.copytree(ROOT / 'hypermask_jax', tmp_path / 'hypermask_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  checks = tmp_path / 'hypermask_jax' / 'config_checks.py'
  old = '  validate(config)\n  return config\n'
  assert checks.read_text().count(old) == 1
  checks.write_text(checks.read_text().replace(
      old, "  raise errors.BadInput('--config.sparsity: not in this version')\n"))
  run = compare(tmp_path)
  assert run.returncode == 2
  assert 'Traceback' not in run.stderr, run.stderr
  assert run.stderr.strip().splitlines()[-1] == (
      f'error: the checkout {tmp_path} refuses the config: --config.sparsity: not in this '
      'version')


def test_help_prints_the_docstring_and_the_flags_and_exits_0():
  run = subprocess.run([sys.executable, 'experiments/compare_checkouts.py', '--help'],
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  assert run.stdout.startswith("Times a config's train step in two checkouts")
  assert '--before: The other checkout' in run.stdout


def test_a_dense_kernel_is_compared_with_the_weight_it_became():
  """A checkout from before layers.Linear holds a target's Dense 'kernel' [in, out]; later ones
  the 'weight' [out, in]. Their parameters are compared transposed, the hypernetwork's own
  'kernel' as it is, either checkout first. (In a process of its own: the script defines
  absl flags that other experiments' scripts define too.)"""
  code = """
import numpy as np
from experiments import compare_checkouts
kernel = np.arange(6.0).reshape(1, 2, 3)  # [runs, in, out]
hnet = {'out': {'kernel': np.ones((1, 4, 5))}}
target = lambda name, array: {'dense_0': {name: array, 'bias': np.zeros((1, 3))}}
old = {'hnet': hnet, 'target': target('kernel', kernel)}
new = {'hnet': hnet, 'target': target('weight', np.swapaxes(kernel, 1, 2))}
moved = {'hnet': hnet, 'target': target('weight', np.swapaxes(kernel, 1, 2) + 0.5)}
untransposed = {'hnet': hnet, 'target': target('weight', kernel)}
for a, b in ((old, new), (new, old), (old, moved), (old, untransposed)):
  print(compare_checkouts.parameter_difference(a, b, 6))
"""
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == [
      'largest parameter difference after 6 steps: 0',
      'largest parameter difference after 6 steps: 0',
      'largest parameter difference after 6 steps: 0.5 (in target/dense_0/weight)',
      'parameters after 6 steps: not compared, the two versions have different ones']


def test_before_env_reaches_the_before_build():
  """A backend choice set for the before version is read when it is built: a value the choice
  does not allow stops the run with that choice's one-line error."""
  run = compare(ROOT, '--before_env=HYPERMASK_CPU_YNNPACK=maybe')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      f"error: the checkout {ROOT} refuses the config: HYPERMASK_CPU_YNNPACK='maybe': must be "
      "one of ('on', 'off') (or unset)")


def test_before_env_must_be_pairs_and_is_restored(monkeypatch):
  run = compare(ROOT, '--before_env=HYPERMASK_CPU_YNNPACK')
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1] == (
      "error: --before_env must list VAR=VALUE pairs; got 'HYPERMASK_CPU_YNNPACK'")
  monkeypatch.setenv('HYPERMASK_CONV', 'im2col')
  monkeypatch.delenv('HYPERMASK_CPU_YNNPACK', raising=False)
  values = {'HYPERMASK_CONV': 'xla', 'HYPERMASK_CPU_YNNPACK': 'on'}
  with step_chunks.environment(values):
    assert (os.environ['HYPERMASK_CONV'], os.environ['HYPERMASK_CPU_YNNPACK']) == ('xla', 'on')
  assert os.environ['HYPERMASK_CONV'] == 'im2col' and 'HYPERMASK_CPU_YNNPACK' not in os.environ


def test_alternating_timers_take_turns_abba_and_keep_each_ones_results():
  """How compare_checkouts times two checkouts and benchmark_step --compare_torch the two
  frameworks: in turn, the order reversed every other round."""
  calls = []
  timer = lambda name: lambda: calls.append(name) or len(calls)
  times = step_chunks.alternating({'jax': timer('jax'), 'torch': timer('torch')}, 3)
  assert calls == ['jax', 'torch', 'torch', 'jax', 'jax', 'torch']
  assert times == {'jax': [1, 4, 5], 'torch': [2, 3, 6]}
