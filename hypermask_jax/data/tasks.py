"""Continual-learning task sets held on the device, with batches drawn inside compiled code.

Every split stores the images of all tasks once (uint8) plus per-task offsets
and sizes, so the task index can be a traced integer: one compiled program
serves every task. Permuted MNIST shares one image array across tasks and
applies each task's pixel permutation on the device; augmentation (Split
MNIST's crops, Split CIFAR-100's crops and flips) also runs on the device,
from the step's rng.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax.data import class_orders
from hypermask_jax.data import tfds_io

BENCHMARKS = ('permuted_mnist', 'split_mnist', 'split_cifar100', 'split_cifar100_fecam',
              'tiny_imagenet')
# The TFDS dataset and the splits (train, test) each benchmark reads. Tiny ImageNet's labelled
# validation set is its test set (its own test set has no labels), as in the reference.
TFDS_NAMES = {'permuted_mnist': 'mnist', 'split_mnist': 'mnist', 'split_cifar100': 'cifar100',
              'split_cifar100_fecam': 'cifar100', 'tiny_imagenet': 'tiny_imagenet'}
TFDS_SPLITS = {'tiny_imagenet': ('train', 'validation')}  # others: ('train', 'test')
MAX_TASKS = {'split_mnist': 5, 'split_cifar100': 10, 'tiny_imagenet': 40}  # Permuted MNIST: none
SPLIT_MNIST_MEAN, SPLIT_MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.485, 0.456, 0.406)  # the reference's (ImageNet's) normalisation
CIFAR_STD = (0.229, 0.224, 0.225)
# Colour images: flipped and cropped in training, normalised per channel with CIFAR_MEAN/STD.
IMAGE_BENCHMARKS = ('split_cifar100', 'split_cifar100_fecam', 'tiny_imagenet')
NUM_CLASSES = {'permuted_mnist': 10, 'split_mnist': 2, 'split_cifar100': 10,
               'tiny_imagenet': 5}  # per task


def input_shape(benchmark):
  """The shape of one input: flat vectors for the MNIST MLPs, NHWC images for CIFAR, Tiny ImageNet."""
  return {'permuted_mnist': (32 * 32,), 'split_mnist': (28 * 28,),
          'split_cifar100': (32, 32, 3), 'split_cifar100_fecam': (32, 32, 3),
          'tiny_imagenet': (64, 64, 3)}[benchmark]


def num_classes(config):
  """Outputs of the head: the classes of the largest task (a task with fewer uses the first ones)."""
  if config.dataset == 'split_cifar100_fecam':
    return max(class_orders.FECAM_SCENARIOS[config.fecam_scenario])
  return NUM_CLASSES[config.dataset]


def max_tasks(config):
  """The most tasks config.dataset has, or None (Permuted MNIST)."""
  if config.dataset == 'split_cifar100_fecam':
    return len(class_orders.FECAM_SCENARIOS[config.fecam_scenario])
  return MAX_TASKS.get(config.dataset)


@flax.struct.dataclass
class Split:
  """The examples of every task in one split, addressed per task by offset and size."""
  images: jax.Array  # uint8 [N, H, W, C]
  labels: jax.Array  # int32 [N], already relative to the task (0..classes-1)
  offset: jax.Array  # int32 [T]
  size: jax.Array  # int32 [T]
  max_size: int = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class TaskSet:
  """Train, validation and test splits of one benchmark, plus how its inputs are formed."""
  train: Split
  val: Split
  test: Split
  perms: jax.Array  # int32 [T, D] (one run) or [R, T, D] (a program's runs): per-task input
  # permutation (permuted_mnist), else D = 0
  benchmark: str = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)

  @property
  def num_tasks(self):
    return self.train.size.shape[0]

  @property
  def input_shape(self):
    return input_shape(self.benchmark)

  def inputs(self, images, tasks, rng, train):
    """Turns uint8 images of `tasks` (one task, or one per image) into float inputs, on the device."""
    x = images.astype(jnp.float32) / 255.0
    if self.benchmark == 'permuted_mnist':
      x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))).reshape(x.shape[0], -1)
      return jnp.take_along_axis(x, jnp.broadcast_to(self.perms[tasks], x.shape), axis=1)
    if self.benchmark in IMAGE_BENCHMARKS:
      if train:
        rng_flip, rng_crop = jax.random.split(rng)
        x = random_crop(rng_crop, random_flip(rng_flip, x), pad=4)
      return (x - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD)
    if train:
      x = random_crop(rng, x, pad=4)
    return ((x - SPLIT_MNIST_MEAN) / SPLIT_MNIST_STD).reshape(x.shape[0], -1)


def random_crop(rng, images, pad):
  """Zero-pads each image by `pad` and crops it back at a random offset (torchvision RandomCrop)."""
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  corners = jax.random.randint(rng, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, c: jax.lax.dynamic_slice(img, (c[0], c[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, corners)


def random_flip(rng, images):
  """Mirrors each image left-right with probability 1/2 (torchvision RandomHorizontalFlip)."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def draw_batch(split, tasks, rng, batch_size):
  """Samples a batch (uniformly, with replacement) from the part of the split of `tasks`.

  `tasks` is one task index, or one per example (joint training).
  """
  idx = split.offset[tasks] + jax.random.randint(rng, (batch_size,), 0, split.size[tasks])
  return split.images[idx], split.labels[idx]


def _split(images, labels, offsets, sizes):
  return Split(images=jnp.asarray(images), labels=jnp.asarray(labels, jnp.int32),
               offset=jnp.asarray(offsets, jnp.int32), size=jnp.asarray(sizes, jnp.int32),
               max_size=int(max(sizes)))


def permutations(seed, num_tasks):
  """Permuted MNIST's per-task pixel permutations [T, 1024] (task 0 permuted too)."""
  rs = np.random.RandomState(seed)
  return np.stack([rs.permutation(32 * 32) for _ in range(num_tasks)])


def for_runs(task_set, seeds):
  """The task set of a program: shared images, each run's permutations from its seed [R, T, D]."""
  if task_set.benchmark == 'permuted_mnist':
    perms = np.stack([permutations(seed, task_set.num_tasks) for seed in seeds])
  else:
    perms = np.zeros((len(seeds), task_set.num_tasks, 0), np.int32)
  return task_set.replace(perms=jnp.asarray(perms, jnp.int32))


def permuted_mnist(train, test, num_tasks, seed, val_size=5000):
  """Permuted MNIST: one seeded permutation of the padded 1024 pixels per task (task 0 too)."""
  (x, y), (x_test, y_test) = train, test
  perms = permutations(seed, num_tasks)
  shared = lambda xs, ys: _split(xs, ys, [0] * num_tasks, [len(ys)] * num_tasks)
  return TaskSet(train=shared(x[val_size:], y[val_size:]), val=shared(x[:val_size], y[:val_size]),
                 test=shared(x_test, y_test), perms=jnp.asarray(perms, jnp.int32),
                 benchmark='permuted_mnist', num_classes=10)


def class_split(train, test, num_tasks, classes_per_task, val_size, benchmark):
  """Task i holds classes [i*c, (i+1)*c) labelled 0..c-1 (c = classes_per_task).

  Its validation set is the first `val_size` of its training images (in
  dataset order), the rest its training set.
  """
  task_classes = [range(t * classes_per_task, (t + 1) * classes_per_task)
                  for t in range(num_tasks)]
  return classes_to_tasks(train, test, task_classes, [val_size] * num_tasks, benchmark)


def classes_to_tasks(train, test, task_classes, val_sizes, benchmark, per_class=False):
  """Task t holds the classes task_classes[t], labelled 0, 1, ... in that order.

  Its validation set is the first val_sizes[t] of its training images (in
  dataset order), or with `per_class` the first val_sizes[t] of each of its
  classes; the rest is its training set.
  """
  parts = {'train': [], 'val': [], 'test': []}
  for task, classes in enumerate(task_classes):
    relabel = np.full(max(int(train[1].max()), int(test[1].max())) + 1, -1, np.int64)
    relabel[np.asarray(classes)] = np.arange(len(classes))
    for name, (x, y) in (('train', train), ('test', test)):
      keep = relabel[y] >= 0
      xs, ys = x[keep], relabel[y[keep]]
      if name == 'train':
        first = np.zeros(len(ys), bool)
        if per_class:
          for label in range(len(classes)):
            first[np.flatnonzero(ys == label)[:val_sizes[task]]] = True
        else:
          first[:val_sizes[task]] = True
        parts['val'].append((xs[first], ys[first]))
        xs, ys = xs[~first], ys[~first]
      parts[name].append((xs, ys))

  def concat(chunks):
    sizes = [len(ys) for _, ys in chunks]
    if min(sizes) == 0:
      raise ValueError(f'{benchmark}: a task has no examples in some split (sizes {sizes})')
    return _split(np.concatenate([xs for xs, _ in chunks]), np.concatenate([ys for _, ys in chunks]),
                  np.cumsum([0] + sizes[:-1]), sizes)

  return TaskSet(train=concat(parts['train']), val=concat(parts['val']), test=concat(parts['test']),
                 perms=jnp.zeros((len(task_classes), 0), jnp.int32), benchmark=benchmark,
                 num_classes=max(len(c) for c in task_classes))


def split_mnist(train, test, num_tasks, val_size=1000):
  """Split MNIST: task i holds digits {2i, 2i+1} labelled 0/1; validation = first 1000 of each."""
  return class_split(train, test, num_tasks, 2, val_size, 'split_mnist')


def split_cifar100(train, test, num_tasks, val_size=500):
  """Split CIFAR-100: task i holds classes 10i..10i+9 labelled 0..9; validation = first 500."""
  return class_split(train, test, num_tasks, 10, val_size, 'split_cifar100')


def split_cifar100_fecam(train, test, num_tasks, scenario, val_per_class=50):
  """FeCAM's class-incremental Split CIFAR-100 (class_orders.py): the first num_tasks tasks of
  the scenario; each task's validation set is the first 50 x (its classes) of its images."""
  task_classes = class_orders.fecam_tasks(scenario)[:num_tasks]
  return classes_to_tasks(train, test, task_classes,
                          [val_per_class * len(c) for c in task_classes], 'split_cifar100_fecam')


def tiny_imagenet(train, test, num_tasks, seed, val_per_class=50):
  """Tiny ImageNet: 5 classes per task in the seed's order (class_orders.py); validation = the
  first 50 images of each class (250 per task); test = the labelled validation set."""
  return classes_to_tasks(train, test, class_orders.tiny_imagenet_tasks(seed, num_tasks),
                          [val_per_class] * num_tasks, 'tiny_imagenet', per_class=True)


def synthetic_task_set(config, train_size=12000, test_size=2000):
  """Random images with config's benchmark's shapes and sizes: for timing and memory, not learning."""
  rs = np.random.RandomState(0)
  if config.dataset in IMAGE_BENCHMARKS:  # the real sizes per class: CIFAR 500/100, Tiny 500/50
    tiny = config.dataset == 'tiny_imagenet'
    side, classes, test_per_class = (64, 200, 50) if tiny else (32, 100, 100)
    make = lambda n: (rs.randint(0, 256, (n, side, side, 3)).astype(np.uint8),
                      np.arange(n, dtype=np.int32) % classes)
    train, test = make(500 * classes), make(test_per_class * classes)
    if tiny:
      return tiny_imagenet(train, test, config.num_tasks, config.seed)
    if config.dataset == 'split_cifar100_fecam':
      return split_cifar100_fecam(train, test, config.num_tasks, config.fecam_scenario)
    return split_cifar100(train, test, config.num_tasks)
  make = lambda n: (rs.randint(0, 256, (n, 28, 28, 1)).astype(np.uint8),
                    rs.randint(0, 10, n).astype(np.int32))
  train, test = make(train_size), make(test_size)
  if config.dataset == 'permuted_mnist':
    return permuted_mnist(train, test, config.num_tasks, config.seed)
  return split_mnist(train, test, config.num_tasks, val_size=100)


def load_task_set(config):
  """Loads the benchmark named by config.dataset from TFDS into device memory."""
  data_dir, download = config.data_dir or None, config.download
  name = TFDS_NAMES[config.dataset]
  train_split, test_split = TFDS_SPLITS.get(config.dataset, ('train', 'test'))
  train = tfds_io.load_split(name, train_split, data_dir, download)
  test = tfds_io.load_split(name, test_split, data_dir, download)
  if config.dataset == 'permuted_mnist':
    return permuted_mnist(train, test, config.num_tasks, config.seed)
  if config.dataset == 'split_cifar100':
    return split_cifar100(train, test, config.num_tasks)
  if config.dataset == 'split_cifar100_fecam':
    return split_cifar100_fecam(train, test, config.num_tasks, config.fecam_scenario)
  if config.dataset == 'tiny_imagenet':
    return tiny_imagenet(train, test, config.num_tasks, config.seed)
  return split_mnist(train, test, config.num_tasks)
