"""Per-epoch decisions inside the compiled loop: ReduceLROnPlateau and best-validation selection.

Pure functions over small pytrees that live in the train state, so a run
checkpoints and resumes them with everything else and no epoch recompiles.
"""

import jax
import jax.numpy as jnp

# PyTorch's ReduceLROnPlateau defaults the reference kept: relative threshold, no cooldown.
THRESHOLD = 1e-4
EPS = 1e-8


def plateau_init(learning_rate):
  """The state of a fresh ReduceLROnPlateau (mode 'max'): nothing seen yet."""
  return {'learning_rate': jnp.asarray(learning_rate, jnp.float32),
          'best': jnp.float32(-jnp.inf), 'bad_epochs': jnp.int32(0)}


def plateau_update(state, metric, factor, patience, min_lr):
  """One epoch's ReduceLROnPlateau(mode='max') step, as PyTorch computes it.

  An epoch improves on the best if metric > best * (1 + 1e-4). After more
  than `patience` epochs in a row without improvement the rate becomes
  max(rate * factor, min_lr) and the count starts again.
  """
  better = metric > state['best'] * (1 + THRESHOLD)
  best = jnp.where(better, metric, state['best'])
  bad = jnp.where(better, 0, state['bad_epochs'] + 1)
  reduce = bad > patience
  lr = state['learning_rate']
  lowered = jnp.maximum(lr * factor, min_lr)
  lr = jnp.where(reduce & (lr - lowered > EPS), lowered, lr)
  return {'learning_rate': lr, 'best': best, 'bad_epochs': jnp.where(reduce, 0, bad)}


def keep_best(best, best_accuracy, candidate, accuracy):
  """(snapshot, its accuracy): `candidate` if its accuracy beats the best so far (strictly)."""
  better = accuracy > best_accuracy
  return (jax.tree.map(lambda new, old: jnp.where(better, new, old), candidate, best),
          jnp.where(better, accuracy, best_accuracy))
