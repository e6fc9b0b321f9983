"""Dense layers initialised as PyTorch's nn.Linear, as in the reference implementations."""

import flax.linen as nn
import jax


def torch_bias_init(fan_in):
  """uniform(+-1/sqrt(fan_in)): PyTorch's default bias init."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def torch_dense(features, fan_in, name=None):
  """nn.Dense with PyTorch's default init: kaiming-uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in))."""
  return nn.Dense(features, name=name,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                  bias_init=torch_bias_init(fan_in))
