"""HNET on Permuted MNIST-10 with the published (hypercl) settings (docs/methods.md).

Variants (configs/variants.py): published, `:small` (about a minute on a 2-core CPU), `:seeds`.
"""

from configs import permuted_mnist
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = permuted_mnist.published()
  config.method = 'hnet'
  config.target_hidden = (1000, 1000)
  config.embedding_size = 24
  config.chunk_embedding_size = 8
  config.hnet_hidden = (25, 25)
  config.hnet_activation = 'elu'
  config.chunk_size = 78000
  config.beta = 0.1
  config.learning_rate = 1e-4
  config.train_embeddings = 'current'
  return config


def small(config):
  config.num_tasks = 3
  config.target_hidden = (100, 100)
  config.chunk_size = 4000
  config.learning_rate = 1e-3
  config.steps_per_task = 3000
  config.log_every_steps = 500
  config.checkpoint_every_steps = 1000
