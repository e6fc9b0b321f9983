"""What each benchmark is, without loading it: its name, its data protocols, its inputs, its
most tasks. Free of JAX, so that a config is checked before JAX is imported (main.py)."""

from hypermask_jax.data import class_orders

BENCHMARKS = ('permuted_mnist', 'split_mnist', 'split_cifar100', 'split_cifar100_fecam',
              'tiny_imagenet')
PROTOCOLS = ('hypermask', 'hypercl')  # tasks.py's docstring says what each one forms
# Colour images: flipped and cropped in training, normalised per channel (tasks.py).
IMAGE_BENCHMARKS = ('split_cifar100', 'split_cifar100_fecam', 'tiny_imagenet')
MAX_TASKS = {'split_mnist': 5, 'split_cifar100': 10, 'tiny_imagenet': 40}  # Permuted MNIST: none


def max_tasks(config):
  """The most tasks config.dataset has, or None (Permuted MNIST)."""
  if config.dataset == 'split_cifar100_fecam':
    return len(class_orders.FECAM_SCENARIOS[config.fecam_scenario])
  return MAX_TASKS.get(config.dataset)
