"""The HMLP hypernetwork: task embedding -> flat output, one row per requested task."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from hypermask_jax.layers import torch_dense


class HMLP(nn.Module):
  """Dense+ELU layers over learned task embeddings (N(0,1), [max_tasks, E], part of the params)."""
  num_outputs: int
  max_tasks: int
  embedding_size: int
  hidden: Sequence[int]

  @nn.compact
  def __call__(self, tasks):
    """tasks: int [k] -> raw outputs [k, num_outputs], one batched matmul for all k rows."""
    embeddings = self.param('embeddings', nn.initializers.normal(1.0),
                            (self.max_tasks, self.embedding_size))
    x = jnp.take(embeddings, tasks, axis=0)
    for i, features in enumerate(self.hidden):
      x = nn.elu(torch_dense(features, x.shape[-1], name=f'dense_{i}')(x))
    return torch_dense(self.num_outputs, x.shape[-1], name='out')(x)
