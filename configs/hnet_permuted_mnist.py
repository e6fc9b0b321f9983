"""HNET on Permuted MNIST-10 as hypercl ran it for its published results.

hypercl's settings: a chunked hypernetwork (chunk 78000, chunk embedding 8,
task embedding 24, hidden (25, 25), ELU) initialised Xavier-uniform with zero
biases (embeddings N(0, 1)); beta 0.1 with the lookahead; Adam lr 1e-4 on the
current task's embedding only; a 1000-1000 target with one 10-way head per
task, all generated and regularised; the hypercl data protocol (784 inputs,
task 0 unpermuted, fixed permutations, all 60k training images, no
validation split).

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
  config.hnet_init = 'xavier'
  config.lookahead = True
  config.output_heads = 'per_task'
  config.data_protocol = 'hypercl'
  return config


def small(config):
  config.num_tasks = 3
  config.target_hidden = (100, 100)
  config.chunk_size = 3000  # the hypernetwork stays smaller than the 784-100-100 target
  config.learning_rate = 1e-3
  config.steps_per_task = 3000
  config.log_every_steps = 500
  config.checkpoint_every_steps = 1000
