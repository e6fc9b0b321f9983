"""HyperMask on Split MNIST (5 tasks of 2 digits) with the published best hyperparameters.

Variants (configs/variants.py): published, `:small` (a few minutes on a 2-core CPU), `:seeds`.
"""

from configs import permuted_mnist
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = permuted_mnist.published()
  config.dataset = 'split_mnist'
  config.num_tasks = 5
  config.target_hidden = (400, 400)
  config.embedding_size = 128
  config.hnet_hidden = (25, 25)
  config.steps_per_task = 2000
  config.beta = 1e-3
  config.lam = 1e-3
  config.l1_masked = True
  config.sparsity = 30.0
  return config


def small(config):
  config.target_hidden = (100, 100)
  config.steps_per_task = 1000
  config.log_every_steps = 250
