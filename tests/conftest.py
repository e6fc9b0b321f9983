"""Shared fixtures: real MNIST prepared into a TFDS data_dir, and tiny synthetic task sets."""

import gzip
import os
import pathlib
import shutil

# What the entry points (main.py, data/prepare.py) set for themselves from a shell. Importing
# JAX would set '1' here, which the commands the tests run as subprocesses would inherit, and
# then TensorFlow's warnings would add lines to the one-line errors they check.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import pytest

from configs import permuted_mnist
from hypermask_jax import environment
from hypermask_jax.data import prepare
from hypermask_jax.data import tasks
from hypermask_jax.data import tfds_io

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mnist'

# Where a compiler is found, hypermask_jax/cpu_kernels.cc must build: a failed build fails
# the tests marked with this.
needs_cpu_kernels = pytest.mark.skipif(
    jax.default_backend() != 'cpu' or not shutil.which(os.environ.get('CXX', 'g++')),
    reason='the CPU kernels run on CPU only, and need a C++ compiler')


def pytest_configure(config):
  """Each test process keeps its compiled programs where runs keep theirs (the configs' default
  compilation_cache), from its start: the many tests that build the same tiny program compile it
  once per session, whichever comes first, not only after a whole run has turned the cache on."""
  del config
  environment.use_compilation_cache(permuted_mnist.get_config().compilation_cache)


@pytest.fixture(scope='session')
def mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir holding real MNIST.

  In order: $HYPERMASK_MNIST_DATA_DIR (a prepared data_dir); the IDX files in
  ../shared/data/mnist imported offline; TFDS's own download, where the network
  allows. Without any of them the tests that need real MNIST are skipped (and
  pytest's -ra summary says why).
  """
  if os.environ.get('HYPERMASK_MNIST_DATA_DIR'):
    return os.environ['HYPERMASK_MNIST_DATA_DIR']
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  if SHARED_MNIST.is_dir():
    prepare.prepare('mnist', str(SHARED_MNIST), data_dir)
    return data_dir
  try:
    for split in ('train', 'test'):
      tfds_io.load_split('mnist', split, data_dir, download=True)
  except tfds_io.DatasetUnavailableError as e:
    pytest.skip(f'real MNIST unavailable: no $HYPERMASK_MNIST_DATA_DIR, no IDX files in '
                f'{SHARED_MNIST}, and TFDS could not download it ({e})')
  return data_dir


def synthetic_mnist(n_train=600, n_test=200, seed=0):
  """MNIST-shaped data whose class is written as a bright block at a class-specific place."""
  rs = np.random.RandomState(seed)

  def make(n):
    labels = rs.randint(0, 10, n).astype(np.int32)
    images = rs.randint(0, 40, (n, 28, 28, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
      r, c = divmod(int(y), 5)
      images[i, 4 + 10 * r:10 + 10 * r, 2 + 5 * c:6 + 5 * c] = 255
    return images, labels
  return make(n_train), make(n_test)


def normals(seed, *shapes, dtype=np.float32):
  """Standard normal test inputs, one array per shape, from numpy's generator seeded `seed`.

  jax.random.normal outside a compiled function compiles a program for each
  shape and dtype (the threefry bits and the inverse error function): 0.5-2.8 s
  each on the 2-core AMD EPYC, a fifth of the fast tests' compiling. numpy's
  take microseconds, and the tests need only the numbers.
  """
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(shape).astype(dtype)) for shape in shapes]


def write_idx(path, array):
  """One gzipped IDX file (the MNIST format) of an unsigned-byte array."""
  header = bytes([0, 0, 8, array.ndim]) + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_idx(folder, train, test):
  """The four MNIST IDX files of (images, labels) pairs, as --source_dir expects them."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for split, (x, y) in (('train', train), ('test', test)):
    images_file, labels_file = prepare.MNIST_FILES[split]
    write_idx(folder / images_file, x[..., 0])
    write_idx(folder / labels_file, y)
  return folder


@pytest.fixture(scope='session')
def small_mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir whose 'mnist' is synthetic: 5300 train, 300 test images (seconds to load)."""
  raw = write_mnist_idx(tmp_path_factory.mktemp('raw_mnist'),
                        *synthetic_mnist(n_train=5300, n_test=300, seed=3))
  data_dir = tmp_path_factory.mktemp('small_tfds')
  prepare.prepare('mnist', str(raw), str(data_dir))
  return data_dir


@pytest.fixture
def synthetic_task_set():
  train, test = synthetic_mnist()
  return tasks.permuted_mnist(train, test, num_tasks=3, seed=1, val_size=100)


def fresh_program(trainer, task_set):
  """(state, data, hyperparameters) of a program of one run with the trainer's config."""
  return trainer.fresh(task_set, [trainer.config])


def run_chunk(trainer, state, data, hp):
  """One chunk as the host loop runs it: the steps up to the next chunk end, then validation."""
  step, end = int(state.step), trainer.config.steps_per_task
  chunk_end = min((step // trainer.chunk + 1) * trainer.chunk, end)
  while step < chunk_end:
    steps = min(trainer.max_steps_per_call, chunk_end - step)
    state, _ = trainer.train_steps(state, data, hp, np.int32(steps))
    step += steps
  return trainer.end_chunk(state, data, hp)


def with_learning_rate(state, rate):
  """The one-run state with its plateau schedule's learning rate set to `rate`."""
  plateau = {**state.schedule['plateau'], 'learning_rate': jnp.full(1, rate, jnp.float32)}
  return state.replace(schedule={**state.schedule, 'plateau': plateau})


def epochs_with_a_ruinous_last(trainer, state, data, hp, schedule_field):
  """Three one-chunk epochs of the begun task, the last at learning rate 10 (its parameters must
  not be kept): (state, state.schedule[schedule_field] of run 0 after each, params after each)."""
  values, snapshots = [], []
  for epoch in range(3):
    if epoch == 2:
      state = with_learning_rate(state, 10.0)
    state = run_chunk(trainer, state, data, hp)
    values.append(float(state.schedule[schedule_field][0]))
    snapshots.append(jax.device_get(state.params))
  return state, values, snapshots


PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255], [255, 255, 255], [255, 128, 0], [128, 0, 255],
                    [0, 128, 128]], np.uint8)


def synthetic_cifar(num_tasks=3, classes_per_task=5, train_per_class=100, test_per_class=20,
                    seed=0):
  """CIFAR-shaped images: class y of task t: a square of colour (y + c * t) % 10 in grid cell y."""
  rs = np.random.RandomState(seed)

  def make(per_class):
    num_classes = classes_per_task * num_tasks
    labels = rs.permutation(np.repeat(np.arange(num_classes, dtype=np.int32), per_class))
    images = rs.randint(0, 30, (len(labels), 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
      task, y = divmod(int(label), classes_per_task)
      r, c = divmod(y, 4)
      images[i, 1 + 10 * r:11 + 10 * r, 8 * c:8 + 8 * c] = PALETTE[(y + classes_per_task * task) % 10]
    return images, labels
  return make(train_per_class), make(test_per_class)


@pytest.fixture(scope='session')
def synthetic_cifar_task_set():
  """3 tasks of 5 classes; per task 50 validation, 450 training and 100 test images."""
  train, test = synthetic_cifar()
  return tasks.class_split(train, test, 3, 5, 50, 'split_cifar100')
