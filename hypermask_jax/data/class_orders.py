"""Which classes make up each task in the class-order benchmarks: FeCAM's Split CIFAR-100
scenarios and Tiny ImageNet.

FeCAM's CIFAR-100 order is the fixed order of iCaRL (Rebuffi et al., 2017)
that FeCAM's code (dipamgoswami/FeCAM, utils/data.py, iCIFAR100.class_order)
and the official HyperMask FeCAM set-up use. Its scenarios (FeCAM's Tables I
and V): 6 tasks (50 classes, then 5 x 10), 11 tasks (50, then 10 x 5), 21
tasks (40, then 20 x 3), and 5 tasks of 20. Tasks take consecutive classes of
the order. (The official HyperMask code builds the tasks of the unequal
scenarios with task i = order[i*c_i:(i+1)*c_i], which repeats classes of the
first task; its label translation, like FeCAM, uses consecutive ones.)

Tiny ImageNet: 40 tasks of 5 classes from numpy.random.default_rng(seed)
.permutation(200); within a task, labels 0..4 follow the class numbers
(wnids.txt order), as the reference sorts them.
"""

import numpy as np

FECAM_CIFAR100_ORDER = (
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39)

# Number of tasks -> classes per task.
FECAM_SCENARIOS = {5: (20,) * 5, 6: (50,) + (10,) * 5, 11: (50,) + (5,) * 10,
                   21: (40,) + (3,) * 20}

TINY_IMAGENET_CLASSES, TINY_IMAGENET_TASK_CLASSES = 200, 5


def fecam_tasks(scenario):
  """The classes of each task of a FeCAM scenario, in FeCAM's order: a list of tuples."""
  ends = np.cumsum(FECAM_SCENARIOS[scenario])
  return [FECAM_CIFAR100_ORDER[end - size:end]
          for end, size in zip(ends, FECAM_SCENARIOS[scenario])]


def tiny_imagenet_tasks(seed, num_tasks):
  """The classes of Tiny ImageNet's tasks for a run's seed, each task's sorted: a list of tuples."""
  order = np.random.default_rng(seed).permutation(TINY_IMAGENET_CLASSES)
  size = TINY_IMAGENET_TASK_CLASSES
  return [tuple(int(c) for c in sorted(order[t * size:(t + 1) * size]))
          for t in range(num_tasks)]
