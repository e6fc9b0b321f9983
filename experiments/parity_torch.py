"""Numeric parity with PyTorch: identical weights in hypnettorch's networks and in ours.

    pip install -r requirements-torch.txt
    python experiments/parity_torch.py

For each case, our hypernetwork's params are copied into hypnettorch's HMLP or
ChunkedHMLP (driven through its public API: `forward(cond_id=...,
weights=...)`) and the target runs as hypnettorch's MLP, ResNet or ZenkeNet
with the generated or masked weights. Around them, the losses are written in
PyTorch from their definitions (../shared/SPEC.md sections 1.1 and 1.2): the
semi-binary mask with its percentile, the output regulariser over previous
tasks, the L1 drift, HNET's lookahead. Both sides then compare, at task t=3
with the regularisation targets taken at the task's start and the parameters
moved since (a third of the entries left unmoved, where the L1 drift has no
gradient):

- the raw hypernetwork outputs of every task;
- the masks at sparsity 0 and 30, and on tensors built with ties at the cut;
- the loss and each term: cross-entropy, output regulariser, L1 drift;
- the gradient of every parameter;
- the parameters after one Adam step, both optimisers given the same (our)
  gradients: Adam's first step is -lr * g / (|g| + eps), which turns float32
  rounding in a gradient near eps = 1e-8 into a visible difference in its
  step, so the step is checked on its own and the gradients above.

Each quantity's difference is, for every tensor, max |ours - torch| /
max |torch| (the absolute difference where torch's tensor is all zeros), the
worst over the tensors. Every case runs in float64 in both frameworks, where
the check passes when every difference is below TOLERANCE, and in float32,
printed beside it with the difference between PyTorch's own float32 and
float64 results: in float32 the ResNet-20 gradients of PyTorch's CPU
convolutions are a few 1e-2 away from its float64 ones, so float32 cannot
resolve agreement to 1e-5 there.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable as a script

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from hypnettorch import hnets
from hypnettorch import mnets

from configs import permuted_mnist
from hypermask_jax import config_checks
from hypermask_jax import errors
from hypermask_jax import layout as layout_lib
from hypermask_jax import mask as mask_lib
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.methods import HNET
from hypermask_jax.methods import HyperMask

TOLERANCE = 1e-5
TASK = 3  # the task whose loss is compared: three previous tasks to regularise
BATCH = 6


def relative_difference(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = np.max(np.abs(theirs)) if theirs.size else 0.0
  diff = np.max(np.abs(ours - theirs)) if theirs.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def worst(ours, theirs):
  assert len(ours) == len(theirs)
  return max(relative_difference(a, b) for a, b in zip(ours, theirs))


def to_torch(x):
  return torch.from_numpy(np.array(x))


def to_numpy(tensors):
  return [t.detach().numpy() for t in tensors]


# --- The cases -------------------------------------------------------------------------------

def case_config(method, target, chunked, sparsity=0.0):
  """A small config of `method` (HyperMask's or hypercl's settings) on `target`."""
  config = permuted_mnist.get_config('small')
  config.update(dict(method=method, num_tasks=5, embedding_size=5, batch_size=BATCH,
                     steps_per_task=10, beta=0.05, lam=0.01, sparsity=sparsity))
  if target == 'mlp':
    config.target_hidden = (20, 16)
  else:
    config.update(dict(dataset='split_cifar100', target=target, width_factor=1))
  config.hnet_hidden = (6, 7) if target == 'mlp' else (3,)
  if chunked:
    config.update(dict(chunk_size=997 if target == 'mlp' else 40000, chunk_embedding_size=4))
  if method == 'hnet':  # hypercl's settings (its data protocol plays no part here)
    config.update(dict(hnet_init='xavier', lookahead=True, output_heads='per_task',
                       train_embeddings='current', hnet_activation='relu', beta=0.5))
  return config_checks.resolve(config)


CASES = {
    'hypermask mlp hmlp s=0': lambda: case_config('hypermask', 'mlp', False),
    'hypermask mlp hmlp s=30': lambda: case_config('hypermask', 'mlp', False, 30.0),
    'hypermask mlp chunked': lambda: case_config('hypermask', 'mlp', True),
    'hypermask resnet20 hmlp': lambda: case_config('hypermask', 'resnet20', False),
    'hypermask zenkenet hmlp': lambda: case_config('hypermask', 'zenkenet', False),
    'hnet mlp chunked': lambda: case_config('hnet', 'mlp', True),
    'hnet mlp hmlp': lambda: case_config('hnet', 'mlp', False),
    'hnet resnet20 chunked': lambda: case_config('hnet', 'resnet20', True),
    'hnet zenkenet chunked': lambda: case_config('hnet', 'zenkenet', True),
}


# --- Our side ----------------------------------------------------------------------------------

def build_ours(config):
  """The method, its params at the task's start and moved since, and one batch (float32)."""
  image = config.target != 'mlp'
  input_shape, classes = ((32, 32, 3), 10) if image else ((784,), 10)
  method = (HyperMask if config.method == 'hypermask' else HNET)(config, input_shape, classes)
  rng = np.random.RandomState(0)
  start = jax.tree.map(np.asarray, method.init_params(jax.random.key(0)))
  moved = jax.tree.map(lambda p: p + (rng.randn(*p.shape) * 0.05
                                      * (rng.rand(*p.shape) > 0.3)).astype(p.dtype), start)
  x = rng.rand(BATCH, *input_shape).astype(np.float32)
  y = rng.randint(0, classes, BATCH).astype(np.int32)
  return method, start, moved, x, y


def our_step(method, start, params, x, y, config):
  """Loss terms, gradients and one Adam step, as the trainer does them."""
  hp = jax.tree.map(lambda v: jnp.asarray(v, x.dtype) if v.dtype == np.float32 else v,
                  trainer_lib.run_hyperparams(config))
  tx = optax.adam(config.learning_rate)

  @jax.jit
  def step(start, params, x, y):
    memory = method.begin_task(start)
    opt_state = tx.init(params)
    task = jnp.int32(TASK)
    grads, terms, _ = method.gradients(params, {}, opt_state, tx, (x, y, task), task,
                                       config.steps_per_task - 1, memory, hp, jax.random.key(0))
    updates, _ = tx.update(grads, opt_state, params)
    return terms, grads, optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, step(start, params, x, y))


# --- PyTorch side: hypnettorch's networks, loaded with our params -------------------------------

def torch_hypernet(config, layout):
  act = torch.nn.ELU() if config.hnet_activation == 'elu' else torch.nn.ReLU()
  common = dict(uncond_in_size=0, cond_in_size=config.embedding_size,
                layers=tuple(config.hnet_hidden), verbose=False, activation_fn=act,
                num_cond_embs=config.max_tasks)
  shapes = [list(s) for s in layout.torch_shapes]
  if config.chunk_size:
    return hnets.ChunkedHMLP(shapes, chunk_size=config.chunk_size,
                             chunk_emb_size=config.chunk_embedding_size, **common)
  return hnets.HMLP(shapes, **common)


def torch_target(config, layout):
  """hypnettorch's target, taking all its weights from `forward(x, weights=...)`."""
  outputs = layout.torch_shapes[-1][0]  # classes, times the tasks with one head per task
  if config.target == 'mlp':
    net = mnets.MLP(n_in=784, n_out=outputs, hidden_layers=tuple(config.target_hidden),
                    no_weights=True, verbose=False)
  elif config.target == 'resnet20':
    net = mnets.ResNet(in_shape=(32, 32, 3), num_classes=outputs, n=3, k=config.width_factor,
                       num_feature_maps=(16, 16, 32, 64), use_batch_norm=True,
                       bn_track_stats=False, no_weights=True, verbose=False)
  else:
    net = mnets.ZenkeNet(in_shape=(32, 32, 3), num_classes=outputs, no_weights=True,
                         dropout_rate=-1, verbose=False)
  generated = [list(s) for s in layout.torch_shapes]
  assert [list(s) for s in net.param_shapes[-len(generated):]] == generated, (
      'our flat layout must list the tensors as hypnettorch does')
  return net


def hnet_paths(config):
  """(our hnet params path, turn ours into torch's) in hypnettorch's `unconditional_params` order.

  Each layer's weight and bias, then (chunked) the chunk embeddings. Our
  kernels are [in, out] and torch's [out, in], except HMLP's output layer
  (a WideDense, stored [out, in] as torch stores it).
  """
  names = [f'dense_{i}' for i in range(len(config.hnet_hidden))] + ['out']
  as_torch = lambda name: np.asarray if name == 'out' and not config.chunk_size else np.transpose
  paths = [p for name in names for p in (((name, 'kernel'), as_torch(name)),
                                         ((name, 'bias'), np.asarray))]
  return paths + ([(('chunk_embeddings',), np.asarray)] if config.chunk_size else [])


def hnet_param_pairs(hnet, config):
  """(torch parameter, our path, transform) for every unconditional hnet parameter."""
  weights = [p for w, b in zip(hnet.layer_weight_tensors, hnet.layer_bias_vectors) for p in (w, b)]
  chunks = [hnet.get_chunk_emb()] if config.chunk_size else []
  assert all(a is b for a, b in zip(weights + chunks, hnet.unconditional_params))
  assert len(weights + chunks) == len(hnet.unconditional_params)
  return [(p, path, fn) for p, (path, fn) in zip(hnet.unconditional_params, hnet_paths(config))]


def norm_paths(params):
  """BatchNorm's scale and offset, in network order (scale first): hypnettorch's list."""
  paths = [p for p in traverse_util.flatten_dict(params) if not layout_lib.is_weight(p)]
  return sorted(paths, key=lambda p: (layout_lib.network_order(p[:-1] + ('kernel',)),
                                      p[-1] != 'scale'))


def target_tensors(params, layout):
  """Our target's own params in hypnettorch's order and layout: BatchNorm's, then the layout's."""
  flat = traverse_util.flatten_dict(params)
  out = [flat[p] for p in norm_paths(params)]
  for path, shape in zip(layout.paths, layout.shapes):
    out.append(np.transpose(flat[path], np.argsort(layout_lib.torch_layout(shape)[1])))
  return out


def our_tensors(config, method, tree, trained_embeddings):
  """A params-shaped tree (params, gradients) as the list TorchSide.params() holds."""
  hnet_flat = traverse_util.flatten_dict(tree['hnet'])
  own = method.layout if isinstance(method, HyperMask) else layout_lib.Layout((), ())
  return ([np.asarray(fn(hnet_flat[path])) for path, fn in hnet_paths(config)]
          + [np.asarray(tree['hnet']['embeddings'][t]) for t in trained_embeddings]
          + [np.asarray(t) for t in target_tensors(tree.get('target', {}), own)])


def torch_mask(h, sparsity):
  """|tanh(h)|, zeroed below its sparsity-th percentile (linear interpolation), ties kept."""
  a = torch.abs(torch.tanh(h))
  if sparsity <= 0:
    return a
  tau = torch.quantile(a.detach().flatten(), sparsity / 100)
  return torch.where(a >= tau, a, torch.zeros_like(a))


def torch_masks(generated, sparsity):
  """Every generated tensor's mask, the last (the output bias) without the sparsity cut.

  As the reference computes them: the output bias's mask is never applied in
  the forward pass, it only weights that bias's L1 drift.
  """
  return [torch_mask(h, sparsity) for h in generated[:-1]] + [torch_mask(generated[-1], 0.0)]


class TorchSide:
  """hypnettorch's hypernetwork and target with our params; the losses from their definitions."""

  def __init__(self, config, method, params, dtype):
    self.config, self.method, self.dtype = config, method, dtype
    self.hnet = torch_hypernet(config, method.layout).to(dtype)
    self.mnet = torch_target(config, method.layout)
    self.num_norm = len(norm_paths(params.get('target', {})))
    self.load(params)

  def load(self, params):
    hnet_flat = traverse_util.flatten_dict(params['hnet'])
    with torch.no_grad():
      for p, path, fn in hnet_param_pairs(self.hnet, self.config):
        p.copy_(to_torch(fn(hnet_flat[path])))
      for task, emb in enumerate(self.hnet.conditional_params):
        emb.copy_(to_torch(params['hnet']['embeddings'][task]))
    own = self.method.layout if self.config.method == 'hypermask' else layout_lib.Layout((), ())
    self.target = [torch.nn.Parameter(to_torch(t))
                   for t in target_tensors(params.get('target', {}), own)]

  def trained_embeddings(self):
    """HNET (as published) trains the current task's embedding only; HyperMask all of them."""
    return [TASK] if self.config.method == 'hnet' else range(self.config.max_tasks)

  def params(self):
    """What the optimiser updates: theta (chunk embeddings included), embeddings, the target's."""
    return [*self.hnet.unconditional_params,
            *[self.hnet.conditional_params[t] for t in self.trained_embeddings()], *self.target]

  def outputs(self, tasks, uncond=None):
    weights = None if uncond is None else {'uncond_weights': uncond}
    return self.hnet.forward(cond_id=list(tasks), weights=weights, ret_format='flattened')

  def split(self, flat):
    shapes = [list(s) for s in self.method.layout.torch_shapes]
    sizes = [int(np.prod(s)) for s in shapes]
    return [t.view(*s) for t, s in zip(torch.split(flat, sizes), shapes)]

  def logits(self, x, generated):
    out = self.mnet.forward(to_torch(x), weights=self.target[:self.num_norm] + generated)
    if self.config.output_heads == 'per_task':
      return out[:, TASK * 10:(TASK + 1) * 10]
    return out

  def regulariser(self, targets, uncond=None):
    """mean_{j<t} sum((h(e_j) - h*_j)^2), a loop over previous tasks as the reference runs it."""
    return sum(torch.sum((self.outputs([j], uncond)[0] - targets[j]) ** 2)
               for j in range(TASK)) / TASK

  def loss(self, x, y, targets, start):
    return (self.hypermask_loss if self.config.method == 'hypermask' else self.hnet_loss)(
        x, torch.from_numpy(y).long(), targets, start)

  def hypermask_loss(self, x, y, targets, start):
    """SPEC 1.1: CE(f(x; W * M_t)) + beta / t * R_h + lambda * L1 (the output bias unmasked)."""
    c = self.config
    masks = torch_masks(self.split(self.outputs([TASK])[0]), c.sparsity)
    weights = self.target[self.num_norm:]
    masked = [w * m for w, m in zip(weights[:-1], masks[:-1])] + [weights[-1]]
    ce = F.cross_entropy(self.logits(x, masked), y)
    reg = self.regulariser(targets)
    l1 = sum(torch.sum(torch.abs((w - s) * m)) for w, s, m in
             zip(weights, start[self.num_norm:], masks))
    return ce + c.beta / max(1, TASK) * reg + c.lam * l1, {'ce': ce, 'reg': reg, 'l1': l1}

  def hnet_loss(self, x, y, targets, start):
    """SPEC 1.2 with hypercl's lookahead: the regulariser at theta + the task-loss Adam step."""
    del start
    ce = F.cross_entropy(self.logits(x, self.split(self.outputs([TASK])[0])), y)
    grads = torch.autograd.grad(ce, self.params(), retain_graph=True, allow_unused=True)
    shadow = [p.detach().clone() for p in self.params()]
    for s, g in zip(shadow, grads):
      s.grad = torch.zeros_like(s) if g is None else g.detach().clone()
    torch.optim.Adam(shadow, lr=self.config.learning_rate).step()
    delta = [(s - p).detach() for s, p in zip(shadow, self.params())]
    uncond = [p + d for p, d in zip(self.hnet.unconditional_params, delta)]
    reg = self.regulariser(targets, uncond)
    return ce + self.config.beta * reg, {'ce': ce, 'reg': reg}


# --- Both sides, one case ----------------------------------------------------------------------

def evaluate(config, built, dtype):
  """{quantity: (our tensors, torch's tensors)} for one case in dtype (np.float32 / float64)."""
  method, start, moved, x, y = built
  start, moved, x = jax.tree.map(lambda a: np.asarray(a, dtype), (start, moved, x))
  terms, grads, stepped = our_step(method, start, moved, x, y, config)
  side = TorchSide(config, method, start, torch.float64 if dtype == np.float64 else torch.float32)
  out = {}
  with torch.no_grad():
    targets = side.outputs(range(config.max_tasks))
    start_target = [t.detach().clone() for t in side.target]
  ours_targets = method.hnet_outputs(start['hnet'], np.arange(config.max_tasks))  # at the start
  out['hypernetwork outputs (all tasks)'] = ([ours_targets], [targets])
  if config.method == 'hypermask':
    ours_out = ours_targets[TASK]
    for s in (0.0, 30.0):
      masks = traverse_util.flatten_dict(
          mask_lib.masks_from_tensors(start['target'], method.layout.split(ours_out), s, s > 0))
      ours = [np.transpose(masks[p], np.argsort(layout_lib.torch_layout(shape)[1]))
              for p, shape in zip(method.layout.paths, method.layout.shapes)]
      out[f'masks at s={s:g}'] = (ours, torch_masks(side.split(targets[TASK]), s))

  side.load(moved)
  loss, torch_terms = side.loss(x, y, targets, start_target)
  out['loss'] = ([terms['loss']], [loss])
  for key, value in torch_terms.items():
    out[f'loss term {key}'] = ([terms[key]], [value])
  params = side.params()
  torch_grads = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
  ours_grads = our_tensors(config, method, grads, side.trained_embeddings())
  out['gradients'] = (ours_grads, torch_grads)
  adam = torch.optim.Adam(params, lr=config.learning_rate)
  for p, g in zip(params, ours_grads):
    p.grad = to_torch(g)
  adam.step()
  out['params after one Adam step'] = (
      our_tensors(config, method, stepped, side.trained_embeddings()), params)
  if config.method == 'hnet':  # not in torch's optimiser: they must not move in ours either
    others = [t for t in range(config.max_tasks) if t != TASK]
    out['embeddings of the other tasks'] = (
        [stepped['hnet']['embeddings'][t] for t in others],
        [side.hnet.conditional_params[t] for t in others])
  return {k: ([np.asarray(a) for a in ours], to_numpy(theirs))
          for k, (ours, theirs) in out.items()}


def tie_rows():
  """The mask on tensors with many ties, some at the percentile itself (float32)."""
  rng = np.random.RandomState(1)
  rows = {}
  for n in (7, 10, 101, 1000):
    h = (np.round(rng.randn(n) * 2) / 4).astype(np.float32)  # a grid of 0.25: ties everywhere
    h[: n // 3] = h[0]
    for s in (0.0, 30.0, 50.0):
      ours = mask_lib.semi_binary(jnp.asarray(h), s, s > 0)
      rows[f'n={n}, s={s:g}'] = relative_difference(ours, torch_mask(torch.from_numpy(h), s))
  return rows


def evaluate_case(name, dtypes=(np.float32, np.float64)):
  """{dtype: evaluate(...)} for one case, from the same initial params."""
  config = CASES[name]()
  built = build_ours(config)
  values = {}
  for dtype in dtypes:
    with jax.enable_x64(dtype == np.float64):
      values[dtype] = evaluate(config, built, dtype)
  return values


def run(cases):
  """{case: {quantity: (float64 ours vs torch, float32 ours vs torch, torch float32 vs 64)}}."""
  results = {}
  for name in cases:
    values = evaluate_case(name)
    single, double = values[np.float32], values[np.float64]
    results[name] = {q: (worst(*double[q]), worst(*single[q]), worst(single[q][1], double[q][1]))
                     for q in double}
  return results


def main(argv=None):
  parser = errors.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', nargs='*', default=list(CASES), choices=list(CASES))
  args = parser.parse_args(argv)
  ties = tie_rows()
  print('masks with ties (float32): ours vs torch')
  for key, diff in ties.items():
    print(f'  {key:<34s} {diff:.2e}')
  results = run(args.cases)
  print(f'\n{"":38s}{"float64":>12s}{"float32":>12s}{"torch float32":>15s}')
  print(f'{"":38s}{"ours/torch":>12s}{"ours/torch":>12s}{"/float64":>15s}')
  for name, rows in results.items():
    print(name)
    for quantity, (double, single, torch_single) in rows.items():
      flag = '' if double <= TOLERANCE else '  > tolerance'
      print(f'  {quantity:<36s}{double:12.2e}{single:12.2e}{torch_single:15.2e}{flag}')
  largest = max([*ties.values(), *(r[0] for rows in results.values() for r in rows.values())])
  ok = largest <= TOLERANCE
  print(f'largest relative difference (float64, and the float32 ties): {largest:.2e} '
        f'(tolerance {TOLERANCE:g}): {"ok" if ok else "FAIL"}')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
