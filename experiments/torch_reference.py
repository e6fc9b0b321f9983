"""A PyTorch HyperMask train step shaped like the reference implementation, for timing only.

Written from ../shared/SPEC.md sections 1.1 and 2, not from the reference's
code: an HMLP hypernetwork, masks |tanh(h)| over the target's conv and dense
weights (the output bias and BatchNorm unmasked), the target (MLP, ResNet-20
or ZenkeNet) run functionally with the masked weights, and, as in the
reference, the output regulariser as a Python loop that runs the hypernetwork
once per previous task. Used by experiments/benchmark_step.py --compare_torch.
"""

import math
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def mlp(config, input_shape, num_classes):
  """(masked tensors, head bias, shared params, forward(masked weights, x)) of the MLP."""
  sizes = [int(np.prod(input_shape)), *config.target_hidden, num_classes]
  layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
  masked = [p for layer in layers for p in (layer.weight, layer.bias)][:-1]

  def forward(w, x):
    h = x.flatten(1)
    for i in range(len(layers) - 1):
      h = F.relu(F.linear(h, w[2 * i], w[2 * i + 1]))
    return F.linear(h, w[-1], layers[-1].bias)
  return masked, layers[-1].bias, [], forward


def resnet20(config, num_classes):
  """ResNet-20 as SPEC section 2: conv (bias) -> BN (batch statistics) -> + option-A shortcut."""
  convs, cin = [(3, 16, 1)], 16
  for stage, base in enumerate((16, 32, 64)):
    for block in range(3):
      cout = base * config.width_factor
      convs += [(cin, cout, 2 if stage and not block else 1), (cout, cout, 1)]
      cin = cout
  modules = [nn.Conv2d(a, b, 3, s, 1) for a, b, s in convs]
  norms = [nn.BatchNorm2d(b, track_running_stats=False) for _, b, _ in convs]
  head = nn.Linear(cin, num_classes)
  masked = [p for m in modules for p in (m.weight, m.bias)] + [head.weight]

  def forward(w, x):
    conv = lambda i, h: norms[i](F.conv2d(h, w[2 * i], w[2 * i + 1], convs[i][2], 1))
    h = F.relu(conv(0, x))
    for i in range(1, len(convs), 2):
      y = conv(i + 1, F.relu(conv(i, h)))
      stride, extra = convs[i][2], convs[i][1] - convs[i][0]
      shortcut = F.pad(h[:, :, ::stride, ::stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))
      h = F.relu(y + shortcut)
    return F.linear(h.mean((2, 3)), w[-1], head.bias)
  return masked, head.bias, [p for n in norms for p in n.parameters()], forward


def zenkenet(num_classes):
  """ZenkeNet as SPEC section 2."""
  modules = [nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3),
             nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3), nn.Linear(2304, 512)]
  head = nn.Linear(512, num_classes)
  masked = [p for m in modules for p in (m.weight, m.bias)] + [head.weight]

  def forward(w, x):
    h = x
    for stage in range(2):
      h = F.relu(F.conv2d(h, w[4 * stage], w[4 * stage + 1], padding=1))
      h = F.relu(F.conv2d(h, w[4 * stage + 2], w[4 * stage + 3]))
      h = F.dropout(F.max_pool2d(h, 2), 0.25, training=True)
    h = F.dropout(F.relu(F.linear(h.flatten(1), w[8], w[9])), 0.5, training=True)
    return F.linear(h, w[10], head.bias)
  return masked, head.bias, [], forward


class TorchHyperMask:
  """HyperMask's parameters and one Adam step, in PyTorch."""

  def __init__(self, config, input_shape, num_classes):
    if config.target == 'mlp':
      target = mlp(config, input_shape, num_classes)
    elif config.target == 'resnet20':
      target = resnet20(config, num_classes)
    else:
      target = zenkenet(num_classes)
    self.masked, head_bias, shared, self.forward = target
    self.target = [*self.masked, head_bias]  # what the L1 drift covers
    self.num_outputs = sum(p.numel() for p in self.masked)
    self.embeddings = nn.Parameter(torch.randn(config.max_tasks, config.embedding_size))
    hidden = [config.embedding_size, *config.hnet_hidden]
    self.hnet = nn.Sequential(*[m for a, b in zip(hidden[:-1], hidden[1:])
                                for m in (nn.Linear(a, b), nn.ELU())],
                              nn.Linear(hidden[-1], self.num_outputs))
    self.params = [self.embeddings, *self.hnet.parameters(), *self.target, *shared]
    self.optimizer = torch.optim.Adam(self.params, lr=config.learning_rate)
    self.config = config
    self.begin_task()

  def begin_task(self):
    with torch.no_grad():
      self.hnet_targets = [self.hnet(e) for e in self.embeddings]
      self.start = [p.detach().clone() for p in self.target]

  def masks(self, task):
    flat = torch.abs(torch.tanh(self.hnet(self.embeddings[task])))
    pieces = [m.view_as(p) for m, p in zip(torch.split(flat, [p.numel() for p in self.masked]),
                                           self.masked)]
    if self.config.sparsity > 0:
      pieces = [torch.where(m >= torch.quantile(m.detach(), self.config.sparsity / 100), m, 0.0)
                for m in pieces]
    return pieces

  def step(self, x, y, task):
    masks = self.masks(task)
    loss = F.cross_entropy(self.forward([p * m for p, m in zip(self.masked, masks)], x), y)
    if task > 0:
      reg = sum(torch.sum((self.hnet(self.embeddings[j]) - self.hnet_targets[j]) ** 2)
                for j in range(task)) / task
      drift_masks = masks + [torch.ones(())] if self.config.l1_masked else [1.0] * len(self.target)
      l1 = sum(torch.sum(torch.abs((p - s) * m))
               for p, s, m in zip(self.target, self.start, drift_masks))
      loss = loss + self.config.beta / max(1, task) * reg + self.config.lam * l1
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss


def time_steps(config, input_shape, num_classes, task, steps, repeats):
  """Seconds per step at `task`: the mean over `steps` steps, best of `repeats`, after a warm-up."""
  torch.manual_seed(0)
  model = TorchHyperMask(config, input_shape, num_classes)
  shape = (input_shape[-1], *input_shape[:-1]) if len(input_shape) == 3 else input_shape  # NCHW
  x = torch.rand(config.batch_size, *shape)
  y = torch.randint(0, num_classes, (config.batch_size,))
  model.step(x, y, task)
  best = math.inf
  for _ in range(repeats):
    tic = time.perf_counter()
    for _ in range(steps):
      model.step(x, y, task)
    best = min(best, (time.perf_counter() - tic) / steps)
  return best
