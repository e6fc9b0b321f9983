"""A PyTorch HyperMask train step shaped like the reference implementation, for timing only.

Written from ../shared/SPEC.md section 1.1, not from the reference's code: an
HMLP hypernetwork, masks |tanh(h)| over the target weights (output bias
unmasked), and, as in the reference, the output regulariser as a Python loop
that runs the hypernetwork once per previous task. Used by
experiments/benchmark_step.py --compare_torch.
"""

import math
import time

import torch
from torch import nn
import torch.nn.functional as F


class TorchHyperMask:
  """HyperMask's parameters and one Adam step, in PyTorch."""

  def __init__(self, config, input_dim, num_classes):
    sizes = [input_dim, *config.target_hidden, num_classes]
    self.layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    self.target = nn.ParameterList([p for layer in self.layers for p in (layer.weight, layer.bias)])
    self.masked = list(self.target)[:-1]  # every weight and bias but the output bias
    self.num_outputs = sum(p.numel() for p in self.masked)
    self.embeddings = nn.Parameter(torch.randn(config.max_tasks, config.embedding_size))
    hidden = [config.embedding_size, *config.hnet_hidden]
    self.hnet = nn.Sequential(*[m for a, b in zip(hidden[:-1], hidden[1:])
                                for m in (nn.Linear(a, b), nn.ELU())],
                              nn.Linear(hidden[-1], self.num_outputs))
    self.params = [self.embeddings, *self.hnet.parameters(), *self.target]
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
    return pieces + [torch.ones(())]

  def step(self, x, y, task):
    masks = self.masks(task)
    weights = [p * m for p, m in zip(self.target, masks)]
    h = x
    for i in range(len(self.layers)):
      h = F.linear(h, weights[2 * i], weights[2 * i + 1])
      h = F.relu(h) if i < len(self.layers) - 1 else h
    loss = F.cross_entropy(h, y)
    if task > 0:
      reg = sum(torch.sum((self.hnet(self.embeddings[j]) - self.hnet_targets[j]) ** 2)
                for j in range(task)) / task
      l1 = sum(torch.sum(torch.abs((p - s) * m))
               for p, s, m in zip(self.target, self.start, masks))
      loss = loss + self.config.beta / max(1, task) * reg + self.config.lam * l1
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss


def time_steps(config, input_dim, num_classes, task, steps, repeats):
  """Seconds per step at `task`: the mean over `steps` steps, best of `repeats`, after a warm-up."""
  torch.manual_seed(0)
  model = TorchHyperMask(config, input_dim, num_classes)
  x = torch.rand(config.batch_size, input_dim)
  y = torch.randint(0, num_classes, (config.batch_size,))
  model.step(x, y, task)
  best = math.inf
  for _ in range(repeats):
    tic = time.perf_counter()
    for _ in range(steps):
      model.step(x, y, task)
    best = min(best, (time.perf_counter() - tic) / steps)
  return best
