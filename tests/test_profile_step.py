"""profile_step lists the compiled train step's ops, slowest first, from a traced call."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def profile(*args):
  return subprocess.run(
      [sys.executable, 'experiments/profile_step.py', '--config=configs/split_mnist.py:small',
       *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_lists_the_compiled_programs_ops_by_their_time_in_the_trace(tmp_path):
  """Each row is an instruction of the compiled program (name, opcode and shape as its text
  has them), none a branch point; the rows run slowest first, each share is its time over the
  traced step's; the trace and the program stay in --trace_dir."""
  run = profile('--task=2', '--steps=2', '--top=8', f'--trace_dir={tmp_path}')
  assert run.returncode == 0, run.stderr
  head = re.search(r'task 2, a call of 2 steps: ([\d.]+) ms/step untraced, ([\d.]+) under the '
                   r'profiler; its ops take ([\d.]+) ms/step in all \((\d+) ops', run.stdout)
  assert head, run.stdout
  traced, listed, count = float(head.group(2)), float(head.group(3)), int(head.group(4))
  rows = re.findall(r'^ +([\d.]+) +([\d.]+)%  (\S+) +(\S+(?: \(\w+\))?) +(\S+) .*$', run.stdout,
                    re.M)
  assert len(rows) == 8 < count, run.stdout
  times = [float(ms) for ms, *_ in rows]
  assert times == sorted(times, reverse=True) and times[-1] > 0
  assert sum(times) <= listed + 0.01
  hlo = (tmp_path / 'train_chunk.hlo.txt').read_text()
  for ms, share, name, opcode, shape in rows:
    assert float(share) == pytest.approx(100 * float(ms) / traced, abs=0.1)
    line = re.search(rf'%{re.escape(name)} = (\S+) {opcode.split()[0]}\(', hlo)
    assert line and re.sub(r'\{[^}]*\}', '', line.group(1)) == shape, name
    assert opcode.split()[0] not in ('while', 'conditional', 'call')
  assert list(tmp_path.glob('**/*.trace.json.gz'))
  # Eigen's dots can end their events before their work: said under the list when it has one.
  assert ('run by Eigen' in run.stdout) == any(opcode == 'dot' for *_, opcode, _ in rows)
  # A custom call (the CPU Adam kernel, by default on CPU) has no event: said when there is one.
  assert ('holds a custom call' in run.stdout) == (' custom-call(' in hlo)


def test_refuses_a_task_outside_the_config():
  run = profile('--task=6')
  assert run.returncode == 2
  assert run.stderr.strip() == 'error: --task must be in [1, 5]; got 6'


def test_refuses_a_trace_dir_it_cannot_write(tmp_path):
  (tmp_path / 'file').write_text('')
  run = profile(f'--trace_dir={tmp_path / "file" / "trace"}')
  assert run.returncode == 2
  assert run.stderr.startswith('error: --trace_dir must name a folder it can write; got ')
  assert len(run.stderr.strip().splitlines()) == 1


# The scripts' --config flags take the command line's checks (errors.run_script): ml_collections
# raised the first two as tracebacks, at import and at the config's first use.
@pytest.mark.parametrize('args,message', [
    (['--config.num_task=3'], '--config.num_task: no such config field (did you mean '
                              '--config.num_tasks?)'),
    (['--config=configs/nope.py'], "--config=configs/nope.py: no such file 'configs/nope.py'"),
    (['--config.sweep.seed=1,2'], '--config.sweep.seed: no such config field'),
])
def test_a_bad_config_flag_is_one_line_and_exit_2(args, message):
  run = subprocess.run([sys.executable, 'experiments/profile_step.py', *args],
                       capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 2
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {message}'), run.stderr[-2000:]
