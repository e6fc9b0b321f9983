"""Dense and conv layers initialised as PyTorch's, as in the reference implementations."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from hypermask_jax import backend

# kaiming-uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)): PyTorch's default weight init.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def torch_bias_init(fan_in):
  """uniform(+-1/sqrt(fan_in)): PyTorch's default bias init."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def torch_dense(features, fan_in, name=None, generated=False):
  """nn.Dense with PyTorch's nn.Linear init.

  generated: the kernel is a hypernetwork's output, the transpose of a tensor
  in PyTorch's [out, in] layout (layout.split); it is multiplied by
  `dot_generated_kernel`, which never transposes it back.
  """
  return nn.Dense(features, name=name, kernel_init=TORCH_KERNEL_INIT,
                  bias_init=torch_bias_init(fan_in),
                  dot_general=_dense_dot_generated_kernel if generated else None)


def _dense_dot_generated_kernel(x, kernel, dimension_numbers, precision=None,
                                preferred_element_type=None):
  """nn.Dense's dot_general hook: x [..., in] @ kernel [in, out] by dot_generated_kernel."""
  del dimension_numbers, precision, preferred_element_type  # nn.Dense's: contract x's last axis
  return dot_generated_kernel(x, kernel)


@jax.custom_vjp
def dot_generated_kernel(x, kernel):
  """x [..., in] @ kernel [in, out], for a kernel that is the transpose of an [out, in] tensor.

  Every product runs on kernel.T, so the transposes cancel and no copy of the
  kernel or of its gradient is made. With nn.Dense's own dot, XLA:CPU (jax
  0.10.2) copied each generated kernel to [in, out] and copied its gradient
  back: 1.2 of the 16 ms of the published HNET Permuted MNIST step at task 1,
  0.2 of 3.4 ms for HNET Split MNIST (A/B in one process). Values and
  gradients equal nn.Dense's up to float rounding (tests/test_hnet.py).
  """
  return jax.lax.dot_general(x, kernel.T, (((x.ndim - 1,), (1,)), ((), ())))


def _dot_generated_kernel_forward(x, kernel):
  return dot_generated_kernel(x, kernel), (x, kernel.T)


def _dot_generated_kernel_backward(residuals, ct):
  x, kernel_t = residuals  # kernel_t: [out, in]
  batch = tuple(range(x.ndim - 1))
  d_kernel_t = jax.lax.dot_general(ct, x, ((batch, batch), ((), ())))  # [out, in]
  return ct @ kernel_t, d_kernel_t.T


dot_generated_kernel.defvjp(_dot_generated_kernel_forward, _dot_generated_kernel_backward)


class Conv3x3(nn.Module):
  """A 3x3 conv with bias, PyTorch's nn.Conv2d init and its symmetric zero padding, on NHWC.

  backend.conv() picks how: im2col + matmul (the CPU default: XLA:CPU runs the
  gradient convolutions 15-40x slower inside a loop, jax-ml/jax#12868, and the
  training steps run inside one) or XLA's convolution (cuDNN on GPU). The two
  agree up to float rounding (tests/test_cifar.py runs both on CPU).
  """
  features: int
  stride: int = 1
  padding: int = 1

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', TORCH_KERNEL_INIT, (3, 3, channels, self.features))
    bias = self.param('bias', torch_bias_init(9 * channels), (self.features,))
    if backend.conv() == 'im2col':
      return im2col_conv3x3(x, kernel, self.stride, self.padding) + bias
    pad = ((self.padding, self.padding),) * 2
    return jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, pad,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias


def im2col_conv3x3(x, kernel, stride, padding):
  """The 3x3 convolution as one matmul over the 9 shifted (strided) views of the padded input.

  (Nine separate matmuls, summed, made the published ResNet-20 HyperMask step
  1.4x slower on CPU, measured in the same process.)
  """
  _, h, w, channels = x.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_h, out_w = (h + 2 * padding - 3) // stride + 1, (w + 2 * padding - 3) // stride + 1
  columns = jnp.concatenate(
      [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
       for i in range(3) for j in range(3)], axis=-1)  # [N, out_h, out_w, 9 * C], (i, j, c) order
  return columns @ kernel.reshape(9 * channels, -1)
