"""The full hypernetwork's output layer: a few rows (one per task) times a very wide kernel.

HMLP's output layer maps k task rows [k, n] (n = 25 or 100 hidden units) to
[k, m], m = every masked or generated target weight (0.5M to 2M). Its kernel
is the hypernetwork: 12M to 206M parameters, read by the forward pass and
updated by Adam at every step, while the rows cost little. As a plain
`nn.Dense` inside the regulariser's `lax.switch`, XLA:CPU (jax 0.10.2) ran
the published Permuted MNIST step in 3.4-5.2 s of CPU time, against 0.97 s
with this layer and every previous task's row computed (regularizers.py);
Split MNIST 180-300 ms against 55-65 ms (both measured in one process on the
shared 2-core AMD EPYC):

- JAX's transpose of `x @ kernel` builds the weight gradient as [m, n] and
  then transposes it. Inside a lax.switch whose one-row branch makes that
  transpose a layout change, XLA picked a column-major layout for the
  gradient, so its dot and Adam's reads of it ran strided.
- XLA:CPU's YNNPACK dot for the input gradient, [k, m] x [n, m]^T (a long
  contraction, a tiny output), took 10-20x the time of one pass over the
  kernel.

So this layer stores the kernel as PyTorch's nn.Linear does, [m, n] (its
initial values are those of `layers.torch_dense`, transposed), and gives it
a hand-written gradient:

- the kernel's gradient is a sum of k outer products written elementwise,
  so XLA fuses it into Adam's update instead of writing and re-reading an
  array the size of the hypernetwork (above FUSED_ROWS rows it is one dot);
- the input gradient runs the long contraction in kernel row blocks of about
  256 KiB (a batched dot, then a sum): 2.2x faster than one dot at the PMNIST
  size;
- the kernel's gradient depends on the input gradient (the last read of the
  kernel), so Adam can update the kernel in place: without that order XLA
  copied the whole kernel at every step.

The numbers equal `x @ kernel.T + bias` and its gradients up to float
rounding (tests/test_wide_dense.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import layers

FUSED_ROWS = 16  # up to this many rows the kernel gradient is elementwise (fused into Adam)
BLOCK_BYTES = 256 * 1024  # kernel rows per block of the input gradient's contraction


class WideDense(nn.Module):
  """Dense layer with a [features, fan_in] kernel, for few rows and many outputs.

  init: 'torch' (PyTorch's Linear init, as `layers.torch_dense`) or 'xavier'
  (Xavier-uniform kernel, zero bias, as nn.Dense with those initialisers);
  either gives the values of the [fan_in, features] layer, transposed.
  """
  features: int
  init: str = 'torch'

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    if self.init == 'xavier':
      kernel_init, bias_init = nn.initializers.xavier_uniform(), nn.initializers.zeros
    else:
      kernel_init, bias_init = layers.TORCH_KERNEL_INIT, layers.torch_bias_init(fan_in)
    kernel = self.param('kernel', lambda key, shape: kernel_init(key, shape[::-1]).T,
                        (self.features, fan_in))
    bias = self.param('bias', bias_init, (self.features,))
    return wide_dense(x, kernel, bias)


@jax.custom_vjp
def wide_dense(x, kernel, bias):
  """x [k, n] @ kernel[m, n]^T + bias [m] -> [k, m]."""
  # [m, k], then transposed: 1.8x faster than [k, m] at the PMNIST size on XLA:CPU.
  return jax.lax.dot_general(kernel, x, (((1,), (1,)), ((), ()))).T + bias


def _forward(x, kernel, bias):
  return wide_dense(x, kernel, bias), (x, kernel)


def _backward(residuals, ct):
  x, kernel = residuals
  rows = x.shape[0]
  d_x = _blocked_times_kernel(ct, kernel)
  # A data dependency on d_x (x is unchanged: 0 * a finite sum is 0). XLA drops
  # lax.optimization_barrier before it orders buffers, so the barrier does not do this.
  x = x + 0.0 * jnp.sum(d_x)
  if rows <= FUSED_ROWS:
    d_kernel = sum(ct[i][:, None] * x[i][None, :] for i in range(rows))
    d_bias = sum(ct[i] for i in range(rows))
  else:
    d_kernel = jax.lax.dot_general(ct, x, (((0,), (0,)), ((), ())))
    d_bias = ct.sum(0)
  return d_x, d_kernel, d_bias


wide_dense.defvjp(_forward, _backward)


def _blocked_times_kernel(ct, kernel):
  """ct [k, m] @ kernel [m, n] -> [k, n], the contraction over m cut into blocks of kernel rows."""
  (rows, m), n = ct.shape, kernel.shape[1]
  blocks = block_count(m, n)
  ct_blocks = ct.reshape(rows, blocks, m // blocks).transpose(1, 0, 2)
  per_block = jax.lax.dot_general(ct_blocks, kernel.reshape(blocks, m // blocks, n),
                                  (((2,), (1,)), ((0,), (0,))))
  return per_block.sum(0)


def block_count(m, n):
  """The divisor of m cutting an [m, n] float32 kernel into blocks nearest BLOCK_BYTES (or 1)."""
  target = max(1, BLOCK_BYTES // (4 * n))  # kernel rows per block
  divisors = [d for d in range(1, int(np.sqrt(m)) + 1) if m % d == 0]
  sizes = sorted(set(divisors + [m // d for d in divisors]))
  rows = min(sizes, key=lambda s: abs(np.log(s / target)))
  return m // rows if target / 4 <= rows <= target * 4 else 1
