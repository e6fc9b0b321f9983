"""Target networks: the Flax models whose params the hypernetworks mask or generate.

Every target is called as `target(x, tasks=0, train=False, valid=None)`:
`tasks` (a scalar, or one per example) picks the output head when the target
has one head per task (the baselines) and the row of per-task BatchNorm
statistics; `train` switches dropout and statistics updates on; `valid`
(bool [N]) marks the real examples of a padded evaluation batch, so that
BatchNorm's batch statistics ignore the padding. The output layer is named
'head' so its bias can be found by path.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hypermask_jax.layers import Conv3x3
from hypermask_jax.layers import linear
from hypermask_jax.layers import Linear
from hypermask_jax.layers import torch_bias_init
from hypermask_jax.layers import torch_weight_init


class Head(nn.Module):
  """The output layer: num_heads heads of num_classes outputs side by side, picked by `tasks`.

  `layers.Linear`'s params ('weight' [num_heads * num_classes, in], 'bias')
  and init. When one task picks the head for the whole batch (`tasks` a
  scalar: every method's training step but joint training's, and the
  evaluation), only that head's rows of the weight are multiplied; the other
  heads' logits, computed and then dropped, took 0.6 ms of the 14-18 ms
  published HNET Permuted MNIST step (10 heads of a 1000-unit layer, in its
  forward, input gradient and kernel gradient). The rows are the weight's
  leading axis, so the head's gradient is written as a slice of the [out, in]
  tensor the hypernetwork generates (sliced on the columns of an [in, out]
  kernel, it was written into zeros and transposed element by element:
  Permuted MNIST-100, 100 heads of 10 x 1000, 4 of the 28 ms step at task 1).
  """
  num_classes: int
  num_heads: int = 1

  @nn.compact
  def __call__(self, x, tasks):
    fan_in, features = x.shape[-1], self.num_classes * self.num_heads
    weight = self.param('weight', torch_weight_init, (features, fan_in))
    bias = self.param('bias', torch_bias_init(fan_in), (features,))
    one_head = self.num_heads > 1 and jnp.ndim(tasks) == 0
    if one_head:
      start = jnp.asarray(tasks, jnp.int32) * self.num_classes
      weight = jax.lax.dynamic_slice_in_dim(weight, start, self.num_classes, axis=0)
      bias = jax.lax.dynamic_slice_in_dim(bias, start, self.num_classes)
    logits = linear(x, weight) + bias
    if self.num_heads == 1 or one_head:
      return logits
    logits = logits.reshape(x.shape[0], self.num_heads, self.num_classes)
    heads = jnp.broadcast_to(jnp.asarray(tasks, jnp.int32), (x.shape[0],))
    return jnp.take_along_axis(logits, heads[:, None, None], axis=1)[:, 0]


class MLP(nn.Module):
  """ReLU MLP over the flattened input."""
  hidden: Sequence[int]
  num_classes: int
  num_heads: int = 1

  @nn.compact
  def __call__(self, x, tasks=0, train=False, valid=None):
    del train, valid
    x = x.reshape(x.shape[0], -1)
    for i, features in enumerate(self.hidden):
      x = nn.relu(Linear(features, name=f'dense_{i}')(x))
    return Head(self.num_classes, self.num_heads, name='head')(x, tasks)


class BatchNorm(nn.Module):
  """BatchNorm whose scale and offset are shared by all tasks (never masked nor generated).

  By default it normalises with the batch's statistics in training and in
  evaluation alike and keeps none (the reference). With `running`, it keeps
  running statistics per task ([max_tasks, C], PyTorch's momentum 0.1 and
  unbiased variance), updates the current task's row in training and
  normalises with it in evaluation.
  """
  running: bool = False
  max_tasks: int = 1
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, tasks, train, valid=None):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    offset = self.param('bias', nn.initializers.zeros, (channels,))
    if self.running:
      means = self.variable('batch_stats', 'mean', jnp.zeros, (self.max_tasks, channels))
      variances = self.variable('batch_stats', 'var', jnp.ones, (self.max_tasks, channels))
    if self.running and not train:
      mean, var = means.value[tasks], variances.value[tasks]
    else:
      weight = jnp.ones(x.shape[0], x.dtype) if valid is None else valid.astype(x.dtype)
      y, mean, var = batch_normalize(x, weight, scale, offset, self.epsilon)
      if self.running and not self.is_initializing():
        count = jnp.sum(weight) * (x.size // (x.shape[0] * channels))
        unbiased = var * count / jnp.maximum(count - 1, 1)
        m = self.momentum
        means.value = means.value.at[tasks].set((1 - m) * means.value[tasks] + m * mean)
        variances.value = variances.value.at[tasks].set(
            (1 - m) * variances.value[tasks] + m * unbiased)
      return y
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + offset


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_normalize(x, weight, scale, offset, epsilon):
  """(y, mean, var): x [N, ..., C] normalised by its weighted batch statistics.

  mean and var are over all axes but the last, each example weighted by
  weight [N] (1, or 0 for an evaluation batch's padding); y = (x - mean) *
  rsqrt(var + epsilon) * scale + offset. The gradient is written out
  (_batch_normalize_backward) so that it takes two passes over x and the
  output gradient: one for the two sums over the batch, one for x's
  gradient, where JAX's derivative of the same expressions made XLA:CPU
  run more reductions and passes. The published ResNet-20 step at task 1
  took 307.6 -> 277.9 and 299.7 -> 281.8 ms with it (2-core Intel Xeon,
  experiments/compare_checkouts.py against the commit before, medians of
  two sittings). The forward values are the same; the gradients agree
  with JAX's derivative up to float rounding (tests/test_cifar.py).
  """
  return _batch_normalize_forward(x, weight, scale, offset, epsilon)[0]


def _batch_normalize_forward(x, weight, scale, offset, epsilon):
  axes = tuple(range(x.ndim - 1))
  weight = weight.reshape((-1,) + (1,) * (x.ndim - 1))
  count = jnp.sum(weight) * (x.size // (x.shape[0] * x.shape[-1]))
  mean = jnp.sum(x * weight, axes) / count
  var = jnp.sum(jnp.square(x - mean) * weight, axes) / count
  y = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + offset
  return (y, mean, var), (x, weight, count, mean, var, scale)


def _batch_normalize_backward(epsilon, residuals, cts):
  x, weight, count, mean, var, scale = residuals
  ct, ct_mean, ct_var = cts
  axes = tuple(range(x.ndim - 1))
  rstd = jax.lax.rsqrt(var + epsilon)
  centered = x - mean
  d_offset = jnp.sum(ct, axes)
  d_scale = jnp.sum(ct * (centered * rstd), axes)
  share = weight / count  # each entry's part in the mean and the variance
  d_x = (rstd * scale * (ct - share * (d_offset + centered * rstd * d_scale))
         + share * (2 * ct_var * centered + ct_mean))
  return d_x, None, d_scale, d_offset


batch_normalize.defvjp(_batch_normalize_forward, _batch_normalize_backward)


class BasicBlock(nn.Module):
  """conv -> BN -> ReLU -> conv -> BN, + the option-A shortcut, -> ReLU."""
  features: int
  stride: int
  norm: dict  # BatchNorm's fields

  @nn.compact
  def __call__(self, x, tasks, train, valid):
    y = Conv3x3(self.features, self.stride, name='conv0')(x)
    y = nn.relu(BatchNorm(**self.norm, name='bn0')(y, tasks, train, valid))
    y = Conv3x3(self.features, name='conv1')(y)
    y = BatchNorm(**self.norm, name='bn1')(y, tasks, train, valid)
    return nn.relu(y + option_a_shortcut(x, self.features, self.stride))


def option_a_shortcut(x, features, stride):
  """The parameter-free shortcut: subsample space by `stride`, zero-pad channels evenly."""
  x = x[:, ::stride, ::stride]
  extra = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResNet20(nn.Module):
  """CIFAR ResNet-20: stem conv 16, 3 stages x 3 basic blocks of 16/32/64 x width channels."""
  num_classes: int
  num_heads: int = 1
  width: int = 2
  running_stats: bool = False
  max_tasks: int = 1

  @nn.compact
  def __call__(self, x, tasks=0, train=False, valid=None):
    norm = {'running': self.running_stats, 'max_tasks': self.max_tasks}
    x = Conv3x3(16, name='conv_stem')(x)
    x = nn.relu(BatchNorm(**norm, name='bn_stem')(x, tasks, train, valid))
    for stage, base in enumerate((16, 32, 64)):
      for block in range(3):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(base * self.width, stride, norm, name=f'stage{stage}_block{block}')(
            x, tasks, train, valid)
    return Head(self.num_classes, self.num_heads, name='head')(jnp.mean(x, axis=(1, 2)), tasks)


class ZenkeNet(nn.Module):
  """The conv net of Zenke et al. (2017): two conv-conv-pool(-dropout) stages, Dense 512, head.

  dropout='architecture' drops whole channels (Dropout2d, 0.25) after each
  stage's pooling and elements (0.5) after the dense layer, as the network is
  defined; 'off' trains without dropout, as the published HyperMask numbers
  were produced (the reference left the network in evaluation mode after the
  first validation, so its dropout acted only in each task's first step).
  The conv features are flattened channel-major (C, H, W), as PyTorch does, so
  that the dense weight is laid out as the reference's.

  The reference's 64x64 variant (Tiny ImageNet) has 64 channels in both stages
  and no hidden Dense layer: the head reads the 14 x 14 x 64 = 12,544 features.
  """
  num_classes: int
  num_heads: int = 1
  dropout: str = 'off'
  channels: Sequence[int] = (32, 64)  # of the two conv stages
  dense: int = 512  # the hidden Dense layer's width; 0: none

  @nn.compact
  def __call__(self, x, tasks=0, train=False, valid=None):
    del valid
    drop = train and self.dropout == 'architecture'
    for stage, features in enumerate(self.channels):
      x = nn.relu(Conv3x3(features, name=f'conv{stage}_0')(x))
      x = nn.relu(Conv3x3(features, padding=0, name=f'conv{stage}_1')(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.Dropout(0.25, broadcast_dims=(1, 2), deterministic=not drop)(x)  # whole channels
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    if self.dense:
      x = nn.relu(Linear(self.dense, name='dense')(x))
      x = nn.Dropout(0.5, deterministic=not drop)(x)
    return Head(self.num_classes, self.num_heads, name='head')(x, tasks)


ZENKENET_64 = {'channels': (64, 64), 'dense': 0}  # the reference's ZenkeNet for 64x64 inputs


def build(config, num_classes, num_heads=1):
  """The target network config.target names."""
  common = dict(num_classes=num_classes, num_heads=num_heads)
  if config.target == 'mlp':
    return MLP(hidden=tuple(config.target_hidden), **common)
  if config.target == 'resnet20':
    return ResNet20(width=config.width_factor, running_stats=config.batch_norm == 'running',
                    max_tasks=config.max_tasks, **common)
  shape = ZENKENET_64 if config.dataset == 'tiny_imagenet' else {}
  return ZenkeNet(dropout=config.zenkenet_dropout, **shape, **common)


def uses_batch_statistics_at_eval(target):
  """Whether evaluation must see a task's whole split as one batch (BatchNorm 'batch' mode)."""
  return isinstance(target, ResNet20) and not target.running_stats
