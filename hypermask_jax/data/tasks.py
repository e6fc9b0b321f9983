"""Continual-learning task sets held on the device, with batches drawn inside compiled code.

Every split stores the images of all tasks once (uint8) plus per-task offsets
and sizes, so the task index can be a traced integer: one compiled program
serves every task. Permuted MNIST shares one image array across tasks and
applies each task's pixel permutation on the device; augmentation (Split
MNIST's crops, Split CIFAR-100's crops and flips) also runs on the device,
from the step's rng.

Two data protocols (benchmarks.PROTOCOLS) say how the MNIST benchmarks are formed:
- 'hypermask' (the HyperMask reference): Permuted MNIST pads 28x28 to 32x32
  (1024 inputs) and permutes every task, task 0 included, with permutations
  drawn from the run's seed; its first 5000 training images validate. Split
  MNIST augments (random crop 28 from a 4-pixel padding) and normalises with
  MNIST's mean and std; the first 1000 images of each task validate.
- 'hypercl' (hypercl, how HNET's published results were produced): Permuted
  MNIST has 784 inputs, task 0 unpermuted and tasks 1.. permuted from the
  fixed seed HYPERCL_PERMUTATION_SEED whatever the run's seed; Split MNIST has
  no augmentation and inputs in [0, 1]; both train on the whole training set
  and have no validation split (TaskSet.val is None).
Split CIFAR-100 has only the 'hypermask' protocol.
"""

import math
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import backend
from hypermask_jax.data import benchmarks
from hypermask_jax.data import class_orders
from hypermask_jax.data import tfds_io

# The TFDS dataset and the splits (train, test) each benchmark reads. Tiny ImageNet's labelled
# validation set is its test set (its own test set has no labels), as in the reference.
TFDS_NAMES = {'permuted_mnist': 'mnist', 'split_mnist': 'mnist', 'split_cifar100': 'cifar100',
              'split_cifar100_fecam': 'cifar100', 'tiny_imagenet': 'tiny_imagenet'}
TFDS_SPLITS = {'tiny_imagenet': ('train', 'validation')}  # others: ('train', 'test')
SPLIT_MNIST_MEAN, SPLIT_MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = (0.485, 0.456, 0.406)  # the reference's (ImageNet's) normalisation
CIFAR_STD = (0.229, 0.224, 0.225)
HYPERCL_PERMUTATION_SEED = 42  # hypercl's data_random_seed default
VALIDATION_SIZES = {  # per protocol: (Permuted MNIST, Split MNIST per task); 0 = none
    'hypermask': (5000, 1000), 'hypercl': (0, 0)}
NUM_CLASSES = {'permuted_mnist': 10, 'split_mnist': 2, 'split_cifar100': 10,
               'tiny_imagenet': 5}  # per task


def input_shape(benchmark, protocol='hypermask'):
  """The shape of one input: flat vectors for the MNIST MLPs, NHWC images for CIFAR, Tiny ImageNet.

  Permuted MNIST has 1024 inputs (the padded image) under the 'hypermask'
  protocol, 784 under 'hypercl'.
  """
  if benchmark == 'permuted_mnist':
    return (32 * 32,) if protocol == 'hypermask' else (28 * 28,)
  return {'split_mnist': (28 * 28,), 'split_cifar100': (32, 32, 3),
          'split_cifar100_fecam': (32, 32, 3), 'tiny_imagenet': (64, 64, 3)}[benchmark]


def num_classes(config):
  """Outputs of the head: the classes of the largest task (a task with fewer uses the first ones)."""
  if config.dataset == 'split_cifar100_fecam':
    return max(class_orders.FECAM_SCENARIOS[config.fecam_scenario])
  return NUM_CLASSES[config.dataset]


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
  val: Optional[Split]  # None: the protocol has no validation split
  test: Split
  perms: jax.Array  # int32 [T, D] (one run) or [R, T, D] (a program's runs): per-task input
  # permutation (permuted_mnist), else D = 0
  benchmark: str = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)
  protocol: str = flax.struct.field(pytree_node=False, default='hypermask')

  @property
  def num_tasks(self):
    return self.train.size.shape[0]

  @property
  def input_shape(self):
    return input_shape(self.benchmark, self.protocol)

  def inputs(self, images, tasks, rng, train):
    """Turns uint8 images of `tasks` (one task, or one per image) into float inputs, on the device."""
    x = images.astype(jnp.float32) / 255.0
    if self.benchmark == 'permuted_mnist':
      if self.protocol == 'hypermask':
        x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
      x = x.reshape(x.shape[0], -1)
      return jnp.take_along_axis(x, jnp.broadcast_to(self.perms[tasks], x.shape), axis=1)
    if self.benchmark in benchmarks.IMAGE_BENCHMARKS:
      if train:
        rng_flip, rng_crop = jax.random.split(rng)
        x = random_crop(rng_crop, random_flip(rng_flip, x), pad=4)
      return (x - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD)
    if self.protocol == 'hypercl':
      return x.reshape(x.shape[0], -1)
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


def _mix32(x):
  """A bijective avalanche mix of uint32 (murmur3's finaliser): the swap-or-not round function.

  jax.random's keyed hash of a traced integer is fold_in, a threefry block
  (20 rounds) per element and round of the shuffle; these five operations
  serve as well for choosing which elements swap.
  """
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def permutation_rounds(n):
  """Swap-or-not rounds for a domain of n: 6 log2(n), the count its security bound asks for."""
  return 6 * max(1, math.ceil(math.log2(max(n, 2))))


def permuted_position(keys, positions, n, rounds, chain=None):
  """Element `positions` (int [m], each in [0, n)) of random permutations of range(n): of the one
  keyed by keys[chain[i]] for element i (keys: a list of keys; chain: int [m], default all 0).

  The swap-or-not shuffle (Hoang, Morris and Rogaway, 2012): each round draws
  an offset K in [0, n) and a random bit function F; x goes to its partner
  K - x (mod n) when F(max(x, partner)) is 1. Each round is an involution, so
  the whole is a bijection of range(n) for any n; computing one element costs
  `rounds` steps, so a batch needs no sort of the whole set (a sort-based
  jax.random.permutation of 60k indices took 70 ms per call on CPU). The rounds
  are unrolled into straight-line code on accelerators: as a loop, each
  round of a Permuted MNIST step on a GPU (2 x 96 then, in two epochs'
  chains) waited for the host to test the loop's end, 1.8 ms per loop. On
  CPU they are a loop of 6 rounds a turn, which XLA:CPU compiles faster and
  runs as fast (HYPERMASK_SHUFFLE_ROUNDS; the figures are in backend.py).

  Each element takes its own key's K and F through one chain of rounds, so a
  batch that spans two epochs (draw_batch) runs one chain, not one per key with
  a choice at the end: the same numbers, with half the unrolled rounds. With
  two chains, the rounds were a third of the instructions of HNET Split
  MNIST's compiled train chunk (3,600 of 10,700), whose compile went from
  10.70, 9.58 and 8.25 s to 8.13, 8.92 and 7.06 s with one (Split MNIST's
  from 12.12 and 11.09 to 10.57 and 9.30 s; alternating, on the 2-core AMD
  EPYC, Zen 3), with the same parameters after 140 steps.

  A round wraps K + n - x (in (0, 2n)) by one subtraction, not `% n`: XLA
  does not fuse a remainder into a consumer that reads its result more than
  once, as the next round does, so with `% n` every round became a fusion of
  its own, each compiled and run on its own (the published Permuted MNIST
  train chunk compiled in 8.9-10.2 s against 7.0-7.2 s now, as
  experiments/benchmark_step.py times it on the 2-core AMD EPYC). The
  remainder at the end (a no-op, x < n) keeps the index a stored array for
  the same reason: without it, XLA:CPU fused all the rounds into the image
  gather and ran them again for every pixel (the HNET Permuted MNIST step
  took 17.6 ms instead of 8).
  """
  draws = [jax.random.split(key) for key in keys]
  offsets = jnp.stack([jax.random.randint(k, (rounds,), 0, n) for k, _ in draws])
  salts = jnp.stack([jax.random.bits(k, (rounds,), jnp.uint32) for _, k in draws])
  chain = jnp.zeros(positions.shape, jnp.int32) if chain is None else chain
  # [rounds, m]: each element's own key's draws
  offsets, salts = offsets[chain].T.astype(jnp.uint32), salts[chain].T
  n = jnp.asarray(n, jnp.uint32)

  def swap_or_not(r, x):
    partner = offsets[r] + n - x
    partner = jnp.where(partner >= n, partner - n, partner)
    swap = (_mix32(jnp.maximum(x, partner) ^ salts[r]) & 1) == 1
    return jnp.where(swap, partner, x)

  # rounds is a multiple of 6 (permutation_rounds): as a loop, 6 rounds a turn, no remainder.
  unroll = True if backend.shuffle_rounds() == 'unrolled' else 6
  x = jax.lax.fori_loop(0, rounds, swap_or_not, positions.astype(jnp.uint32), unroll=unroll)
  return (x % n).astype(jnp.int32)


def draw_batch(split, tasks, key, step, batch_size):
  """Batch number `step` of the training stream of `tasks`: (images, labels, task of each example).

  `tasks` is one task index (its examples), or an int array of tasks (joint
  training: the union of their examples; the task of each example is
  returned, else `tasks` itself). The stream visits the examples in a fresh
  random order each epoch, without replacement: stream position
  p = step * batch_size + i is element p mod n of the permutation of epoch
  p // n, keyed by fold_in(key, epoch). A batch may end one epoch and start
  the next, as the reference's batch generator (hypnettorch's
  next_train_batch) does. Keyed by (key, epoch), the order needs no iterator
  state to resume.
  """
  many = jnp.ndim(tasks) > 0
  sizes = split.size[tasks] if many else split.size[tasks][None]
  n = jnp.sum(sizes)
  most = split.max_size * (jnp.size(tasks) if many else 1)
  pos = step * batch_size + jnp.arange(batch_size)
  first_epoch = (step * batch_size) // n
  epoch_of = pos // n - first_epoch  # 0 or 1: batch_size <= n
  rounds = permutation_rounds(most)
  index = permuted_position([jax.random.fold_in(key, first_epoch + e) for e in (0, 1)],
                            pos % n, n, rounds, epoch_of)
  if many:
    ends = jnp.cumsum(sizes)
    # compare_all: no loop, whose every turn a GPU waits on the host for.
    which = jnp.searchsorted(ends, index, side='right', method='compare_all')
    example_tasks = jnp.asarray(tasks)[which]
    idx = split.offset[example_tasks] + index - (ends[which] - sizes[which])
  else:
    example_tasks = tasks
    idx = split.offset[tasks] + index
  return split.images[idx], split.labels[idx], example_tasks


def _split(images, labels, offsets, sizes):
  return Split(images=jnp.asarray(images), labels=jnp.asarray(labels, jnp.int32),
               offset=jnp.asarray(offsets, jnp.int32), size=jnp.asarray(sizes, jnp.int32),
               max_size=int(max(sizes)))


def permutations(num_tasks, seed, protocol):
  """Per-task pixel permutations [T, D] under `protocol`.

  'hypermask': D = 1024 (the padded image), every task drawn from the run's
  seed. 'hypercl': D = 784, task 0 the identity, tasks 1.. drawn from
  HYPERCL_PERMUTATION_SEED, the same whatever the run's seed.
  """
  if protocol == 'hypermask':
    rs = np.random.RandomState(seed)
    return np.stack([rs.permutation(32 * 32) for _ in range(num_tasks)])
  rs = np.random.RandomState(HYPERCL_PERMUTATION_SEED)
  return np.stack([np.arange(28 * 28)] + [rs.permutation(28 * 28) for _ in range(num_tasks - 1)])


def for_runs(task_set, seeds):
  """The task set of a program: shared images, each run's permutations from its seed [R, T, D].

  Under the 'hypercl' protocol every run has the same (fixed) permutations.
  """
  if task_set.benchmark == 'permuted_mnist':
    perms = np.stack([permutations(task_set.num_tasks, seed, task_set.protocol) for seed in seeds])
  else:
    perms = np.zeros((len(seeds), task_set.num_tasks, 0), np.int32)
  return task_set.replace(perms=jnp.asarray(perms, jnp.int32))


def permuted_mnist(train, test, num_tasks, seed, protocol='hypermask', val_size=None):
  """Permuted MNIST under `protocol` (see the module docstring).

  The first val_size training images (default: the protocol's) validate; none when 0.
  """
  (x, y), (x_test, y_test) = train, test
  val_size = VALIDATION_SIZES[protocol][0] if val_size is None else val_size
  shared = lambda xs, ys: _split(xs, ys, [0] * num_tasks, [len(ys)] * num_tasks)
  return TaskSet(train=shared(x[val_size:], y[val_size:]),
                 val=shared(x[:val_size], y[:val_size]) if val_size else None,
                 test=shared(x_test, y_test),
                 perms=jnp.asarray(permutations(num_tasks, seed, protocol), jnp.int32),
                 benchmark='permuted_mnist', num_classes=10, protocol=protocol)


def class_split(train, test, num_tasks, classes_per_task, val_size, benchmark,
                protocol='hypermask'):
  """Task i holds classes [i*c, (i+1)*c) labelled 0..c-1 (c = classes_per_task).

  Its validation set is the first `val_size` of its training images (in
  dataset order), the rest its training set; val_size=0: no validation split.
  """
  task_classes = [range(t * classes_per_task, (t + 1) * classes_per_task)
                  for t in range(num_tasks)]
  return classes_to_tasks(train, test, task_classes, [val_size] * num_tasks, benchmark,
                          protocol=protocol)


def classes_to_tasks(train, test, task_classes, val_sizes, benchmark, per_class=False,
                     protocol='hypermask'):
  """Task t holds the classes task_classes[t], labelled 0, 1, ... in that order.

  Its validation set is the first val_sizes[t] of its training images (in
  dataset order), or with `per_class` the first val_sizes[t] of each of its
  classes; the rest is its training set. With every val_sizes[t] 0 there is no
  validation split (val None).
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

  return TaskSet(train=concat(parts['train']),
                 val=concat(parts['val']) if any(val_sizes) else None,
                 test=concat(parts['test']), perms=jnp.zeros((len(task_classes), 0), jnp.int32),
                 benchmark=benchmark, num_classes=max(len(c) for c in task_classes),
                 protocol=protocol)


def split_mnist(train, test, num_tasks, protocol='hypermask', val_size=None):
  """Split MNIST: task i holds digits {2i, 2i+1} labelled 0/1.

  The first val_size images of each task (default: the protocol's, 1000 or
  none) validate.
  """
  val_size = VALIDATION_SIZES[protocol][1] if val_size is None else val_size
  return class_split(train, test, num_tasks, 2, val_size, 'split_mnist', protocol)


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


def _build(config, train, test):
  if config.dataset == 'permuted_mnist':
    return permuted_mnist(train, test, config.num_tasks, config.seed, config.data_protocol)
  if config.dataset == 'split_cifar100':
    return split_cifar100(train, test, config.num_tasks)
  if config.dataset == 'split_cifar100_fecam':
    return split_cifar100_fecam(train, test, config.num_tasks, config.fecam_scenario)
  if config.dataset == 'tiny_imagenet':
    return tiny_imagenet(train, test, config.num_tasks, config.seed)
  return split_mnist(train, test, config.num_tasks, config.data_protocol)


def synthetic_task_set(config, train_size=12000, test_size=2000):
  """Random images with config's benchmark's shapes and sizes: for timing and memory, not learning."""
  rs = np.random.RandomState(0)
  # The real sizes per class: CIFAR-100 500 / 100, Tiny ImageNet 500 / 50.
  if config.dataset in benchmarks.IMAGE_BENCHMARKS:
    side, classes, test_per_class = (64, 200, 50) if config.dataset == 'tiny_imagenet' else (
        32, 100, 100)
    make = lambda n: (rs.randint(0, 256, (n, side, side, 3)).astype(np.uint8),
                      np.arange(n, dtype=np.int32) % classes)
    return _build(config, make(500 * classes), make(test_per_class * classes))
  make = lambda n: (rs.randint(0, 256, (n, 28, 28, 1)).astype(np.uint8),
                    rs.randint(0, 10, n).astype(np.int32))
  return _build(config, make(train_size), make(test_size))


def load_task_set(config):
  """Loads the benchmark named by config.dataset from TFDS into device memory."""
  data_dir, download = config.data_dir or None, config.download
  name = TFDS_NAMES[config.dataset]
  train_split, test_split = TFDS_SPLITS.get(config.dataset, ('train', 'test'))
  train = tfds_io.load_split(name, train_split, data_dir, download)
  test = tfds_io.load_split(name, test_split, data_dir, download)
  return _build(config, train, test)
