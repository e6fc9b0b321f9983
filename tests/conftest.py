"""Shared fixtures: real MNIST prepared into a TFDS data_dir, and tiny synthetic task sets."""

import os
import pathlib

import numpy as np
import pytest

from hypermask_jax.data import prepare
from hypermask_jax.data import tasks

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mnist'


@pytest.fixture(scope='session')
def mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir holding real MNIST: $HYPERMASK_MNIST_DATA_DIR, else imported from ../shared."""
  if os.environ.get('HYPERMASK_MNIST_DATA_DIR'):
    return os.environ['HYPERMASK_MNIST_DATA_DIR']
  if not SHARED_MNIST.is_dir():
    pytest.skip(f'real MNIST not found at {SHARED_MNIST}')
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare.prepare('mnist', str(SHARED_MNIST), data_dir)
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


@pytest.fixture
def synthetic_task_set():
  train, test = synthetic_mnist()
  return tasks.permuted_mnist(train, test, num_tasks=3, seed=1, val_size=100)


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
