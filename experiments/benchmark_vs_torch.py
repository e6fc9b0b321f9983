"""Shortened runs of the published configs in hypermask_jax and in PyTorch (hypnettorch), one
after the other on the same machine, each framework in its own process; prints a table and
writes it as JSON.

  pip install -r requirements-torch.txt
  python experiments/benchmark_vs_torch.py                         # every published config
  python experiments/benchmark_vs_torch.py --configs=split_mnist --tasks=3 --steps=200

Each run trains `--tasks` tasks of `--steps` steps (configs trained by epochs:
whole epochs covering `--steps`) with the config's published shapes (the
hypernetwork keeps its max_tasks embeddings and, for a full hypernetwork,
regularises every previous-task row as in the whole run), validates every
`log_every_steps` steps (or epoch) and after each task evaluates every task
seen so far on its test split, as both reference codes do. Data is synthetic
with the real datasets' sizes and shapes (timing does not depend on pixels).

- hypermask_jax: `train.train_and_evaluate(config, workdir)` in a temporary
  workdir (its end-of-task checkpoints included, no TensorBoard events), the
  data loader pointed at the synthetic arrays.
- PyTorch: experiments/torch_reference.py (hypnettorch's HMLP / ChunkedHMLP,
  its MLP, ResNet and ZenkeNet targets and its regulariser helpers) in a
  training loop with the same schedule; batches preprocessed with batched
  torch ops.

Before the runs, hypermask_jax's C++ kernels are built for this CPU (`python -m
hypermask_jax.cpu_kernels`, once per machine, as an install step would); its line is printed
first and kept in the JSON, and the table does not count it.

Columns: wall time of the whole run; training steps/s (hypermask_jax: the
compiling call excluded; in both, the best-validation checks every
`selection_every_steps` steps count as training time, since hypermask_jax
runs them inside its compiled training calls); the wall time of the first
and of the last task (training and evaluation; the first includes
hypermask_jax's compilation); peak memory (on the CPU the process's peak
resident set, on a GPU the framework's peak allocation there), read in each
framework's own process, so neither counts the other; ratio = PyTorch time /
hypermask_jax time (> 1: hypermask_jax is faster).
"""

import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script

from absl import flags
import numpy as np

from experiments.shortened_runs import CONFIGS
from experiments.shortened_runs import shortened_config
from experiments.shortened_runs import with_steps
from hypermask_jax import errors

_CONFIGS = flags.DEFINE_list('configs', list(CONFIGS), f'Published configs to run: {CONFIGS}.')
_TASKS = flags.DEFINE_integer('tasks', 3, 'Tasks per run.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Training steps per task.')
_OUT = flags.DEFINE_string('out', 'benchmark_vs_torch.json', 'Where to write the table (JSON).')
_FRAMEWORKS = flags.DEFINE_list('frameworks', ['jax', 'torch'], 'Which frameworks to run.')
_WORKER = flags.DEFINE_string('worker', '', 'Internal: run one framework on one config.')
RESULT = 'RESULT '


def synthetic_arrays(dataset):
  """((train images, labels), (test images, labels)): uint8 NHWC, the real dataset's sizes."""
  rs = np.random.RandomState(0)
  if dataset == 'split_cifar100':
    make = lambda n: (rs.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rs.permutation(np.arange(n, dtype=np.int32) % 100))
    return make(50000), make(10000)
  make = lambda n: (rs.randint(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                    rs.randint(0, 10, n).astype(np.int32))
  return make(60000), make(10000)


def run_jax(config):
  """Runs train_and_evaluate on the synthetic arrays; returns the timings."""
  from hypermask_jax import devices  # pylint: disable=g-import-not-at-top
  from hypermask_jax import tensorboard  # pylint: disable=g-import-not-at-top
  from hypermask_jax import train  # pylint: disable=g-import-not-at-top
  from hypermask_jax.data import tasks  # pylint: disable=g-import-not-at-top
  # No TensorBoard events: the PyTorch loop writes none, and tensorboardX imports torch,
  # whose memory would count in this process's peak.
  tensorboard.Board = lambda workdir: devices.Discard()
  train_arrays, test_arrays = synthetic_arrays(config.dataset)
  builders = {'permuted_mnist': lambda c: tasks.permuted_mnist(train_arrays, test_arrays,
                                                               c.num_tasks, c.seed,
                                                               c.data_protocol),
              'split_mnist': lambda c: tasks.split_mnist(train_arrays, test_arrays, c.num_tasks,
                                                         c.data_protocol),
              'split_cifar100': lambda c: tasks.split_cifar100(train_arrays, test_arrays,
                                                               c.num_tasks)}
  tasks.load_task_set = lambda c: builders[c.dataset](c)
  task_ends = []

  class TaskEnds(logging.Handler):
    def emit(self, record):
      if record.getMessage().startswith('after task'):
        task_ends.append(record.created)

  logging.getLogger('absl').addHandler(TaskEnds())
  start = time.time()
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.train_and_evaluate(config, workdir)
  return {'wall': time.time() - start, 'steps_per_sec': summary['train_steps_per_sec'],
          'task_seconds': list(np.diff([start, *task_ends]))}


def torch_split(config, arrays):
  """Per task: (train, val or None, test) as (images, labels, permutation or None), as tasks.py
  splits them under the config's data protocol."""
  from hypermask_jax.data import tasks  # pylint: disable=g-import-not-at-top
  (x, y), (x_test, y_test) = arrays
  dataset, protocol = config.dataset, config.data_protocol
  if dataset == 'permuted_mnist':
    val = tasks.VALIDATION_SIZES[protocol][0]
    return [((x[val:], y[val:], p), (x[:val], y[:val], p) if val else None, (x_test, y_test, p))
            for p in tasks.permutations(config.num_tasks, config.seed, protocol)]
  classes, val = ((2, tasks.VALIDATION_SIZES[protocol][1]) if dataset == 'split_mnist'
                  else (10, 500))
  out = []
  for task in range(config.num_tasks):
    first = task * classes
    pick = lambda xs, ys: (xs[(ys >= first) & (ys < first + classes)],
                           ys[(ys >= first) & (ys < first + classes)] - first)
    xs, ys = pick(x, y)
    out.append(((xs[val:], ys[val:], None), (xs[:val], ys[:val], None) if val else None,
                (*pick(x_test, y_test), None)))
  return out


def torch_inputs(config, images, perm, rng, train):
  """uint8 NHWC images -> the float inputs hypnettorch's networks take (flattened HWC)."""
  import torch  # pylint: disable=g-import-not-at-top
  dataset = config.dataset
  x = torch.from_numpy(images).float() / 255.0
  if config.data_protocol == 'hypercl':  # 784 inputs in [0, 1], no augmentation
    x = x.flatten(1)
    return x[:, torch.from_numpy(perm)] if dataset == 'permuted_mnist' else x
  if dataset == 'permuted_mnist':
    x = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2)).flatten(1)
    return x[:, torch.from_numpy(perm)]
  if train:
    if dataset == 'split_cifar100':
      flip = torch.from_numpy(rng.rand(len(x)) < 0.5)
      x = torch.where(flip[:, None, None, None], x.flip(2), x)
    n, h, w, _ = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    corners = rng.randint(0, 9, (n, 2))
    x = torch.stack([padded[i, r:r + h, c:c + w] for i, (r, c) in enumerate(corners)])
  if dataset == 'split_cifar100':
    x = (x - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
  else:
    x = (x - 0.1307) / 0.3081
  return x.flatten(1)


def run_torch(config):
  """The PyTorch training loop with the same schedule as train_and_evaluate; returns timings."""
  import torch  # pylint: disable=g-import-not-at-top
  from experiments import torch_reference  # pylint: disable=g-import-not-at-top
  start = time.time()
  torch.manual_seed(config.seed)
  rng = np.random.RandomState(config.seed)
  splits = torch_split(config, synthetic_arrays(config.dataset))
  input_shape = (len(splits[0][0][2]),) if config.dataset == 'permuted_mnist' else (
      splits[0][0][0].shape[1:])
  classes = 2 if config.dataset == 'split_mnist' else 10
  model = torch_reference.TorchReference(config, input_shape, classes)
  whole_split = config.target == 'resnet20'  # batch statistics: a split is one batch
  chunk = (config.steps_per_task // config.epochs_per_task if config.epochs_per_task
           else min(config.log_every_steps, config.steps_per_task))

  def accuracy(split, task):
    images, labels, perm = split
    x = torch_inputs(config, images, perm, rng, train=False)
    batch = len(labels) if whole_split else config.eval_batch_size
    return model.accuracy(x, torch.from_numpy(labels).long(), task, batch)

  task_seconds, train_seconds = [], 0.0
  for task in range(config.num_tasks):
    tic = time.time()
    model.begin_task(task)
    (images, labels, perm), val, _ = splits[task]
    best = -1.0
    for step in range(config.steps_per_task):
      idx = rng.randint(0, len(labels), config.batch_size)
      step_tic = time.time()
      x = torch_inputs(config, images[idx], perm, rng, train=True)
      model.train_step(x.to(torch_reference.DEVICE),
                       torch.from_numpy(labels[idx]).long().to(torch_reference.DEVICE), step)
      torch_reference.synchronize()
      train_seconds += time.time() - step_tic
      check = (config.selection != 'last' and config.selection_every_steps
               and step % config.selection_every_steps == 0)  # the reference's iteration test
      if val is not None and ((step + 1) % chunk == 0 or step + 1 == config.steps_per_task
                              or check):
        val_tic = time.time()
        val_accuracy = accuracy(val, task)
        if config.selection == 'best_val' and val_accuracy > best:  # keeps a copy, as the reference
          best, _ = val_accuracy, [p.detach().clone() for p in model.parameters()]
        if check:  # hypermask_jax runs these checks inside its timed training calls
          train_seconds += time.time() - val_tic
    for j in range(task + 1):
      accuracy(splits[j][2], j)
    task_seconds.append(time.time() - tic)
  steps = config.num_tasks * config.steps_per_task
  return {'wall': time.time() - start, 'steps_per_sec': steps / train_seconds,
          'task_seconds': task_seconds}


def worker(framework, name):
  config = shortened_config(name, _TASKS.value, _STEPS.value)
  if framework == 'jax':
    from hypermask_jax import environment  # pylint: disable=g-import-not-at-top
    result = run_jax(config)
    result['peak_bytes'] = environment.peak_memory()[0]
  else:
    from experiments import torch_reference  # pylint: disable=g-import-not-at-top
    result = run_torch(with_steps(config))
    result['peak_bytes'] = torch_reference.peak_bytes()
  result.update(steps_per_task=with_steps(config).steps_per_task,
                num_tasks=config.num_tasks)
  print(RESULT + json.dumps(result), flush=True)


def build_kernels():
  """Builds hypermask_jax's C++ kernels for this CPU before the timed runs, as an install step
  would (`python -m hypermask_jax.cpu_kernels`; 8-20 s once per machine, like the compiled
  code PyTorch's wheel brings), so that the first config's first task does not wait for them.
  Prints and returns the command's line."""
  run = subprocess.run([sys.executable, '-m', 'hypermask_jax.cpu_kernels'], capture_output=True,
                       text=True, cwd=REPO,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  line = run.stdout.strip() or (f'hypermask_jax C++ kernels: the command failed (exit '
                                f'{run.returncode}): {run.stderr.strip()[-500:]}')
  print(f'{line} (before the runs; not counted in the table)', flush=True)
  return line


def launch(framework, name):
  """Runs one worker in its own process and returns its result (None if it failed)."""
  cmd = [sys.executable, __file__, f'--worker={framework}', f'--configs={name}',
         f'--tasks={_TASKS.value}', f'--steps={_STEPS.value}']
  run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  lines = [l for l in run.stdout.splitlines() if l.startswith(RESULT)]
  if run.returncode or not lines:
    print(f'{name} / {framework} failed (exit {run.returncode}):\n{run.stderr[-3000:]}')
    return None
  return json.loads(lines[-1][len(RESULT):])


def table(rows):
  head = (f"{'config':24s} {'framework':9s} {'wall s':>8s} {'steps/s':>8s} {'task 1 s':>9s} "
          f"{'last task s':>11s} {'peak GiB':>8s} {'ratio wall':>10s} {'ratio task 1':>12s} "
          f"{'ratio last':>10s}")
  lines = [head, '-' * len(head)]
  for row in rows:
    r = row['result']
    ratio = lambda key: (f"{row['ratio'][key]:.2f}x" if row.get('ratio') else '')
    lines.append(f"{row['config']:24s} {row['framework']:9s} {r['wall']:8.1f} "
                 f"{r['steps_per_sec']:8.2f} {r['task_seconds'][0]:9.1f} "
                 f"{r['task_seconds'][-1]:11.1f} {r['peak_bytes'] / 2**30:8.2f} "
                 f"{ratio('wall'):>10s} {ratio('first_task'):>12s} {ratio('last_task'):>10s}")
  return '\n'.join(lines)


def main(argv):
  del argv
  unknown = set(_CONFIGS.value) - set(CONFIGS)
  if unknown:
    raise errors.BadInput(f'unknown configs {sorted(unknown)}: choose from {CONFIGS}')
  for flag in (_TASKS, _STEPS):
    if flag.value < 1:
      raise errors.BadInput(f'--{flag.name} must be at least 1; got {flag.value}')
  unknown = set(_FRAMEWORKS.value) - {'jax', 'torch'}
  if unknown or not _FRAMEWORKS.value:
    raise errors.BadInput('--frameworks takes jax, torch or both; got '
                          f'{",".join(_FRAMEWORKS.value)!r}')
  out = pathlib.Path(_OUT.value)
  if out.is_dir() or not out.parent.is_dir():  # found now, not after the runs
    raise errors.BadInput(f'--out must be a file in an existing folder; got {_OUT.value}')
  if _WORKER.value:
    return worker(_WORKER.value, _CONFIGS.value[0])
  missing = [m for m in ('torch', 'hypnettorch') if importlib.util.find_spec(m) is None]
  if 'torch' in _FRAMEWORKS.value and missing:
    raise errors.BadInput(f'--frameworks=torch needs {" and ".join(missing)}: pip install -r '
                          'requirements-torch.txt (or --frameworks=jax)')
  kernels = build_kernels() if 'jax' in _FRAMEWORKS.value else None
  rows, failed = [], []
  for name in _CONFIGS.value:
    results = {fw: launch(fw, name) for fw in _FRAMEWORKS.value}
    for fw, result in results.items():
      if result is None:
        failed.append(f'{name} / {fw}')
      else:
        rows.append({'config': name, 'framework': fw, 'result': result})
    if all(results.get(fw) for fw in ('jax', 'torch')):
      jx, tr = results['jax'], results['torch']
      rows[-1]['ratio'] = {'wall': tr['wall'] / jx['wall'],
                           'first_task': tr['task_seconds'][0] / jx['task_seconds'][0],
                           'last_task': tr['task_seconds'][-1] / jx['task_seconds'][-1]}
    added = [row for row in rows if row['config'] == name]
    if added:
      print('\n'.join(table(added).splitlines()[2:]), flush=True)
  print(table(rows))
  out.write_text(json.dumps(
      {'tasks': _TASKS.value, 'steps': _STEPS.value, 'kernels': kernels, 'rows': rows},
      indent=1))
  print(f'written: {_OUT.value}')
  if failed:
    print(f'failed (their errors above): {", ".join(failed)}')
    return 1
  return 0


if __name__ == '__main__':
  errors.run_script(main)
