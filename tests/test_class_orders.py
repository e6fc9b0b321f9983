"""The class-order benchmarks: FeCAM's Split CIFAR-100 scenarios and Tiny ImageNet's seeded tasks."""

import numpy as np
import pytest

from configs import cifar100_fecam_resnet20
from configs import permuted_mnist
from configs import tiny_imagenet_resnet20
from hypermask_jax import config_checks
from hypermask_jax import sweep
from hypermask_jax.data import class_orders
from hypermask_jax.data import tasks


def test_fecam_scenarios_take_consecutive_classes_of_the_fixed_order():
  assert sorted(class_orders.FECAM_CIFAR100_ORDER) == list(range(100))
  for scenario, sizes in class_orders.FECAM_SCENARIOS.items():
    found = class_orders.fecam_tasks(scenario)
    assert [len(c) for c in found] == list(sizes) and len(found) == scenario
    assert sum(found, ()) == class_orders.FECAM_CIFAR100_ORDER  # each class once, in order
  # Tasks the official HyperMask code's own checks name.
  assert class_orders.fecam_tasks(21)[1] == (17, 81, 41)
  assert class_orders.fecam_tasks(21)[20] == (26, 35, 39)
  assert class_orders.fecam_tasks(11)[2] == (82, 53, 9, 31, 75)
  assert class_orders.fecam_tasks(6)[4] == (40, 30, 23, 85, 2, 95, 56, 48, 71, 64)
  assert class_orders.fecam_tasks(5)[0][:4] == (87, 0, 52, 58)


def test_tiny_imagenet_tasks_follow_the_seeds_permutation():
  found = class_orders.tiny_imagenet_tasks(5, 40)
  order = np.random.default_rng(5).permutation(200)
  assert found[3] == tuple(sorted(order[15:20]))
  assert sorted(sum(found, ())) == list(range(200))
  assert class_orders.tiny_imagenet_tasks(6, 40)[0] != found[0]


def labelled(num_classes, per_class, seed):
  """Images whose first pixel is their class and second their index within the class."""
  rs = np.random.RandomState(seed)
  labels = rs.permutation(np.repeat(np.arange(num_classes, dtype=np.int32), per_class))
  images = np.zeros((len(labels), 4, 4, 3), np.uint8)
  images[:, 0, 0, 0] = labels
  for c in range(num_classes):
    images[labels == c, 0, 1, 0] = np.arange(per_class)
  return images, labels


def original_classes(split, task):
  part = slice(int(split.offset[task]), int(split.offset[task] + split.size[task]))
  return np.asarray(split.images[part, 0, 0, 0]), np.asarray(split.labels[part])


def test_the_fecam_task_set_labels_classes_by_their_place_in_the_order():
  train, test = labelled(100, 60, seed=0), labelled(100, 10, seed=1)
  data = tasks.split_cifar100_fecam(train, test, num_tasks=3, scenario=6)
  assert data.num_classes == 50 and data.num_tasks == 3
  np.testing.assert_array_equal(data.val.size, [2500, 500, 500])  # 50 per class, first in order
  np.testing.assert_array_equal(data.train.size, [500, 100, 100])
  np.testing.assert_array_equal(data.test.size, [500, 100, 100])
  for task, classes in enumerate(class_orders.fecam_tasks(6)[:3]):
    for split in (data.train, data.val, data.test):
      original, label = original_classes(split, task)
      np.testing.assert_array_equal(np.asarray(classes)[label], original)
  # The validation images are the task's first ones in dataset order.
  first = np.flatnonzero(np.isin(train[1], class_orders.fecam_tasks(6)[1]))[:500]
  np.testing.assert_array_equal(data.val.images[2500:3000], train[0][first])


def test_the_tiny_imagenet_task_set_keeps_50_images_of_each_class_for_validation():
  train, test = labelled(200, 60, seed=2), labelled(200, 5, seed=3)
  data = tasks.tiny_imagenet(train, test, num_tasks=4, seed=7)
  assert data.num_classes == 5 and data.input_shape == (64, 64, 3)
  np.testing.assert_array_equal(data.val.size, [250] * 4)
  np.testing.assert_array_equal(data.train.size, [50] * 4)
  for task, classes in enumerate(class_orders.tiny_imagenet_tasks(7, 4)):
    original, label = original_classes(data.val, task)
    np.testing.assert_array_equal(np.asarray(classes)[label], original)
    np.testing.assert_array_equal(np.bincount(label), [50] * 5)
    within = np.asarray(data.val.images[int(data.val.offset[task]):][:250, 0, 1, 0])
    first_of_class = [np.flatnonzero(train[1] == c)[:50] for c in classes]
    expected = np.concatenate([train[0][idx, 0, 1, 0] for idx in first_of_class])
    np.testing.assert_array_equal(np.sort(within), np.sort(expected))


def test_tiny_imagenet_seeds_train_as_separate_programs():
  """Each seed has its own tasks, so its own data: seeds cannot share a vmapped program."""
  for module, programs in ((tiny_imagenet_resnet20, 5), (permuted_mnist, 1)):
    runs = sweep.expand(module.get_config('seeds'))
    assert len(sweep.group(runs, lambda config: 10)) == programs


@pytest.mark.parametrize('overrides, message', [
    ({'fecam_scenario': 7}, 'config.fecam_scenario=7: must be one of (5, 6, 11, 21)'),
    ({'num_tasks': 6}, 'split_cifar100_fecam (fecam_scenario=5) has at most 5 tasks'),
    ({'task_inference': 'oracle'}, "config.task_inference='oracle': must be one of"),
])
def test_bad_fecam_settings_are_named(overrides, message):
  config = cifar100_fecam_resnet20.get_config()
  config.update(overrides)
  with pytest.raises(config_checks.ConfigError, match=message.replace('(', r'\(').replace(
      ')', r'\)')):
    config_checks.resolve(config)
