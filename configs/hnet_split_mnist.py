"""HNET on Split MNIST as hypercl ran it for its published results.

hypercl's settings: a chunked hypernetwork (chunk 42000, chunk and task
embeddings 96, hidden (10, 10), ReLU) initialised Xavier-uniform with zero
biases; beta 0.01 with the lookahead; Adam lr 1e-3 on the current task's
embedding only; a 400-400 target with one 2-way head per task, all generated
and regularised; the hypercl data protocol (no augmentation, inputs in [0, 1],
no validation split).

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
  config.hnet_activation = 'relu'
  config.chunk_size = 42000
  config.beta = 0.01
  config.learning_rate = 1e-3
  config.steps_per_task = 2000
  config.sparsity = 0.0
  config.train_embeddings = 'current'
  config.hnet_init = 'xavier'
  config.lookahead = True
  config.output_heads = 'per_task'
  config.data_protocol = 'hypercl'
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
