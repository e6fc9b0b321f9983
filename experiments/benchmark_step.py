"""Prints a config's train-step time at task 1 and task T (T-1 previous tasks), compile and save
times, and the peak memory.

  python experiments/benchmark_step.py --config=configs/permuted_mnist.py
  python experiments/benchmark_step.py --config=configs/permuted_mnist.py --tasks=1,2,4,10
  python experiments/benchmark_step.py --config=configs/split_mnist.py --steps=50
  python experiments/benchmark_step.py --config=configs/cifar100_resnet20.py --steps=5
  python experiments/benchmark_step.py --compare_torch   # also times a PyTorch step, same run

Configs that train by epochs are timed as plain steps (no end-of-epoch
validation, which runs once per epoch); the best-validation snapshot they keep
is a copy of the params, reported beside the peak memory.

The checkpoint figures: how long `save` blocks training (the rest is written
in the background) and how long the whole save takes, and the share of
training time the blocking part costs at the config's checkpoint_every_steps.

Data is synthetic with the benchmark's shapes (timing does not depend on the
pixels), so it runs anywhere. Steps run as the training loop runs them: one
compiled call of `--steps` steps (at most trainer.MAX_STEPS_PER_CALL).

The floors: the bytes a step must move (optimizer: every trained parameter,
its gradient and both Adam moments each read once and written once; the
hypernetwork's forward: its weights read once, its output rows written) over
the memory bandwidth measured in this process just before (a jitted in-place
stream, x * a + b over a 256 MiB float32 array, counting the bytes read and
written); and the floating-point operations of one step, as XLA counts them in
the compiled step with the task fixed (so only the regulariser branch that
task runs counts), plus the CPU kernels' (hypermask_jax/cpu_kernels.cc,
custom calls that XLA does not count: the factored Adam kernel's gradient and
input gradient multiply-adds over the rows in use and Adam's update, the chunk
layer's two backward products, dense Adam's update; counted by hand), over the rate of a 1024 x 1024 float32 matmul (8192 x 8192
on an accelerator, which a smaller one does not fill) measured in this
process. The step can be no faster than the larger of the two; the share is
that floor over the measured step time. The tasks are timed, and the peak
memory read, before the floors are measured: their arrays (256 MiB for the
stream; 0.75 GiB for the accelerator's matmul) would otherwise count in the
peak. The matmul rate is the best case: the thin products of a hypernetwork's
output layer and the convolutions run slower, so a compute-bound step stays
below 100%.
"""

import pathlib
import resource
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import checkpoints
from hypermask_jax import config_checks
from hypermask_jax import config_files
from hypermask_jax import cpu_kernels
from hypermask_jax import environment
from hypermask_jax import errors
from hypermask_jax import factored_adam
from hypermask_jax import trainer as trainer_lib
from hypermask_jax import wide_dense
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods import base
from experiments import shortened_runs
from experiments import step_chunks

config_files.define_flag('configs/permuted_mnist.py', 'Config to time.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per measurement (one compiled chunk).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per task; the best is reported.')
_TASKS = flags.DEFINE_list(
    'tasks', [], 'The tasks to time, numbered from 1 (task t has t - 1 previous tasks); '
    'default: the first and the last.')
_COMPARE_TORCH = flags.DEFINE_bool(
    'compare_torch', False, 'Also time the PyTorch step of experiments/torch_reference.py '
    '(needs `pip install -r requirements-torch.txt`), its repeats alternating with ours, and '
    'print the ratio.')


def time_chunks(trainer, state, data, hp, repeats, torch_chunk=None):
  """(state, the fastest of `repeats` chunks of --steps steps after one untimed chunk, and the
  fastest of `repeats` calls of torch_chunk in seconds per step, or None without it).

  With torch_chunk the two take turns (step_chunks.alternating), so that both
  are timed in the same minutes: on a shared machine the step's speed changes
  from one minute to the next (HNET Permuted MNIST's step at task 1 took
  7.5-8.0 ms in some processes and 8.8-9.6 ms in others minutes apart), and with all
  of one framework's repeats before the other's, one could be timed in a slow
  spell and the other not.
  """
  steps = np.int32(_STEPS.value)
  run = lambda state: trainer.train_steps(state, data, hp, steps)[0]
  state = jax.block_until_ready(run(state))

  def ours():
    nonlocal state
    tic = time.perf_counter()
    state = jax.block_until_ready(run(state))
    return time.perf_counter() - tic
  timers = {'jax': ours, **({'torch': torch_chunk} if torch_chunk else {})}
  times = step_chunks.alternating(timers, repeats)
  return state, min(times['jax']), (min(times['torch']) if torch_chunk else None)


def call_cost(trainer, state, data, hp, repeats, chunk_seconds):
  """(state, a call's fixed cost and a step's time past it in seconds, a call's page faults).

  From the fastest one-step call and the fastest chunk of --steps steps (> 1):
  the step is the chunk's time past the one-step call's, per extra step; the
  fixed cost, the one-step call's time less one step. On CPU it is mostly
  XLA:CPU mapping the chunk's temporaries afresh at every call (the page
  faults, counted over one more one-step call). A run spreads it over its
  calls' steps: as many as take about max_call_seconds / 2 (host_loop.CallPacer).
  """
  one_step = lambda state: trainer.train_steps(state, data, hp, np.int32(1))[0]
  state, seconds = fastest(one_step, state, repeats)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  state = jax.block_until_ready(one_step(state))
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  step = (chunk_seconds - seconds) / (_STEPS.value - 1)
  return state, seconds - step, step, faults


def fastest(fn, x, repeats):
  """(the last result, the fastest of `repeats` timed calls x = fn(x), after one untimed call)."""
  x = jax.block_until_ready(fn(x))
  best = float('inf')
  for _ in range(repeats):
    tic = time.perf_counter()
    x = jax.block_until_ready(fn(x))
    best = min(best, time.perf_counter() - tic)
  return x, best


def stream_bandwidth(megabytes=256, repeats=5, passes=8):
  """Bytes per second of an in-place x * a + b over a float32 array (read and written)."""
  stream = jax.jit(lambda x: jax.lax.fori_loop(0, passes, lambda _, x: x * 0.999 + 1e-3, x),
                   donate_argnums=0)
  x, seconds = fastest(stream, jnp.ones(megabytes * 2**20 // 4, jnp.float32), repeats)
  return 2 * x.nbytes * passes / seconds


def matmul_rate(size=1024, repeats=5, passes=8):
  """Floating-point operations per second of a chain of float32 [size, size] matmuls."""
  w = jax.random.normal(jax.random.key(0), (size, size)) / np.sqrt(size)
  chain = jax.jit(lambda x: jax.lax.fori_loop(0, passes, lambda _, x: x @ w, x))
  return 2 * size**3 * passes / fastest(chain, w, repeats)[1]


def step_flops(trainer, state, data, hp, task):
  """XLA's count of the floating-point operations of one train step at `task`, plus the CPU
  kernels' (factored_adam.flops, cpu_kernels.flops), which XLA does not count.

  XLA's cost analysis counts a branch point as its largest branch, so the
  step is compiled here with only the branches that `task` runs: the
  regulariser's row count, and the row bucket of HMLP's output layer.
  """
  method, sizes, traced = trainer.method, trainer.method.row_sizes, trainer.traces['train_step']
  method.row_sizes = (next((k for k in sizes if k >= task), sizes[-1]),)
  buckets = wide_dense.live_row_buckets
  live = 1 + min(task, sizes[-1])
  wide_dense.live_row_buckets = lambda rows: (min(b for b in buckets(rows) if b >= min(live, rows)),)
  try:
    step = trainer._runs(trainer._train_step, trainer_lib.STATE_AXES,  # pylint: disable=protected-access
                         trainer_lib.data_axes(data), 0, out_axes=(trainer_lib.STATE_AXES, 0))
    compiled = jax.jit(step).lower(state, data, hp).compile()
  finally:
    method.row_sizes, wide_dense.live_row_buckets = sizes, buckets
    trainer.traces['train_step'] = traced  # the traces printed are those of the training program
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']
  hlo = compiled.as_text()
  if factored_adam.TARGET in hlo:
    kernel = state.params['hnet']['out']['kernel']  # [runs, m, n]
    flops += kernel.shape[0] * factored_adam.flops(*kernel.shape[1:], live)
  return flops + cpu_kernels.flops(hlo)


def step_bytes(config, method, params, task):
  """(optimizer bytes, hypernetwork-forward bytes) a train step at `task` must move at least."""
  optimizer = 8 * 4 * base.count(params)  # param, gradient, 2 moments: read once, written once
  if 'hnet' not in params:  # no hypernetwork: the target's weights are read once
    return optimizer, 4 * base.count(params)
  # The outputs of the current task and of those regularised, but a chunked HNET's old tasks'
  # outputs: with many old tasks it needs none (hypernet.chunked_distances).
  chunked_hnet = config.method == 'hnet' and config.chunk_size > 0
  rows = 1 + (0 if chunked_hnet else min(task, config.reg_subset or task))
  return optimizer, 4 * base.count(params['hnet']) + 4 * rows * method.layout.size


def tasks_to_time(num_tasks):
  """The 0-based task indices --tasks names (default: the first and the last), in order."""
  if not _TASKS.value:
    return sorted({0, num_tasks - 1})
  if not all(t.isdigit() and 1 <= int(t) <= num_tasks for t in _TASKS.value):
    raise errors.BadInput(f'--tasks must list task numbers in [1, {num_tasks}], e.g. '
                          f'--tasks=1,2,{num_tasks}; got {",".join(_TASKS.value)}')
  return sorted({int(t) - 1 for t in _TASKS.value})


def main(argv):
  del argv
  if not 1 <= _STEPS.value <= trainer_lib.MAX_STEPS_PER_CALL:
    raise errors.BadInput(f'--steps must be in [1, {trainer_lib.MAX_STEPS_PER_CALL}]')
  if _REPEATS.value < 1:
    raise errors.BadInput(f'--repeats must be at least 1; got {_REPEATS.value}')
  config = flags.FLAGS.config
  timed_tasks = tasks_to_time(config.num_tasks)
  snapshot = config.selection == 'best_val'
  # Calls per task: 1 + repeats chunks, then 2 + repeats one-step calls (call_cost).
  config = config_checks.resolve(
      shortened_runs.for_step_timing(config, _STEPS.value, 2 * _REPEATS.value + 2))
  data = tasks.synthetic_task_set(config)
  method = METHODS[config.method](config, data.input_shape, data.num_classes)
  trainer = trainer_lib.Trainer(config, method)
  state, data, hp = trainer.fresh(data, [config])
  params = jax.tree.map(lambda x: x[0], state.params)  # the one run's
  counts = method.param_counts(params)
  target = tuple(config.target_hidden) if config.target == 'mlp' else config.target
  print(f'config: {config.dataset}, {config.method}, target {target}, '
        f'hnet {tuple(config.hnet_hidden)}, batch {config.batch_size}, max_tasks {config.max_tasks}')
  print(f'parameters: {base.describe_counts(counts)}')
  print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{len(jax.devices())} device(s)')

  if _COMPARE_TORCH.value:
    try:
      from experiments import torch_reference  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise errors.BadInput(f'--compare_torch needs PyTorch and hypnettorch ({e}): '
                            'pip install -r requirements-torch.txt')
  state = trainer.begin_task(state, 0, hp)
  tic = time.perf_counter()
  compiled = trainer.train_steps.lower(state, data, hp, np.int32(_STEPS.value)).compile()
  line = f'compile time of the train chunk: {time.perf_counter() - tic:.1f} s'
  analysis = compiled.memory_analysis()
  if analysis is not None:  # backends without XLA's memory analysis return None
    line += f'; its temporaries (XLA memory analysis): {analysis.temp_size_in_bytes / 2**30:.2f} GiB'
  print(line)
  timed = []
  for task in timed_tasks:
    state = trainer.begin_task(state, task, hp)
    torch_chunk = (torch_reference.step_timer(config, data.input_shape, data.num_classes, task,
                                              _STEPS.value) if _COMPARE_TORCH.value else None)
    state, seconds, torch_step = time_chunks(trainer, state, data, hp, _REPEATS.value,
                                             torch_chunk)
    del torch_chunk  # PyTorch's model: freed before the one-step calls and the next task
    call = None
    if _STEPS.value > 1:
      state, *call = call_cost(trainer, state, data, hp, _REPEATS.value, seconds)
    timed.append((task, seconds / _STEPS.value, torch_step, call))
  peak, kind = environment.peak_memory()  # before the floors' measurements add their arrays
  for task, step, torch_step, call in timed:
    line = f'task {task + 1:3d} ({task:3d} previous tasks): jax {1e3 * step:9.2f} ms/step'
    if call:
      fixed, marginal, faults = call
      line += (f' (a call: {1e3 * fixed:.1f} ms, {faults} page faults, + '
               f'{1e3 * marginal:.2f} ms per step)')
    bandwidth = stream_bandwidth()
    optimizer_bytes, forward_bytes = step_bytes(config, method, params, task)
    memory_floor = (optimizer_bytes + forward_bytes) / bandwidth
    flops = step_flops(trainer, state, data, hp, task)
    rate = matmul_rate(1024 if jax.default_backend() == 'cpu' else 8192)
    compute_floor = flops / rate
    line += (f' | moves >= {(optimizer_bytes + forward_bytes) / 1e9:.3f} GB (optimizer '
             f'{optimizer_bytes / 1e9:.3f}, hypernetwork forward {forward_bytes / 1e9:.3f}) at '
             f'{bandwidth / 1e9:.1f} GB/s: {1e3 * memory_floor:.2f} ms | computes '
             f'{flops / 1e9:.3g} GFLOP at {rate / 1e9:.0f} GFLOP/s: {1e3 * compute_floor:.2f} ms'
             f' | floor {1e3 * max(memory_floor, compute_floor):.2f} ms, share '
             f'{100 * max(memory_floor, compute_floor) / step:.0f}%')
    if torch_step is not None:
      line += f' | torch {1e3 * torch_step:9.2f} ms/step | jax is {torch_step / step:.2f}x faster'
    print(line)
  print(f'traces: {dict(trainer.traces)}')
  if _COMPARE_TORCH.value and kind.startswith('process'):
    kind += ', PyTorch included: measure without --compare_torch'
  params_gib = sum(x.nbytes for x in jax.tree.leaves(state.params)) / 2**30
  print(f'peak memory: {peak / 2**30:.2f} GiB ({kind}); train state '
        f'{sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30:.2f} GiB'
        + (f'; the best-validation snapshot adds {params_gib:.2f} GiB' if snapshot else ''))
  report_checkpoint_cost(trainer, state, data, hp, seconds)


def report_checkpoint_cost(trainer, state, data, hp, chunk_seconds):
  """Times an asynchronous save and how much it slows the training that runs beside it.

  Training continues while the save is written (as in a run), so the cost is
  the save's blocking part plus whatever the background writer takes from the
  training chunks that overlap it (they share the CPU cores).
  """
  config = trainer.config
  size = sum(x.nbytes for x in jax.tree.leaves(state))
  with tempfile.TemporaryDirectory() as workdir:
    checkpointer = checkpoints.Checkpointer(workdir, keep=2)
    tic = time.perf_counter()
    checkpointer.save(0, state, {'step': 0})
    blocking = time.perf_counter() - tic
    chunks = 0
    while checkpointer.manager.is_saving_in_progress():
      state, _ = trainer.train_steps(state, data, hp, np.int32(_STEPS.value))
      jax.block_until_ready(state)
      chunks += 1
    total = time.perf_counter() - tic
    checkpointer.close()
  slowdown = max(total - chunks * chunk_seconds, blocking)
  interval = config.checkpoint_every_steps / _STEPS.value * chunk_seconds
  print(f'checkpoint: {size / 2**30:.2f} GiB; save blocks training {blocking:.2f} s and is on '
        f'disk after {total:.1f} s ({chunks} chunks trained meanwhile); it costs training '
        f'{slowdown:.2f} s, {100 * slowdown / interval:.2f}% of the {interval:.0f} s between '
        f'saves at checkpoint_every_steps={config.checkpoint_every_steps}')


if __name__ == '__main__':
  errors.run_script(main)
