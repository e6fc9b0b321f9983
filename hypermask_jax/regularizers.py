"""Regularisers against forgetting: the hypernetwork output regulariser and the L1 weight drift.

The output regulariser is batched over previous tasks. For a chunked
hypernetwork every row costs a full pass of its MLP, so its cost follows the
number of tasks seen (not max_tasks) without a recompile per task: the
compiled step holds one branch per row count k in {0, 1, 2, 4, ..., max_tasks-1},
and `lax.switch` runs only the smallest that covers the tasks seen, so at most
twice the rows needed are computed and task 0 computes none. A full
hypernetwork (HMLP) takes every previous task's row (masked until seen) with
no lax.switch around it, so that its weight gradient fuses into Adam's
update; its output layer runs its products and the distances to the targets
over only the rows seen, by a lax.switch of its own (see wide_dense.py). The
hypernetwork returns the distances (hypernet.distances), so that HMLP never
builds its outputs for the rows not seen. With a random subset of K previous
tasks per step the row counts are {0, K} (chunked) or {K}: constant memory
however long the task sequence.
"""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import layout


def row_sizes(max_tasks, subset=0, bucketed=True):
  """The compiled row counts of previous tasks.

  Bucketed: 0, the powers of two below max_tasks - 1, and max_tasks - 1; with
  a subset of K: 0 and K. Not bucketed: only the largest of those.
  """
  most = max_tasks - 1
  if subset:
    sizes = {0, min(subset, most)}
  else:
    sizes = {0, most} | {2 ** i for i in range(int(np.log2(max(most, 1))) + 1) if 2 ** i < most}
  return tuple(sorted(sizes)) if bucketed else (max(sizes),)


def previous_rows(task, k, rng, max_tasks):
  """k task indices to regularise and whether each is a previous task (< task).

  Without rng: tasks 0..k-1. With rng: a uniform random subset of k previous
  tasks (all of them while task <= k), drawn without replacement.
  """
  if rng is None:
    rows = jnp.arange(k)
  else:
    keys = jax.random.uniform(rng, (max_tasks,))
    rows = jnp.argsort(jnp.where(jnp.arange(max_tasks) < task, keys, 2.0))[:k]
  return rows, rows < task


def _branch_index(task, sizes):
  """The lax.switch branch of the smallest row count covering the tasks seen."""
  # compare_all: no loop, whose every turn a GPU waits on the host for.
  return jnp.minimum(jnp.searchsorted(jnp.asarray(sizes), task, method='compare_all'),
                     len(sizes) - 1)


def _mean_over_seen(distances, seen):
  """mean of distances [k] over the seen rows; 0 when none is seen."""
  return jnp.sum(jnp.where(seen, distances, 0.0)) / jnp.maximum(jnp.sum(seen), 1)


def outputs_and_output_reg(hnet_fn, task, sizes, rng=None, max_tasks=None):
  """Returns (h(e_task) [P], mean over regularised previous tasks j of sum((h(e_j) - h*_j)**2)).

  hnet_fn(tasks, live_rows, rows) maps int task indices [1 + k] to (the raw
  output of tasks[0] [P], the squared distances [k] of the other tasks'
  outputs to the stored targets h* of `rows`), of which only the first
  live_rows rows are used (the current task and the seen previous ones, which
  previous_rows puts first): a hypernetwork called with targets
  (hypernet.py). The current task and the previous ones go through the
  hypernetwork in one call, so its weights are read once per step.
  """

  def branch(k):
    def rows_and_reg(task):
      rows, seen = previous_rows(task, k, rng, max_tasks)
      # The current task and the min(task, k) seen rows, counted from the task alone: with
      # a random subset per run, a count from `seen` would differ between vmapped runs and
      # turn the hypernetwork's own lax.switch into a select that runs every branch.
      out, distances = hnet_fn(jnp.concatenate([task[None], rows.astype(task.dtype)]),
                               1 + jnp.minimum(task, k), rows)
      return out, _mean_over_seen(distances, seen)
    return rows_and_reg

  return jax.lax.switch(_branch_index(task, sizes), [branch(k) for k in sizes], task)


def output_reg_and_grad(distances_fn, params_fn, grads, scale, task, sizes, rng=None,
                        max_tasks=None):
  """(R, grads + scale * dR / d params): R the mean over the regularised previous tasks of
  their squared distances to their targets.

  distances_fn(params, rows) -> the squared distances [k] of the rows' outputs
  to their targets. params_fn() gives the hypernetwork params to regularise
  at (HNET's lookahead point), and grads a gradient of their structure.

  Where sizes hold 0, a lax.cond passes grads through at task 0, where nothing
  is regularised: neither the lookahead's optimizer step nor a gradient of
  zeros is computed (for the published HNET PMNIST step these took 2.2 of its
  20 ms at task 1). The other branch calls params_fn and adds to grads once,
  around a lax.switch over the other row counts, so that the lookahead's
  optimizer step is compiled once, not once per row count (for HNET Permuted
  MNIST, 4 copies of about 25 fusions fewer to compile). Each switch branch
  takes its own gradient, so the switch returns gradients and carries no
  residuals. Differentiated from outside, the switch keeps every branch's
  residuals and the branches not taken fill theirs with zeros: [k, P] floats
  for every k in sizes, at every step (for the published HNET PMNIST step,
  about 180 MB written and 10 of its 51 ms at task 0).
  """
  counts = [k for k in sizes if k]

  def branch(k):
    def reg_and_grads(params):
      rows, seen = previous_rows(task, k, rng, max_tasks)
      return jax.value_and_grad(lambda p: _mean_over_seen(distances_fn(p, rows), seen))(params)
    return reg_and_grads

  def regularise(grads):
    params = params_fn()
    reg, reg_grads = (branch(counts[0])(params) if len(counts) == 1 else jax.lax.switch(
        _branch_index(task, counts), [branch(k) for k in counts], params))
    return reg, jax.tree.map(lambda g, r: g + scale * r, grads, reg_grads)

  unchanged = lambda grads: (jnp.zeros((), jax.tree.leaves(grads)[0].dtype), grads)
  if not counts:  # one task: nothing is ever regularised
    return unchanged(grads)
  if len(counts) == len(sizes):  # no 0 row count: task 0 too takes the regulariser's branch
    return regularise(grads)
  return jax.lax.cond(task > 0, regularise, unchanged, grads)


def abs_zero_subgradient(x):
  """|x| whose gradient is sign(x): 0 at x = 0, as PyTorch's abs (jnp.abs gives 1 there).

  At the first step of a task W = W_start, so jnp.abs would push every weight
  by lambda * M; the reference's L1 drift does not move them.
  """
  return x * jax.lax.stop_gradient(jnp.sign(x))


def l1_drift(params, start, masks=None):
  """sum_l |(W_l - W_l^start) * M_l| over the target weights (M = 1 when masks is None).

  Its gradient is 0 wherever W_l = W_l^start (abs_zero_subgradient).
  """
  flat, flat_start = traverse_util.flatten_dict(params), traverse_util.flatten_dict(start)
  flat_masks = traverse_util.flatten_dict(masks) if masks is not None else {}
  return sum(jnp.sum(abs_zero_subgradient((flat[p] - flat_start[p]) * flat_masks.get(p, 1.0)))
             for p in flat if layout.is_weight(p))
