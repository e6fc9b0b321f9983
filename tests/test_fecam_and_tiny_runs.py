"""The FeCAM setting and Tiny ImageNet end to end, on synthetic images separable by construction."""

import jax
import numpy as np
import pytest

from configs import cifar100_fecam_resnet20
from configs import tiny_imagenet_zenkenet
from hypermask_jax import config_checks
from hypermask_jax import train
from hypermask_jax.data import tasks
from hypermask_jax.methods import HyperMask
from tests.conftest import PALETTE


def squares(num_classes, per_class, side, seed):
  """Class k: a square of colour k % 10 in grid cell k // 10 * 5 + k % 5 (each pair unique) on
  dark noise, so every class differs from every other, within and across tasks."""
  rs = np.random.RandomState(seed)
  labels = rs.permutation(np.repeat(np.arange(num_classes, dtype=np.int32), per_class))
  images = rs.randint(0, 30, (len(labels), side, side, 3)).astype(np.uint8)
  cell = side // 4
  for i, k in enumerate(labels):
    r, c = divmod(int(k) // 10 * 5 + int(k) % 5, 4)
    images[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = PALETTE[int(k) % 10]
  return images, labels


def task_set(benchmark, side, val_per_class):
  """3 tasks of 5 classes; per class 60 training (less validation) and 20 test images."""
  train_set, test_set = squares(15, 60, side, seed=0), squares(15, 20, side, seed=1)
  classes = [range(5 * t, 5 * t + 5) for t in range(3)]
  per_class = benchmark == 'tiny_imagenet'
  return tasks.classes_to_tasks(train_set, test_set, classes,
                                [val_per_class * (1 if per_class else 5)] * 3, benchmark,
                                per_class=per_class)


def run(module, benchmark, side, tmp_path, monkeypatch, **overrides):
  data = task_set(benchmark, side, val_per_class=10)
  monkeypatch.setattr(train.tasks, 'load_task_set', lambda config: data)
  config = module.get_config('small')
  config.update(**{'num_tasks': 2, **overrides})  # two tasks: one old task for everything
  return train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_the_fecam_setting_runs_end_to_end(tmp_path, monkeypatch):
  summary = run(cifar100_fecam_resnet20, 'split_cifar100_fecam', 32, tmp_path, monkeypatch,
                epochs_per_task=3)
  acc = np.array(summary['accuracy_matrix'], dtype=float)
  assert np.diag(acc).min() >= 90.0, acc
  details = summary['task_inference']['metrics']
  assert set(details) == {'entropy_task_accuracy', 'entropy_accuracy', 'fecam_task_accuracy',
                          'fecam_task_mode_accuracy', 'fecam_class_mode_accuracy'}
  # The classes are separable in the features of each task's network: FeCAM finds them.
  assert details['fecam_class_mode_accuracy']['pooled'][-1] >= 90.0, details
  assert details['fecam_task_accuracy']['pooled'][-1] >= 90.0, details
  assert summary['traces']['task_statistics'] == 1 and summary['traces']['infer_tasks'] == 1


@pytest.mark.slow
def test_tiny_imagenet_runs_end_to_end(tmp_path, monkeypatch):
  """The 64x64 ZenkeNet with the published sparsity 50 and selection by validation loss (the
  ResNet-20 config differs only in settings the CIFAR tests cover)."""
  summary = run(tiny_imagenet_zenkenet, 'tiny_imagenet', 64, tmp_path, monkeypatch,
                epochs_per_task=4)
  acc = np.array(summary['accuracy_matrix'], dtype=float)
  assert np.diag(acc).min() >= 80.0, acc
  assert summary['traces']['train_steps'] == 1


def test_the_64x64_zenkenet_has_the_references_shapes():
  config = config_checks.resolve(tiny_imagenet_zenkenet.get_config())
  method = HyperMask(config, tasks.input_shape('tiny_imagenet'), 5)
  shapes = jax.eval_shape(method.init_params, jax.random.key(0))['target']
  conv = lambda cin: {'bias': (64,), 'kernel': (3, 3, cin, 64)}
  assert jax.tree.map(lambda s: s.shape, shapes) == {
      'conv0_0': conv(3), 'conv0_1': conv(64), 'conv1_0': conv(64), 'conv1_1': conv(64),
      'head': {'bias': (5,), 'weight': (5, 14 * 14 * 64)}}  # no hidden Dense layer
  assert method.layout.size == 1792 + 3 * 36928 + 12544 * 5 + 5  # all, the head's bias too
