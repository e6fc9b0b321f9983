"""Kill a run anywhere, run the same command again: the results equal an uninterrupted run's.

Each case runs the CLI as a subprocess on real MNIST (3 short tasks), stops it
with a signal at a chosen point, restarts it, and compares the accuracy matrix
and the final parameters bit for bit with an uninterrupted run.
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hypermask_jax import preemption

pytestmark = pytest.mark.slow  # real training in subprocesses, killed and resumed

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/permuted_mnist.py:small', '--config.steps_per_task=300',
        '--config.log_every_steps=50', '--config.checkpoint_every_steps=100', '--noreport']


def command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'hypermask_jax.main', *ARGS, f'--config.data_dir={data_dir}',
          f'--workdir={workdir}', *extra]


def env():
  return {**os.environ, 'PYTHONUNBUFFERED': '1', 'TF_CPP_MIN_LOG_LEVEL': '2'}


def run(workdir, data_dir, *extra):
  return subprocess.run(command(workdir, data_dir, *extra), cwd=ROOT, env=env(), text=True,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def run_and_signal(workdir, data_dir, pattern, sig):
  """Starts a run, sends `sig` when a log line matches `pattern`; returns (exit code, log)."""
  proc = subprocess.Popen(command(workdir, data_dir), cwd=ROOT, env=env(), text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  log = []
  for line in proc.stderr:
    log.append(line)
    if re.search(pattern, line):
      proc.send_signal(sig)
      break
  log.append(proc.stderr.read())
  proc.wait(timeout=600)
  return proc.returncode, ''.join(log)


def results(workdir):
  """(accuracy matrix, final train state as numpy leaves, metrics log less timings) of a run."""
  workdir = pathlib.Path(workdir)
  manager = ocp.CheckpointManager(workdir / 'checkpoints', item_names=('state', 'progress'))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()))
  manager.close()
  leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  for record in records:
    record.pop('steps_per_sec', None)  # a timing
  return (json.loads((workdir / 'accuracy_matrix.json').read_text()),
          {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}, records)


def assert_same_results(workdir, reference):
  acc, state, records = results(workdir)
  ref_acc, ref_state, ref_records = reference
  assert acc == ref_acc
  assert records == ref_records  # the metrics log, as if never interrupted
  assert state.keys() == ref_state.keys()
  for key in state:
    assert np.array_equal(state[key], ref_state[key]), key


@pytest.fixture(scope='module')
def reference(mnist_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  result = run(workdir, mnist_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return results(workdir)


RANDOM_POINT = rf'task [23]/3 step {random.Random().choice(range(50, 301, 50))}/300'


@pytest.mark.parametrize('pattern,sig', [
    (RANDOM_POINT, signal.SIGTERM),  # at a random chunk of task 2 or 3
    (r'task 2/3 step 250/300', signal.SIGINT),  # stops at the end of task 2, after its eval
    (r'after task 1/3:', signal.SIGKILL),  # during the task switch (its save is in flight)
    (r'saving checkpoint 400 ', signal.SIGKILL),  # during a save
], ids=['sigterm-random', 'sigint', 'sigkill-task-switch', 'sigkill-during-save'])
def test_killed_run_resumes_to_identical_results(mnist_data_dir, tmp_path, reference, pattern,
                                                 sig):
  workdir = tmp_path / 'run'
  code, log = run_and_signal(workdir, mnist_data_dir, pattern, sig)
  if sig == signal.SIGKILL:
    assert code == -signal.SIGKILL, log[-3000:]
  else:
    assert code == preemption.EXIT_PREEMPTED, log[-3000:]
    assert 'preempted: stopped by' in log
  assert not (workdir / 'summary.json').exists()
  result = run(workdir, mnist_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resumed from the checkpoint' in result.stderr
  assert_same_results(workdir, reference)


def test_truncated_checkpoint_falls_back_to_the_previous_one(mnist_data_dir, tmp_path,
                                                              reference):
  workdir = tmp_path / 'run'
  code, log = run_and_signal(workdir, mnist_data_dir, r'task 2/3 step 250/300', signal.SIGTERM)
  assert code == preemption.EXIT_PREEMPTED, log[-3000:]
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  newest = workdir / 'checkpoints' / str(steps[-1])
  files = [p for p in newest.rglob('*') if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  with open(biggest, 'r+b') as f:
    f.truncate(biggest.stat().st_size // 2)
  result = run(workdir, mnist_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Checkpoint {steps[-1]} is unreadable' in result.stderr
  assert (workdir / 'checkpoints_unreadable' / str(steps[-1])).is_dir()  # kept, not deleted
  assert_same_results(workdir, reference)


def test_config_mismatch_is_refused_and_a_finished_run_is_not_retrained(mnist_data_dir,
                                                                        tmp_path):
  workdir = tmp_path / 'run'
  code, log = run_and_signal(workdir, mnist_data_dir, r'task 1/3 step 150/300', signal.SIGTERM)
  assert code == preemption.EXIT_PREEMPTED, log[-3000:]
  saved = {p.name for p in (workdir / 'checkpoints').iterdir()}

  refused = run(workdir, mnist_data_dir, '--config.beta=0.1', '--config.seed=2')
  assert refused.returncode == 2
  assert 'beta: saved 0.0005, requested 0.1' in refused.stderr
  assert 'seed: saved 1, requested 2' in refused.stderr
  assert {p.name for p in (workdir / 'checkpoints').iterdir()} == saved  # nothing touched

  assert run(workdir, mnist_data_dir).returncode == 0
  summary = (workdir / 'summary.json').read_text()
  again = run(workdir, mnist_data_dir)
  assert again.returncode == 0
  assert 'already holds the finished results' in again.stderr
  assert 'task 1/3 step' not in again.stderr  # no training
  assert (workdir / 'summary.json').read_text() == summary
  other = run(workdir, mnist_data_dir, '--config.lam=0.5')
  assert other.returncode == 2 and 'lam: saved 0.001, requested 0.5' in other.stderr
