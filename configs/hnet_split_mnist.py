"""HNET on Split MNIST with the published (hypercl) settings (docs/methods.md).

Variants (configs/variants.py): published, `:small` (about a minute on a 2-core CPU), `:seeds`.
"""

from configs import split_mnist
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = split_mnist.published()
  config.method = 'hnet'
  config.target_hidden = (400, 400)
  config.embedding_size = 96
  config.chunk_embedding_size = 96
  config.hnet_hidden = (10, 10)
  config.hnet_activation = 'elu'
  config.chunk_size = 42000
  config.beta = 0.01
  config.learning_rate = 1e-3
  config.steps_per_task = 2000
  config.sparsity = 0.0
  config.train_embeddings = 'current'
  return config


def small(config):
  # A smaller target; the published (10, 10) hypernetwork is then too small to learn it.
  config.target_hidden = (100, 100)
  config.hnet_hidden = (25, 25)
  config.beta = 0.1
  config.chunk_size = 4000
  config.steps_per_task = 1000
  config.log_every_steps = 250
  config.checkpoint_every_steps = 500
