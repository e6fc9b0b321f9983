"""Target networks: the Flax models whose params the hypernetworks mask or generate."""

from typing import Sequence

import flax.linen as nn

from hypermask_jax.layers import torch_dense


class MLP(nn.Module):
  """ReLU MLP; the last layer is named 'head' so its bias can be found by path."""
  hidden: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x):
    for i, features in enumerate(self.hidden):
      x = nn.relu(torch_dense(features, x.shape[-1], name=f'dense_{i}')(x))
    return torch_dense(self.num_classes, x.shape[-1], name='head')(x)
