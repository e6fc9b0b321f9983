"""The command line as a new user meets it: relative paths, bad input, a failed start, --help.

Every case runs `python -m hypermask_jax.main` as a subprocess on a small synthetic MNIST.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from hypermask_jax import checkpoints
from hypermask_jax import preemption

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--config.num_tasks=2', '--config.steps_per_task=20', '--config.log_every_steps=10',
        '--config.checkpoint_every_steps=10', '--config.target_hidden=(16,)',
        '--config.hnet_hidden=(8,)', '--config.embedding_size=4', '--config.batch_size=32',
        '--noreport']


def env():
  return {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}


def cli(*args, cwd=ROOT, variables=None):
  return subprocess.run([sys.executable, '-m', 'hypermask_jax.main', *args], cwd=cwd,
                        env={**env(), **(variables or {})}, capture_output=True, text=True,
                        timeout=600)


def tiny_run(workdir, data_dir, *extra, config='configs/permuted_mnist.py:small', cwd=ROOT):
  return cli(f'--config={config}', *TINY, f'--config.data_dir={data_dir}', f'--workdir={workdir}',
             *extra, cwd=cwd)


def error_lines(stderr):
  return [line for line in stderr.splitlines() if 'error' in line.lower()]


def listing(path):
  """What a folder holds (None if it does not exist), to show a refused start wrote nothing."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  return sorted((str(p.relative_to(path)), p.stat().st_size if p.is_file() else -1)
                for p in path.rglob('*'))


def corrupt_copy(data_dir, tmp_path):
  """A copy of a prepared data_dir whose mnist train records are cut in half."""
  copy = tmp_path / 'damaged_tfds'
  shutil.copytree(data_dir, copy)
  record = next((copy / 'mnist').rglob('mnist-train.tfrecord*'))
  with open(record, 'r+b') as f:
    f.truncate(record.stat().st_size // 2)
  return copy


def unwritable_folder(tmp_path):
  """A folder this process cannot create files in (as root, sysfs refuses new folders)."""
  if os.geteuid() == 0:
    return pathlib.Path('/sys/hypermask_jax_test/run')
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o555)
  return locked / 'run'


# (id, extra flags given the test's folders, what the single error line must say)
BAD_INPUT = [
    ('non-numeric', lambda d: ['--config.beta=abc'],
     "error: --config.beta=abc: could not convert string to float: 'abc'"),
    ('unknown-field', lambda d: ['--config.nonexistent=1'],
     'error: --config.nonexistent: no such config field'),
    ('misspelt-field', lambda d: ['--config.num_task=3'],
     'error: --config.num_task: no such config field (did you mean --config.num_tasks?)'),
    ('no-config', lambda d: ['NO_CONFIG'], 'error: --config: missing; name a config file'),
    ('empty-config', lambda d: ['--config='], 'error: --config: empty; name a config file'),
    ('missing-config-file', lambda d: ['--config=configs/nope.py'],
     "error: --config=configs/nope.py: no such file 'configs/nope.py'; the configs are"),
    ('unknown-variant', lambda d: ['--config=configs/permuted_mnist.py:big'],
     "error: --config=configs/permuted_mnist.py:big: unknown variant 'big'; "
     'configs/permuted_mnist.py has published, small'),
    ('no-workdir', lambda d: ['NO_WORKDIR'], 'error: --workdir: missing'),
    ('unknown-flag', lambda d: ['--wrkdir=x'], "error: Unknown command line flag 'wrkdir'"),
    ('extra-argument', lambda d: ['train'], "error: unexpected arguments ['train']"),
    ('out-of-range', lambda d: ['--config.sparsity=120'],
     'error: config.sparsity=120.0: must be a number in [0, 100)'),
    ('more-tasks-than-max', lambda d: ['--config.num_tasks=12', '--config.max_tasks=10'],
     'error: config.num_tasks=12 exceeds config.max_tasks=10'),
    ('workdir-is-a-file', lambda d: [f'--workdir={d["file"]}'],
     'is a file; the workdir must be a folder'),
    ('workdir-not-writable', lambda d: [f'--workdir={d["unwritable"]}'], 'cannot write there'),
    ('dataset-missing', lambda d: [f'--config.data_dir={d["empty"]}', '--config.download=False'],
     "error: TFDS dataset 'mnist' (split 'train') is not prepared in data_dir="),
    ('dataset-damaged', lambda d: [f'--config.data_dir={d["damaged"]}'],
     "is damaged (DataLossError: truncated record"),
    ('batch-too-large', lambda d: ['--config.batch_size=5000'],
     'error: config.batch_size=5000: larger than the smallest task training set (300 '
     'examples); must be at most 300'),
    ('bad-backend-variable', lambda d: ['ENV:HYPERMASK_CHUNK_BACKWARD=copy'],
     "error: HYPERMASK_CHUNK_BACKWARD='copy': must be one of ('ffi', 'direct', "
     "'transposed_copy') (or unset)"),
    ('bad-decoded-copy-variable', lambda d: ['ENV:HYPERMASK_DECODED_COPY=no'],
     "error: HYPERMASK_DECODED_COPY='no': must be 'on' or 'off' (or unset)"),
]


@pytest.fixture(scope='module')
def folders(small_mnist_data_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('cli')
  (tmp / 'a_file').write_text('not a folder')
  (tmp / 'no_jax' / 'jax').mkdir(parents=True)  # a JAX that cannot be imported
  (tmp / 'no_jax' / 'jax' / '__init__.py').write_text("raise ImportError('JAX was imported')")
  (tmp / 'empty').mkdir()
  return {'data': small_mnist_data_dir, 'file': tmp / 'a_file', 'empty': tmp / 'empty',
          'no_jax': tmp / 'no_jax',
          'unwritable': unwritable_folder(tmp), 'damaged': corrupt_copy(small_mnist_data_dir, tmp),
          'tmp': tmp}


# The fast loop leaves these to the full suite: reading the damaged dataset imports TensorFlow
# (6-10 s), the decoded-copy variable is also checked in process (tests/test_data.py), and the
# others take the same path as a case kept (out-of-range, workdir-is-a-file).
SLOW_BAD_INPUT = ('dataset-damaged', 'bad-decoded-copy-variable', 'more-tasks-than-max',
                  'workdir-not-writable')


@pytest.mark.parametrize('case,extra,message', [
    pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW_BAD_INPUT else [])
    for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(folders, tmp_path, case, extra, message):
  workdir = tmp_path / 'run'
  (workdir / 'kept').mkdir(parents=True)  # an existing workdir must stay as it was
  before = listing(workdir)
  args = ['--config=configs/permuted_mnist.py:small', *TINY, f'--config.data_dir={folders["data"]}',
          f'--workdir={workdir}', *extra(folders)]
  if 'NO_CONFIG' in args:
    args = [a for a in args if not a.startswith('--config') and a != 'NO_CONFIG']
  if 'NO_WORKDIR' in args:
    args = [a for a in args if not a.startswith('--workdir') and a != 'NO_WORKDIR']
  variables = dict(a[len('ENV:'):].split('=', 1) for a in args if a.startswith('ENV:'))
  before_jax = case.startswith(('non-numeric', 'unknown', 'misspelt', 'no-', 'empty',
                                'missing-config', 'extra', 'out-of-range', 'more-tasks'))
  refused_first = before_jax or case == 'bad-backend-variable'
  if before_jax:  # refused in a fraction of a second, before JAX loads: here it cannot
    variables['PYTHONPATH'] = os.pathsep.join([str(folders['no_jax']), str(ROOT)])
  home = tmp_path / 'home'  # where the CPU kernels would be built (~/.cache/hypermask_jax)
  variables['HOME'] = str(home)  # a first run's: the kernels not built yet
  result = cli(*[a for a in args if not a.startswith('ENV:')], variables=variables)
  assert result.returncode == 2, (case, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = error_lines(result.stderr)
  assert len(lines) == 1, result.stderr[-3000:]  # printed once
  assert message in lines[0], lines[0]
  assert listing(workdir) == before
  if refused_first:
    assert result.stderr.strip() == lines[0]  # refused before anything else ran
  # and before the CPU kernels were built (13-15 s on 2 CPU cores, at a first run)
  assert not (home / '.cache' / 'hypermask_jax' / 'kernels').exists()


@pytest.mark.slow
def test_a_refused_start_leaves_a_workdir_the_corrected_command_can_use(folders, tmp_path):
  workdir = tmp_path / 'new'
  refused = tiny_run(workdir, folders['data'], '--config.batch_size=5000')
  assert refused.returncode == 2 and not workdir.exists(), refused.stderr[-2000:]
  done = tiny_run(workdir, folders['data'])
  assert done.returncode == 0, done.stderr[-3000:]
  assert (workdir / 'summary.json').exists()


@pytest.mark.slow
def test_a_second_process_loads_the_programs_from_the_compilation_cache(folders, tmp_path):
  """Everything but JAX's eager operations is kept: the training step, and also the state's
  initialisation, the evaluation and the chunk end (0.1-2 s to compile each on a 2-core CPU)."""
  cache = tmp_path / 'compiled'
  hits, summaries = [], []
  for run in ('first', 'second'):
    result = cli('--config=configs/permuted_mnist.py:small', *TINY,
                 f'--config.data_dir={folders["data"]}', f'--workdir={tmp_path / run}',
                 f'--config.compilation_cache={cache}', variables={'JAX_LOG_COMPILES': '1'})
    assert result.returncode == 0, result.stderr[-3000:]
    hits.append(set(re.findall(r"Persistent compilation cache hit for '(\w+)'", result.stderr)))
    summaries.append(json.loads((tmp_path / run / 'summary.json').read_text()))
  assert not hits[0]
  assert {'jit__init_state', 'jit__train_steps', 'jit__evaluate', 'jit__end_chunk'} <= hits[1]
  assert summaries[1]['accuracy_matrix'] == summaries[0]['accuracy_matrix']


@pytest.mark.slow
def test_relative_workdir_and_data_dir_from_another_folder(folders, tmp_path):
  """The README's example with relative paths, run from some current folder."""
  cwd = tmp_path / 'somewhere'
  cwd.mkdir()
  data_dir = os.path.relpath(folders['data'], cwd)
  result = tiny_run('runs/first', data_dir, config=str(ROOT / 'configs/permuted_mnist.py:small'),
                    cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = cwd / 'runs' / 'first'
  summary = json.loads((workdir / 'summary.json').read_text())
  config = json.loads((workdir / 'config.json').read_text())
  assert config['data_dir'] == str(folders['data'])  # resolved once, absolute
  steps = [p.name for p in (workdir / 'checkpoints').iterdir()]
  assert steps == ['40']  # a finished run keeps only its final checkpoint
  manager = ocp.CheckpointManager(workdir / 'checkpoints', item_names=('state', 'progress'))
  restored = manager.restore(40, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                         progress=ocp.args.JsonRestore()))
  manager.close()
  assert restored.progress['accuracy'] == [summary['accuracy_matrix']]  # [run][task][task]
  assert int(restored.state['task']) == 1 and int(restored.state['step']) == 20
  assert not (workdir / '.lock').exists()

  # Run again, with only settings that do not change results changed: finished, results shown.
  again = tiny_run('runs/first', '/no/such/data_dir', '--config.checkpoint_every_steps=7',
                   '--config.download=False', config=str(ROOT / 'configs/permuted_mnist.py:small'),
                   cwd=cwd)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'already holds the finished results' in again.stderr
  final = ' '.join(f'{a:.2f}' for a in summary['accuracy_matrix'][-1])
  assert f'final test accuracy (%) of tasks 1-2: {final}' in again.stderr
  assert f"done: mean accuracy {summary['mean_accuracy']:.2f}%" in again.stderr

  # Resuming with a change of array shapes is refused, even with --allow_config_change.
  (workdir / 'summary.json').unlink()  # as if the run had been stopped after its last task
  before = listing(workdir)
  refused = tiny_run('runs/first', data_dir, '--config.hnet_hidden=(9,)', '--config.beta=0.1',
                     '--allow_config_change', config=str(ROOT / 'configs/permuted_mnist.py:small'),
                     cwd=cwd)
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert error_lines(refused.stderr) == [
      'error: --allow_config_change cannot resume with hnet_hidden changed: it changes the '
      'shapes of the saved train state; keep the saved value, or use another --workdir']
  assert listing(workdir) == before  # no checkpoint moved aside as unreadable, nothing rewritten


def test_help_lists_configs_variants_fields_and_exit_statuses():
  result = cli('--help')
  assert result.returncode == 0, result.stderr
  for text in ('configs/permuted_mnist.py', 'configs/cifar100_resnet20.py', 'published, small',
               'data_dir', 'steps_per_task', 'max_call_seconds', '--workdir',
               '--allow_config_change', '0   finished', '2   bad input',
               f'{preemption.EXIT_PREEMPTED}  stopped by SIGTERM or SIGINT'):
    assert text in result.stdout, text


def test_a_second_unreadable_checkpoint_at_the_same_step_gets_its_own_name(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  state = {'w': jnp.arange(1000.0)}
  for attempt in range(2):
    checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
    checkpointer.save(5, state, {'attempt': attempt})
    checkpointer.wait()
    for f in (tmp_path / 'checkpoints' / '5').rglob('*'):
      if f.is_file() and f.stat().st_size > 100:
        f.write_bytes(f.read_bytes()[:50])  # damage every array file
    assert checkpointer.restore_latest(state) is None
    checkpointer.close()
  aside = sorted(p.name for p in (tmp_path / 'checkpoints_unreadable').iterdir())
  assert aside == ['5', '5.1']


def test_a_checkpoint_of_another_state_layout_is_refused_and_kept(tmp_path):
  """As one saved by an older version (HNET's memory before chunked_distances) would be."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  checkpointer = checkpoints.Checkpointer(tmp_path, keep=3)
  checkpointer.save(5, {'memory': {'hnet_outputs': jnp.zeros((3, 7))}}, {})
  checkpointer.wait()
  template = {'memory': {'hidden': jnp.zeros((3, 2, 4)), 'hnet': jnp.zeros((5,))}}
  with pytest.raises(checkpoints.CheckpointMismatch, match=(
      r'checkpoint 5 in .* holds a train state of other shapes than this config makes '
      r'\(memory/hidden: saved nothing, this config \[3, 2, 4\]\); resume with the config '
      r'\(and the hypermask_jax version\) it was saved with')):
    checkpointer.restore_latest(template)
  checkpointer.close()
  assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == ['5']  # nothing moved aside


LONG = ['--config.steps_per_task=1000000', '--config.log_every_steps=1000000']


def start(workdir, data_dir, *extra):
  """A tiny run that would take hours, in the background; returns (process, read_until)."""
  proc = subprocess.Popen(
      [sys.executable, '-m', 'hypermask_jax.main', '--config=configs/permuted_mnist.py:small',
       *TINY, *LONG, f'--config.data_dir={data_dir}', f'--workdir={workdir}', *extra],
      cwd=ROOT, env=env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  log = []

  def read_until(text):
    for line in proc.stderr:
      log.append(line)
      if text in line:
        return ''.join(log)
    raise AssertionError(f'{text!r} never came:\n' + ''.join(log)[-3000:])
  return proc, read_until


@pytest.mark.slow
def test_one_writer_per_workdir_and_a_killed_holder_never_blocks(folders, tmp_path):
  workdir = tmp_path / 'run'
  first, read_first = start(workdir, folders['data'], '--config.checkpoint_every_steps=50')
  try:
    read_first('saving checkpoint 50 ')
    second = tiny_run(workdir, folders['data'], *LONG, '--config.checkpoint_every_steps=50')
    assert second.returncode == 2, second.stderr[-2000:]
    assert error_lines(second.stderr) == [
        f'error: {workdir}: in use by another run (host {os.uname().nodename}, pid '
        f'{first.pid}, since ' + error_lines(second.stderr)[0].split(', since ')[1]]
  finally:
    first.kill()  # SIGKILL: no clean-up, the lock file stays behind
    first.wait()
  assert (workdir / '.lock').exists()
  again, read_again = start(workdir, folders['data'], '--config.checkpoint_every_steps=50')
  try:
    read_again('resumed from the checkpoint at task 1/2 step')
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=120) == preemption.EXIT_PREEMPTED
  finally:
    again.kill()


@pytest.mark.slow
def test_a_stop_request_is_honoured_within_seconds_whatever_log_every_steps_is(folders,
                                                                               tmp_path):
  """A million-step chunk: without a bound on a compiled call's wall time the stop would wait
  for all of it."""
  workdir = tmp_path / 'run'
  proc, read_until = start(workdir, folders['data'], '--config.checkpoint_every_steps=1000000')
  try:
    read_until('compiling the training step')
    time.sleep(15)  # calls have grown to their full length by now
    asked = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == preemption.EXIT_PREEMPTED
    waited = time.time() - asked
  finally:
    proc.kill()
  log = proc.stderr.read()
  assert waited < 30, (waited, log[-2000:])
  assert 'preempted: stopped by SIGTERM at task 1 step' in log
  saved = [int(p.name) for p in (workdir / 'checkpoints').iterdir()]
  assert len(saved) == 1 and saved[0] > 100  # the steps done so far are kept
