"""HyperMask on Split CIFAR-100 (10 tasks of 10 classes) with ResNet-20, published hyperparameters.

Variants (configs/variants.py): published (200 epochs per task, hypernet output layer ~108M
parameters), `:small` (width factor 1, hypernet (10,), 3 tasks of 3 epochs: a CPU smoke
run), `:seeds`.
"""

from configs import permuted_mnist
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = permuted_mnist.published()
  config.dataset = 'split_cifar100'
  config.num_tasks = 10
  config.target = 'resnet20'
  config.width_factor = 2
  config.batch_norm = 'batch'
  config.embedding_size = 48
  config.hnet_hidden = (100,)
  config.learning_rate = 1e-3
  config.batch_size = 32
  config.steps_per_task = None
  config.epochs_per_task = 200
  config.beta = 0.01
  config.lam = 1.0
  config.l1_masked = False
  config.sparsity = 0.0
  config.lr_schedule = 'plateau'
  config.selection = 'best_val'
  config.selection_every_steps = 100  # as the reference: every 100 iterations and each epoch's end
  config.checkpoint_every_steps = 5000
  return config


def small(config):
  config.num_tasks = 3
  config.width_factor = 1
  config.hnet_hidden = (10,)  # a wider hidden layer gives smaller initial masks: slower start
  config.epochs_per_task = 3
  config.checkpoint_every_steps = 500
