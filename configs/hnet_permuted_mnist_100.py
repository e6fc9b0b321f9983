"""HNET on Permuted MNIST-100 with a chunked hypernetwork (hypercl's PermutedMNIST-100 settings).

The regulariser takes a random subset of `reg_subset` previous tasks per step,
so memory per step stays constant over the 100 tasks; set reg_subset=0 for
all previous tasks (memory then grows with the tasks seen, up to 99 rows).
`reg_targets='snapshot'` recomputes the targets from a hypernetwork snapshot
instead of storing 100 target-sized rows (about 0.8 GB in fp32).

Variants (configs/variants.py): published, `:small` (a smoke run on a 2-core CPU), `:seeds`.
"""

from configs import hnet_permuted_mnist
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = hnet_permuted_mnist.published()
  config.num_tasks = 100
  config.embedding_size = 128
  config.chunk_embedding_size = 12
  config.hnet_hidden = (200, 250, 350)
  config.hnet_activation = 'relu'
  config.chunk_size = 7500
  config.beta = 0.01
  config.reg_subset = 32
  return config


def small(config):
  config.target_hidden = (100, 100)
  config.hnet_hidden = (25, 25)
  config.chunk_size = 4000
  config.embedding_size = 24
  config.learning_rate = 1e-3
  config.steps_per_task = 200
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.reg_subset = 8
