"""Target networks: the Flax models whose params the hypernetworks mask or generate."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from hypermask_jax.layers import torch_dense


class MLP(nn.Module):
  """ReLU MLP; the output layer is named 'head' so its bias can be found by path.

  With num_heads > 1 (the baselines: one head per task) the head holds every
  task's outputs and `tasks` (scalar or per example) picks the head.
  """
  hidden: Sequence[int]
  num_classes: int
  num_heads: int = 1

  @nn.compact
  def __call__(self, x, tasks=0):
    for i, features in enumerate(self.hidden):
      x = nn.relu(torch_dense(features, x.shape[-1], name=f'dense_{i}')(x))
    logits = torch_dense(self.num_classes * self.num_heads, x.shape[-1], name='head')(x)
    if self.num_heads == 1:
      return logits
    logits = logits.reshape(x.shape[0], self.num_heads, self.num_classes)
    heads = jnp.broadcast_to(jnp.asarray(tasks, jnp.int32), (x.shape[0],))
    return jnp.take_along_axis(logits, heads[:, None, None], axis=1)[:, 0]
