"""The reference implementations' training step in PyTorch, assembled from hypnettorch's public API.

For timing and memory comparisons only (`pip install -r requirements-torch.txt`).
Built as the published PyTorch code builds it, from ../shared/SPEC.md (not
from that code):

- HyperMask: hypnettorch's HMLP (ELU, one embedding per task) outputs a raw
  tensor for every weight of the target (its output bias included); the
  target is hypnettorch's MLP, ResNet (n=3, k=width_factor, batch statistics,
  no running ones) or ZenkeNet, holding its own weights, run with W * M_t
  where M_t = |tanh(h)| cut below the per-tensor `sparsity` percentile
  (torch.quantile), the output bias unmasked; loss CE + beta / max(1, t) *
  R_h + lambda * L1 drift; a fresh Adam per task over the hypernetwork (all
  embeddings) and the target.
- HNET: hypnettorch's ChunkedHMLP (or HMLP without chunks) generates every
  weight of a weightless MLP; loss CE + beta * R_h; a fresh Adam per task over
  the hypernetwork's unconditional weights and the current embedding
  (train_embeddings='current') or all embeddings. With `lookahead` (hypercl's
  published setting) R_h is taken at theta + dTheta, the step Adam would make
  from the task loss's gradient (hypnettorch.utils.optim_step.calc_delta_theta,
  detached), as hypercl's training loop does.
- output_heads='per_task': the MLP has num_classes x max_tasks outputs, all
  generated (and regularised); task t reads its own slice.
- R_h: hypnettorch.utils.hnet_regularizer: get_current_targets when a task
  starts, calc_fix_target_reg at every step (its Python loop over previous
  tasks, or over a random subset of reg_subset of them).

Inputs are flattened HWC images, as hypnettorch's networks take them. Everything
runs on DEVICE: the GPU where PyTorch sees one (as JAX then does), else the CPU.
"""

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from hypnettorch import hnets
from hypnettorch import mnets
from hypnettorch.utils import hnet_regularizer
from hypnettorch.utils import optim_step

# hypnettorch 0.0.4's Adam step (optim_step.calc_delta_theta) calls the deprecated
# Tensor.add_(Number, Tensor); the reference runs it as published, without PyTorch's warning.
warnings.filterwarnings('ignore', message='This overload of add_ is deprecated',
                        category=UserWarning)

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def synchronize():
  """Waits for the work queued on DEVICE (a GPU runs it asynchronously), before reading a clock."""
  if DEVICE.type == 'cuda':
    torch.cuda.synchronize()


def peak_bytes():
  """This process's peak memory: on a GPU PyTorch's peak allocation there, else the peak
  resident set."""
  if DEVICE.type == 'cuda':
    return torch.cuda.max_memory_allocated()
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) * 1024


def _target(config, input_shape, num_classes, own_weights):
  if config.target == 'mlp':
    heads = config.max_tasks if config.output_heads == 'per_task' else 1
    return mnets.MLP(n_in=int(np.prod(input_shape)), n_out=num_classes * heads,
                     hidden_layers=tuple(config.target_hidden), no_weights=not own_weights,
                     verbose=False)
  if not own_weights:
    raise NotImplementedError('the PyTorch reference runs HNET on MLP targets (its published '
                              f'configs); config.target={config.target!r}')
  if config.target == 'resnet20':
    return mnets.ResNet(in_shape=tuple(input_shape), num_classes=num_classes, n=3,
                        k=config.width_factor, use_batch_norm=True, bn_track_stats=False,
                        verbose=False)
  return mnets.ZenkeNet(in_shape=tuple(input_shape), num_classes=num_classes, arch='cifar',
                        verbose=False)


def _is_weight(mnet):
  """Per entry of mnet.param_shapes: a kernel or bias (True) or a BatchNorm parameter (False)."""
  try:
    return [meta['name'] in ('weight', 'bias') for meta in mnet.param_shapes_meta]
  except NotImplementedError:  # ZenkeNet keeps no meta: all its parameters are weights
    return [True] * len(mnet.param_shapes)


class TorchReference:
  """One config's networks, optimiser and step. Call begin_task(t), then train_step repeatedly."""

  def __init__(self, config, input_shape, num_classes):
    if config.method not in ('hypermask', 'hnet'):
      raise NotImplementedError(f'no PyTorch reference for method={config.method!r}')
    if config.reg_targets != 'stored':
      raise NotImplementedError('the PyTorch reference has no snapshot targets')
    if config.output_heads == 'per_task' and config.target != 'mlp':
      raise NotImplementedError('the PyTorch reference has per-task heads on MLP targets only')
    self.config = config
    self.hypermask = config.method == 'hypermask'
    self.mnet = _target(config, input_shape, num_classes, own_weights=self.hypermask).to(DEVICE)
    self.is_weight = _is_weight(self.mnet)
    self.num_classes = num_classes
    shapes = [s for s, w in zip(self.mnet.param_shapes, self.is_weight) if w]
    common = dict(cond_in_size=config.embedding_size, layers=tuple(config.hnet_hidden),
                  activation_fn=torch.nn.ELU() if config.hnet_activation == 'elu'
                  else torch.nn.ReLU(), num_cond_embs=config.max_tasks, verbose=False)
    if config.chunk_size:
      self.hnet = hnets.ChunkedHMLP(shapes, chunk_size=config.chunk_size,
                                    chunk_emb_size=config.chunk_embedding_size, **common)
    else:
      self.hnet = hnets.HMLP(shapes, **common)
    self.hnet.to(DEVICE)
    self.task = None

  def begin_task(self, task):
    """Regularisation targets and start-of-task weights; a fresh Adam (SPEC 1.1)."""
    self.task = task
    self.targets = hnet_regularizer.get_current_targets(task, self.hnet) if task else []
    if self.hypermask:
      self.start = [p.detach().clone() for p in self.mnet.internal_params]
      params = self.parameters()
    elif self.config.train_embeddings == 'current':
      params = [*self.hnet.unconditional_params, self.hnet.conditional_params[task]]
    else:
      params = list(self.hnet.parameters())
    self.optimizer = torch.optim.Adam(params, lr=self.config.learning_rate)

  def _weights(self, task, sparsity):
    """The target's weights for `task` (HyperMask: masked; HNET: generated) and the masks."""
    generated = self.hnet.forward(cond_id=task)
    if not self.hypermask:
      return generated, None
    masks = [torch.abs(torch.tanh(h)) for h in generated]
    if sparsity > 0:
      masks = [torch.where(m >= torch.quantile(m.detach().flatten(), sparsity / 100), m, 0.0)
               for m in masks]
    # The output bias's mask weights its L1 drift but is not applied (SPEC 2).
    applied = iter([*masks[:-1], torch.ones(())])
    out = [p * next(applied) if is_weight else p
           for p, is_weight in zip(self.mnet.internal_params, self.is_weight)]
    return out, masks

  def _logits(self, x, weights, task):
    logits = self.mnet.forward(x, weights=weights)
    if self.config.output_heads == 'per_task':
      return logits[:, task * self.num_classes:(task + 1) * self.num_classes]
    return logits

  def train_step(self, x, y, step):
    """One Adam step on a batch (x: float [B, D] flattened HWC inputs, y: int64 [B], on DEVICE)."""
    config, task = self.config, self.task
    sparsity = config.sparsity
    if task == 0:  # ramped over task 0 (SPEC 1.1)
      sparsity *= (step + 1) / config.steps_per_task
    weights, masks = self._weights(task, sparsity)
    loss = F.cross_entropy(self._logits(x, weights, task), y)
    self.optimizer.zero_grad(set_to_none=True)
    if task > 0 and not self.hypermask and config.lookahead:
      loss.backward()  # the task loss's gradient, from which Adam's step dTheta is computed
      d_theta = optim_step.calc_delta_theta(self.optimizer, False, detach_dt=True)
      reg = hnet_regularizer.calc_fix_target_reg(
          self.hnet, task, targets=self.targets,
          dTheta=d_theta[:len(self.hnet.unconditional_params)],
          batch_size=config.reg_subset or None)
      (config.beta * reg).backward()
      self.optimizer.step()
      return loss + config.beta * reg
    if task > 0:
      reg = hnet_regularizer.calc_fix_target_reg(self.hnet, task, targets=self.targets,
                                                 batch_size=config.reg_subset or None)
      if self.hypermask:
        own = [p for p, w in zip(self.mnet.internal_params, self.is_weight) if w]
        start = [s for s, w in zip(self.start, self.is_weight) if w]
        drift_masks = masks if config.l1_masked else [1.0] * len(own)
        l1 = sum(torch.sum(torch.abs((p - s) * m)) for p, s, m in zip(own, start, drift_masks))
        loss = loss + config.beta / task * reg + config.lam * l1
      else:
        loss = loss + config.beta * reg
    loss.backward()
    self.optimizer.step()
    return loss

  def parameters(self):
    return [*self.hnet.parameters(), *self.mnet.parameters()]

  @torch.no_grad()
  def accuracy(self, x, y, task, batch_size):
    """Accuracy (%) of task `task` on (x, y), evaluated in batches (full sparsity)."""
    weights, _ = self._weights(task, self.config.sparsity)
    x, y = x.to(DEVICE), y.to(DEVICE)
    hits = sum(int((self._logits(x[i:i + batch_size], weights, task).argmax(-1)
                    == y[i:i + batch_size]).sum()) for i in range(0, len(y), batch_size))
    return 100.0 * hits / len(y)


def step_timer(config, input_shape, num_classes, task, steps):
  """A function that runs `steps` steps at `task` and returns their mean in seconds per step.

  The model is built, and one step run as a warm-up, before it is returned,
  so that the caller can alternate its calls with its own timings.
  """
  torch.manual_seed(0)
  model = TorchReference(config, input_shape, num_classes)
  model.begin_task(task)
  x = torch.rand(config.batch_size, int(np.prod(input_shape)), device=DEVICE)
  y = torch.randint(0, num_classes, (config.batch_size,), device=DEVICE)
  model.train_step(x, y, 0)

  def time_chunk():
    synchronize()
    tic = time.perf_counter()
    for step in range(steps):
      model.train_step(x, y, step)
    synchronize()
    return (time.perf_counter() - tic) / steps
  return time_chunk
