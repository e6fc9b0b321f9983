"""What a run's newest checkpoint shows: HyperMask's masks, and the target's penultimate features.

The features of test samples of every task (each run with its task's own
weights) are projected on their first two principal components. PCA rather
than t-SNE: t-SNE would bring scikit-learn (about 60 MB installed with its
dependencies; openTSNE needs it too), a hand-written one would be code to
maintain, and PCA is one eigendecomposition (numpy): deterministic, about a
second for 3000 samples of 1000 features, and its axes say how much of the
variance they hold.

Mask overlap between tasks a and b is the weighted Jaccard index
sum(min(M_a, M_b)) / sum(max(M_a, M_b)) over the masked weights: 1 for equal
masks, and for 0/1 masks the shared fraction of the weights either keeps.
"""

import dataclasses

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hypermask_jax import checkpoints
from hypermask_jax import config_checks
from hypermask_jax import features as features_lib
from hypermask_jax import layout as layout_lib
from hypermask_jax import outputs
from hypermask_jax import trainer as trainer_lib
from hypermask_jax.data import tasks
from hypermask_jax.methods import METHODS
from hypermask_jax.methods.hypermask import HyperMask


def config_from_flat(flat):
  """The ConfigDict of a saved config.json ({dotted.field: value}, tuples saved as lists)."""
  nested = {}
  for key, value in flat.items():
    *parents, name = key.split('.')
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = tuple(value) if isinstance(value, list) else value
  return config_checks.resolve(ml_collections.ConfigDict(nested))


def newest_checkpoint(folder):
  """(the newest committed step, its folder) of the checkpoints in `folder`, or None."""
  folder = epath.Path(folder) / checkpoints.CHECKPOINTS
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
  return (max(steps), folder / str(max(steps))) if steps else None


def restore_weights(step_dir, index):
  """Run `index`'s params and batch_stats alone (not the optimiser state: a partial restore)."""
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(step_dir / 'state').tree
  item = {k: tree[k] for k in ('params', 'batch_stats') if tree.get(k)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = handler.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  run = lambda tree: jax.tree.map(lambda x: x[index], tree)  # checkpoints hold a runs axis
  return run(restored['params']), run(restored.get('batch_stats', {}))


@dataclasses.dataclass
class Model:
  """A run's method rebuilt from its config, with the weights of its newest checkpoint."""
  config: ml_collections.ConfigDict
  method: object
  params: dict
  batch_stats: dict
  data: tasks.TaskSet
  hp: dict
  step: int  # the checkpoint's step number

  @property
  def is_hypermask(self):
    return isinstance(self.method, HyperMask)


def load_model(run, data=None):
  """The run's model, or None when it has no checkpoint.

  data: the run's task set if the caller holds it (the training loop), else it is loaded.
  """
  folder, index = outputs.RunOutputs(run.path).checkpoint_location()
  newest = newest_checkpoint(folder)
  if newest is None:
    return None
  config = config_from_flat(run.config)
  data = tasks.load_task_set(config) if data is None else data
  data = data.replace(perms=tasks.for_runs(data, [config.seed]).perms[0])  # this run's seed
  config = config_checks.fit_to_data(config, data)
  method = METHODS[config.method](config, data.input_shape, data.num_classes)
  params, batch_stats = restore_weights(newest[1], index)
  return Model(config=config, method=method, params=params, batch_stats=batch_stats, data=data,
               hp=trainer_lib.run_hyperparams(config), step=newest[0])


@dataclasses.dataclass
class MaskStats:
  layers: list  # 'dense_0/weight', ...
  zero_fraction: np.ndarray  # [L, T], % of entries at 0
  mean_value: np.ndarray  # [L, T]
  layer_overlap: np.ndarray  # [L, T]: mean overlap with the other tasks' masks of that layer
  overlap: np.ndarray  # [T, T] over all masked weights


def weighted_jaccard_sums(masks):
  """(sum of min, sum of max) between every pair of rows of masks [T, P]: two [T, T] arrays."""
  mins = np.stack([np.minimum(m, masks).sum(axis=1) for m in masks])
  maxs = np.stack([np.maximum(m, masks).sum(axis=1) for m in masks])
  return mins, maxs


def mask_statistics(model, num_tasks):
  """Per masked layer and task: zero fraction, mean value, overlap; and the task x task overlap."""
  method = model.method
  # The hypernetwork also produces the output bias, which no mask multiplies: left out.
  paths = [p for p in method.layout.paths if layout_lib.is_masked(p)]

  @jax.jit
  def task_masks(params, hp, task):
    tensors = method.task_tensors(params['hnet'], task)
    flat = traverse_util.flatten_dict(method.masks(params, tensors, hp['sparsity']))
    return [flat[p].ravel() for p in paths]

  per_task = [jax.device_get(task_masks(model.params, model.hp, jnp.int32(t)))
              for t in range(num_tasks)]
  layers = [np.stack([m[k] for m in per_task]) for k in range(len(paths))]  # [T, P_l] each
  pair_sums = [weighted_jaccard_sums(m) for m in layers]
  off_diagonal = ~np.eye(num_tasks, dtype=bool)
  layer_overlap = []
  for mins, maxs in pair_sums:
    ratio = np.divide(mins, maxs, out=np.ones_like(mins), where=maxs > 0)
    layer_overlap.append([ratio[t, off_diagonal[t]].mean() if num_tasks > 1 else np.nan
                          for t in range(num_tasks)])
  total_min = sum(m for m, _ in pair_sums)
  total_max = sum(m for _, m in pair_sums)
  return MaskStats(
      layers=['/'.join(p) for p in paths],
      zero_fraction=np.stack([100 * (m == 0).mean(axis=1) for m in layers]),
      mean_value=np.stack([m.mean(axis=1) for m in layers]),
      layer_overlap=np.array(layer_overlap),
      overlap=total_min / total_max)


def penultimate_features(model, num_tasks, per_task):
  """The input of the target's output layer for the first `per_task` test samples of each task,
  each task run with its own weights: (features [N, D], task index [N])."""
  method = model.method

  @jax.jit
  def features(params, batch_stats, data, hp, task, idx):
    x = data.inputs(data.test.images[idx], task, None, train=False)
    weights = method.eval_weights(params, task, hp)
    return features_lib.logits_and_features(method, weights, batch_stats, x, task)[1]

  sizes = np.asarray(model.data.test.size)[:num_tasks]
  offsets = np.asarray(model.data.test.offset)[:num_tasks]
  n = int(min(per_task, sizes.min()))
  feats = [np.asarray(features(model.params, model.batch_stats, model.data, model.hp,
                               jnp.int32(t), jnp.asarray(offsets[t] + np.arange(n))))
           for t in range(num_tasks)]
  return np.concatenate(feats), np.repeat(np.arange(num_tasks), n)


def pca(x, k=2):
  """(x [N, D] projected on its first k principal components, the share of variance of each).

  The components are the top eigenvectors of the D x D scatter matrix: for the
  report's [3000, 1000] features 5-10x faster than an SVD of x on this CPU.
  """
  centered = (x - x.mean(axis=0)).astype(np.float64)
  variance, vectors = np.linalg.eigh(centered.T @ centered)  # ascending
  top = vectors[:, ::-1][:, :k]
  return centered @ top, variance[::-1][:k] / variance.sum()
