"""Prints where a config's train step spends its time: the compiled program's ops, slowest first.

  python experiments/profile_step.py --config=configs/permuted_mnist.py
  python experiments/profile_step.py --config=configs/split_mnist.py --task=2 --steps=20
  python experiments/profile_step.py --config=configs/permuted_mnist.py --trace_dir=/tmp/pm

Builds the step as `benchmark_step.py` times it (synthetic data of the
config's shapes, the state passed through each task's start up to --task),
runs one compiled call of --steps steps untraced and one under
`jax.profiler`, and lists the ops of the compiled program (XLA's fused
kernels, its dots and copies) by their time per step in the traced call,
each with its opcode, its output's shape and the JAX operation it came from
(the HLO's `op_name`, which names the layer or the function; for an op
without one, often a dot, the shapes of its operands). The branch
points (`while`, `conditional`) are left out, since their time is that of
the ops inside them, which are listed themselves. On CPU the trace holds one
event per op and call; on other backends it holds what that backend's
profiler records, and the ops whose names match the program's are listed.

On CPU, a dot that XLA runs with Eigen (opcode `dot`; YNNPACK's are
`fusion (Custom)`) may hand its work to Eigen's threads and end its event
before the work does. Its listed time is then too small, and its work shows
only in the step's time beyond the ops' total. The HNET steps, compiled
without YNNPACK (`hypermask_jax/backend.py`), have most such dots: on HNET
Permuted MNIST at task 1 the chunk layer's forward, [25, 25] x [25, 78000],
was listed at 0.04 ms per step, where the same product alone took
0.30-0.43 ms. The script says so under its list when the list holds a `dot`.
XLA:CPU records no event for a custom call: the C++ kernels of
`hypermask_jax/cpu_kernels.cc` (on CPU, HyperMask's Adam update of the
hypernetwork's output kernel, Adam over the other large parameters, the
chunk layer's backward pass) are not listed, and their time shows only in
the step's; the script says so when the program holds one.

--trace_dir keeps the trace (for TensorBoard's profile plugin or Perfetto)
and the compiled program's text (`train_chunk.hlo.txt`) in that folder.
"""

import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax

from experiments import shortened_runs
from experiments import step_chunks
from hypermask_jax import config_files
from hypermask_jax import errors

config_files.define_flag('configs/permuted_mnist.py', 'Config to profile.')
_TASK = flags.DEFINE_integer('task', 1, 'The task to profile, numbered from 1.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Steps in the profiled call (one compiled chunk).')
_TOP = flags.DEFINE_integer('top', 25, 'How many ops to list, slowest first.')
_TRACE_DIR = flags.DEFINE_string('trace_dir', None, 'Keep the trace and the compiled program '
                                 'here (default: a temporary folder, removed).')

BRANCH_POINTS = ('while', 'conditional', 'call')


def hlo_ops(hlo_text):
  """{instruction name: (opcode, output shape, where it came from)} of a compiled program's text.

  Shapes are shown without their layout. Where it came from: the JAX op_name
  in the instruction's metadata, or else (XLA's dots often carry none) its
  operands' shapes.
  """
  lines = re.findall(r'^\s*(?:ROOT )?%(\S+) = (\S+?) ([\w-]+)\((.*)$', hlo_text, re.M)
  shapes = {name: re.sub(r'\{[^}]*\}', '', shape) for name, shape, _, _ in lines}
  ops = {}
  for name, _, opcode, rest in lines:
    kind = re.search(r'kind=k(\w+)', rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    operands = re.findall(r'%(\S+?)[,)]', rest.split(')', 1)[0] + ')')
    origin = (short_op_name(op_name.group(1)) if op_name else
              'of ' + ', '.join(shapes.get(o, o) for o in operands))
    ops[name] = (f'{opcode} ({kind.group(1)})' if kind else opcode, shapes[name], origin)
  return ops


def trace_durations(trace_dir):
  """{event name: total microseconds} of the complete events in the trace's JSON."""
  files = sorted(pathlib.Path(trace_dir).glob('**/*.trace.json.gz'))
  if not files:
    raise RuntimeError(f'jax.profiler wrote no *.trace.json.gz under {trace_dir}')
  totals = collections.Counter()
  with gzip.open(files[-1]) as f:
    for event in json.load(f)['traceEvents']:
      if event.get('ph') == 'X' and 'dur' in event:
        totals[event['name']] += event['dur']
  return totals


def short_op_name(op_name):
  """The JAX op_name without the training loop's own prefix (the jit, the loop, its body)."""
  return re.sub(r'^jit\([^)]*\)/(while/body/)?', '', op_name)


def profile(chunk, steps, trace_dir):
  """(ms per step untraced, ms per step traced, [(ms per step, name, hlo_ops' entry)], the
  compiled program's text)."""
  tic = time.perf_counter()
  chunk.state = jax.block_until_ready(chunk.run(chunk.state))
  untraced = 1e3 * (time.perf_counter() - tic) / steps
  with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
    tic = time.perf_counter()
    chunk.state = jax.block_until_ready(chunk.run(chunk.state))
    traced = 1e3 * (time.perf_counter() - tic) / steps
  hlo = chunk.hlo()
  ops = hlo_ops(hlo)
  rows = [(total / 1e3 / steps, name, ops[name])
          for name, total in trace_durations(trace_dir).items()
          if name in ops and ops[name][0].split()[0] not in BRANCH_POINTS]
  return untraced, traced, sorted(rows, reverse=True), hlo


def main(argv):
  del argv
  config = flags.FLAGS.config
  if not 1 <= _TASK.value <= config.num_tasks:
    raise errors.BadInput(f'--task must be in [1, {config.num_tasks}]; got {_TASK.value}')
  if _STEPS.value < 1 or _TOP.value < 1:
    raise errors.BadInput(f'--steps and --top must be at least 1; got {_STEPS.value} and '
                          f'{_TOP.value}')
  if _TRACE_DIR.value:
    try:
      pathlib.Path(_TRACE_DIR.value).mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise errors.BadInput(f'--trace_dir must name a folder it can write; got '
                            f'{_TRACE_DIR.value!r} ({e.strerror})') from None
  shortened_runs.for_step_timing(config, _STEPS.value, 2)
  chunk = step_chunks.build(step_chunks.THIS_CHECKOUT, config, _TASK.value - 1, _STEPS.value)
  with tempfile.TemporaryDirectory() as scratch:
    trace_dir = pathlib.Path(_TRACE_DIR.value or scratch)
    untraced, traced, rows, hlo = profile(chunk, _STEPS.value, trace_dir)
    if _TRACE_DIR.value:
      (trace_dir / 'train_chunk.hlo.txt').write_text(hlo)
  listed = sum(ms for ms, _, _ in rows)
  print(f'task {_TASK.value}, a call of {_STEPS.value} steps: {untraced:.2f} ms/step untraced, '
        f'{traced:.2f} under the profiler; its ops take {listed:.2f} ms/step in all '
        f'({len(rows)} ops; two threads can run two at once, and the step waits between some)')
  print(f'{"ms/step":>9s} {"share":>6s}  {"op":32s} {"opcode":22s} {"shape":24s} from')
  for ms, name, (opcode, shape, origin) in rows[:_TOP.value]:
    print(f'{ms:9.3f} {100 * ms / traced:5.1f}%  {name:32s} {opcode:22s} {shape:24s} '
          f'{origin[:80]}')
  if jax.default_backend() == 'cpu' and any(op[0] == 'dot' for _, _, op in rows[:_TOP.value]):
    print('(on CPU a `dot` run by Eigen may end its event before its work, which then counts '
          'only in the step: its time above can be too small)')
  if jax.default_backend() == 'cpu' and ' custom-call(' in hlo:
    print('(the program holds a custom call, such as the CPU kernels of '
          'hypermask_jax/cpu_kernels.cc; the trace has no event for it, so its time counts '
          'only in the step)')
  if _TRACE_DIR.value:
    print(f'trace and compiled program in {trace_dir}')


if __name__ == '__main__':
  errors.run_script(main)
