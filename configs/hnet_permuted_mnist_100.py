"""HNET on Permuted MNIST-100 with a chunked hypernetwork (hypercl's PermutedMNIST-100 settings).

As published, every step regularises all previous tasks (reg_subset=0): the
regulariser's rows grow with the tasks seen, up to 99 old rows plus the
current one at task 100 (the memory this needs is in the README).
reg_subset=K > 0 regularises a random subset of K previous tasks per step
instead (hypercl did so only from 250 tasks on; K=32 keeps the memory per
step constant). The regulariser keeps a snapshot of the hypernetwork and
every task's inputs to its chunk layer (52 MB); `reg_targets='snapshot'`
recomputes those inputs at every step instead.

Variants (configs/variants.py): published, `:small` (a smoke run on a 2-core CPU,
with a random subset of 8 old tasks per step so that its memory stays flat), `:seeds`.
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
  config.reg_subset = 0
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
