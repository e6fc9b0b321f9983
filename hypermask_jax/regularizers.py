"""Regularisers against forgetting: the hypernetwork output regulariser and the L1 weight drift.

The output regulariser is batched over previous tasks. To make its cost follow
the number of tasks seen (not max_tasks) without a recompile per task, the
compiled step holds one branch per bucket size k in {0, 1, 2, 4, ..., max_tasks-1};
`lax.switch` runs only the smallest bucket that covers the tasks seen, so at
most twice the rows needed are computed and task 0 computes none.
"""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from hypermask_jax import mask as mask_lib


def bucket_sizes(max_tasks):
  """0, powers of two below max_tasks - 1, and max_tasks - 1 (the most previous tasks)."""
  most = max_tasks - 1
  return tuple(sorted({0, most} | {2 ** i for i in range(int(np.log2(max(most, 1))) + 1)
                                    if 2 ** i < most}))


def outputs_and_output_reg(hnet_fn, task, targets, buckets):
  """Returns (h(e_task) [P], mean_{j<task} sum((h(e_j) - targets[j])**2)) in one batched call.

  hnet_fn maps int task indices [k] to raw outputs [k, P]; the current task and
  the previous ones go through the hypernetwork together, so its weights are
  read once per step however many tasks are regularised.
  """

  def branch(k):
    def rows(task):
      out = hnet_fn(jnp.concatenate([task[None], jnp.arange(k, dtype=task.dtype)]))
      if k == 0:
        return out[0], jnp.zeros((), out.dtype)
      seen = jnp.arange(k) < task
      sq = jnp.sum(jnp.square(out[1:] - targets[:k]), axis=1)
      return out[0], jnp.sum(jnp.where(seen, sq, 0.0)) / jnp.maximum(task, 1)
    return rows

  index = jnp.searchsorted(jnp.asarray(buckets), task)
  return jax.lax.switch(index, [branch(k) for k in buckets], task)


def l1_drift(params, start, masks=None):
  """sum_l |(W_l - W_l^start) * M_l| over the target weights (M = 1 when masks is None)."""
  flat, flat_start = traverse_util.flatten_dict(params), traverse_util.flatten_dict(start)
  flat_masks = traverse_util.flatten_dict(masks) if masks is not None else {}
  return sum(jnp.sum(jnp.abs((flat[p] - flat_start[p]) * flat_masks.get(p, 1.0)))
             for p in flat if mask_lib.is_weight(p))
