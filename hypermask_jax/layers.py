"""Dense and conv layers initialised as PyTorch's, as in the reference implementations."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import backend
from hypermask_jax import cpu_kernels

# kaiming-uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)): PyTorch's default weight init.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def torch_bias_init(fan_in):
  """uniform(+-1/sqrt(fan_in)): PyTorch's default bias init."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def torch_dense(features, fan_in, name=None):
  """nn.Dense ('kernel' [in, out]) with PyTorch's nn.Linear init: the hypernetworks' own layers."""
  return nn.Dense(features, name=name, kernel_init=TORCH_KERNEL_INIT,
                  bias_init=torch_bias_init(fan_in))


def torch_weight_init(key, shape, dtype=jnp.float32):
  """PyTorch's nn.Linear init of a 'weight' [out, in]: TORCH_KERNEL_INIT's [in, out], transposed.

  The values are those `torch_dense` gives its [in, out] kernel from the same key.
  """
  return TORCH_KERNEL_INIT(key, shape[::-1], dtype).T


class Linear(nn.Module):
  """A target's Dense layer, laid out as PyTorch's nn.Linear: 'weight' [out, in], 'bias' [out].

  The hypernetworks' flat outputs hold every target tensor in PyTorch's
  layout (layout.py), so HyperMask's masks and HNET's generated weights are
  [out, in] tensors. Stored as Flax's [in, out] kernel, the target made
  XLA:CPU (jax 0.10.2) transpose them: HyperMask's masks were transposed in
  their fusions, the kernel gradient was copied back to [out, in] for the
  hypernetwork and Adam read the target's own gradient transposed; HNET's
  generated kernels needed a hand-written product to avoid copies. With the
  weight in [out, in], every product reads it as it is (x @ weight^T, and
  autodiff's gradients ct @ weight and ct^T @ x, both laid out as their
  operands). The param is named 'weight', not 'kernel', so that a checkpoint
  of the [in, out] layout is refused by its path instead of being read
  transposed.
  """
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    weight = self.param('weight', torch_weight_init, (self.features, fan_in))
    bias = self.param('bias', torch_bias_init(fan_in), (self.features,))
    return linear(x, weight) + bias


def linear(x, weight):
  """x [..., in] @ weight [out, in]^T -> [..., out]."""
  return jax.lax.dot_general(x, weight, (((x.ndim - 1,), (1,)), ((), ())))


class Conv3x3(nn.Module):
  """A 3x3 conv with bias, PyTorch's nn.Conv2d init and its symmetric zero padding, on NHWC.

  backend.conv() picks how (they agree up to float rounding; tests/test_cifar.py
  runs all four on CPU):
  - 'ffi' (the CPU default where cpu_kernels.py's kernels build):
    `kernel_conv3x3`, the C++ kernels, for float32, stride 1 and channel
    counts that are multiples of 16 (all of ResNet-20's and ZenkeNet's but
    the first layer's 3 inputs); the other convs as 'nhwc_vjp'.
  - 'nhwc_vjp': XLA's convolution with `nhwc_vjp_conv3x3`'s gradient; a
    strided conv as im2col.
  - 'im2col': every conv as im2col + matmul.
  - 'xla': XLA's convolution and JAX's own gradient (cuDNN on GPU, the MXU on TPU).
  """
  features: int
  stride: int = 1
  padding: int = 1

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', TORCH_KERNEL_INIT, (3, 3, channels, self.features))
    bias = self.param('bias', torch_bias_init(9 * channels), (self.features,))
    form = backend.conv()
    if form == 'xla':
      pad = ((self.padding, self.padding),) * 2
      return jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, pad,
                                          dimension_numbers=NHWC) + bias
    if (form == 'ffi' and self.stride == 1 and channels % 16 == 0 and self.features % 16 == 0
        and x.dtype == jnp.float32):
      return kernel_conv3x3(x, kernel, self.padding) + bias
    if form in ('ffi', 'nhwc_vjp') and self.stride == 1:
      return nhwc_vjp_conv3x3(x, kernel, self.padding) + bias
    return im2col_conv3x3(x, kernel, self.stride, self.padding) + bias


NHWC = ('NHWC', 'HWIO', 'NHWC')  # conv_general_dilated's dimension numbers: input, kernel, output


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def nhwc_vjp_conv3x3(x, kernel, padding):
  """XLA's 3x3 convolution, stride 1, whose gradients are two more convolutions in its form.

  Inside a loop (the training steps run inside one) XLA:CPU computes a
  convolution with the library kernels (Eigen's, YNNPACK's) only in the
  canonical form of the forward pass: input NHWC, kernel HWIO, output NHWC.
  The gradient convolutions JAX derives have other dimension orders (the
  kernel's as OI, the input's gradient with batch and features swapped), and
  XLA:CPU runs them with its generic loop emitter, 15-40x slower
  (jax-ml/jax#12868). Here both are written in the canonical form:
  - the input's gradient: the output gradient convolved with the kernel
    flipped in space and transposed to [3, 3, out, in], padded 2 - padding;
  - the kernel's gradient: the input as [C, H, W, N] (channels as the batch,
    examples as the features) convolved with the output gradient as
    [H', W', N, F] (a window the output's size), giving [C, 3, 3, F]; where
    that window is large, as a sum over pieces of the batch (kernel_grad_pieces).
  On the 2-core AMD EPYC (Zen 5), four training steps of one conv
  (`experiments/benchmark_conv.py`, two runs; its loss then left the kernel's
  gradient out of the loop, so these time the input's) took 19-21 against
  48-60 ms as im2col at 32 x 32 x 32 channels, 15-17 against 22-31 ms at
  16 x 16 x 64, 7.9-8.9 against 10-12 ms at 8 x 8 x 128 (with JAX's own
  gradient: 794-813, 421-467 and 321-335 ms). With both gradients, on a
  2-core Intel Xeon (Emerald Rapids): 87, 99 and 52 ms against im2col's 145,
  86 and 51 ms (and `kernel_conv3x3`'s 55, 41 and 42 ms). A strided conv stays
  im2col (Conv3x3): written this way, its input gradient is a convolution of
  the output gradient dilated by the stride, which took 1.0-1.3x im2col's
  time where it was tried, alone.
  """
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2,
                                      dimension_numbers=NHWC)


def _nhwc_vjp_forward(x, kernel, padding):
  return nhwc_vjp_conv3x3(x, kernel, padding), (x, kernel)


def _nhwc_vjp_backward(padding, residuals, ct):
  x, kernel = residuals
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [3, 3, out, in]
  d_x = jax.lax.conv_general_dilated(ct, flipped, (1, 1), ((2 - padding, 2 - padding),) * 2,
                                     dimension_numbers=NHWC)
  pieces = kernel_grad_pieces(ct)
  size = ct.shape[0] // pieces
  d_kernel = sum(jax.lax.conv_general_dilated(x[i:i + size].transpose(3, 1, 2, 0),
                                              ct[i:i + size].transpose(1, 2, 0, 3),
                                              (1, 1), ((padding, padding),) * 2,
                                              dimension_numbers=NHWC)  # [C, 3, 3, F]
                 for i in range(0, ct.shape[0], size))
  return d_x, d_kernel.transpose(1, 2, 0, 3)


nhwc_vjp_conv3x3.defvjp(_nhwc_vjp_forward, _nhwc_vjp_backward)


KERNEL_GRAD_GROUPS = 8  # kernel_conv3x3: the kernel gradient's fixed groups of images


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def kernel_conv3x3(x, kernel, padding):
  """The 3x3 convolution, stride 1, and its gradients by cpu_kernels.cc's Conv3x3 and
  Conv3x3KernelGrad (float32 x [N, H, W, C], kernel [3, 3, C, F], C and F multiples of 16, or
  of the CPU's vector and 8; padding 0-2).

  Each output tile (8 positions of a row, 16 or 32 features) sums its 9 C terms in
  registers, from the image copied with its zero border into a buffer that stays in
  cache. The input's gradient is the same kernel's convolution of the output
  gradient with the flipped, transposed kernel (as nhwc_vjp_conv3x3); the kernel's
  gradient sums each image's positions in order, the images in 8 fixed groups, then
  the groups in order, so the result does not depend on the threads. XLA:CPU's
  library (YNNPACK) ran ResNet-20's convolutions at 100-240 GFLOP/s in the published
  step, the kernels' gradients slowest (measured in backend.py, HYPERMASK_CONV).
  The sums' order differs from XLA's, so the results differ by float rounding
  (tests/test_cpu_kernels.py, tests/test_cifar.py).
  """
  return _conv3x3_call(x, kernel, padding)


def _conv3x3_call(x, kernel, padding):
  cpu_kernels.library()  # registers the kernels with XLA
  n, h, w, _ = x.shape
  out = jax.ShapeDtypeStruct((n, h + 2 * padding - 2, w + 2 * padding - 2, kernel.shape[-1]),
                             x.dtype)
  return jax.ffi.ffi_call(cpu_kernels.TARGETS['Conv3x3'], out, vmap_method='broadcast_all')(
      x, kernel, padding=np.int64(padding))


def _kernel_conv_forward(x, kernel, padding):
  return kernel_conv3x3(x, kernel, padding), (x, kernel)


def _kernel_conv_backward(padding, residuals, ct):
  x, kernel = residuals
  d_x = _conv3x3_call(ct, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), 2 - padding)
  groups = min(KERNEL_GRAD_GROUPS, x.shape[0])
  d_kernel, _ = jax.ffi.ffi_call(
      cpu_kernels.TARGETS['Conv3x3KernelGrad'],
      (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype),
       jax.ShapeDtypeStruct((groups, *kernel.shape), kernel.dtype)),  # the groups' sums
      vmap_method='broadcast_all')(x, ct, padding=np.int64(padding))
  return d_x, d_kernel


kernel_conv3x3.defvjp(_kernel_conv_forward, _kernel_conv_backward)


KERNEL_GRAD_PIECE_BYTES = 2 ** 20


def kernel_grad_pieces(ct):
  """Into how many pieces of the batch `nhwc_vjp_conv3x3` splits its kernel's gradient.

  The kernel's gradient is a convolution whose kernel is the output gradient
  ct as [H', W', N, F] (a window the output's size, with the examples as its
  input features) and whose output is small ([C, 3, 3, F]). XLA:CPU's library
  (YNNPACK) ran it 2.3-3x slower once that window outgrew a core's cache:
  on a 2-core Intel Xeon (Emerald Rapids, 2 MiB of L2 per core), with
  ResNet-20's batch of 32, alone, 17.9-20.0 ms at 32 x 32 x 32 channels
  (a 4 MiB window), against 6.5-7.7 ms as a sum of 4 convolutions of 8
  examples each (1 MiB each) and 11-15 ms as 2; 17.7 ms at 16 x 16 x 64
  (2 MiB) against 6.8 ms as 2 and 6.0 as 4; at 8 x 8 x 128 (1 MiB) the whole
  batch at once was the fastest (3.5-4.3 ms, 4.4-4.8 as 2). So the batch is
  split into the fewest equal pieces whose part of ct holds at most
  KERNEL_GRAD_PIECE_BYTES. The sum rounds differently from the one
  convolution (tests/test_cifar.py compares both with JAX's gradient).
  """
  examples, ct_bytes = ct.shape[0], ct.size * ct.dtype.itemsize
  return next(pieces for pieces in range(1, examples + 1)
              if examples % pieces == 0 and ct_bytes / pieces <= KERNEL_GRAD_PIECE_BYTES
              or pieces == examples)
