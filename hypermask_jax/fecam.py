"""FeCAM's class statistics and distance (Goswami et al., NeurIPS 2023), as the official HyperMask
evaluation applies them to each task's network.

Per class, from the penultimate features of its training samples: the
prototype (the mean) and the covariance (unbiased, as numpy.cov). The
covariance is shrunk twice, each time S + mean(diag S) I + m (1 - I) with m the
mean of the nonzero off-diagonal entries of S, then normalised to a unit
diagonal, S_ij / (sd_i sd_j). A test feature and the prototype are both
L2-normalised and compared by the squared Mahalanobis distance under the
inverse of (S + 1e-8) (the reference adds 1e-8 to every entry and takes the
pseudo-inverse; the shrunk covariance is positive definite, so the two are
equal, and an LU inverse is much faster than an SVD on a CPU). The prototype
is the mean of the raw features, normalised afterwards; the covariance is that
of the raw features: the reference's order.
"""

import jax
import jax.numpy as jnp

SHRINKAGE_STEPS = 2
NORM_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm
JITTER = 1e-8


def shrink(cov):
  """One covariance shrinkage: + mean diagonal on the diagonal, + mean nonzero off-diagonal off it."""
  eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
  off = cov * (1 - eye)
  off_mean = jnp.sum(off) / jnp.maximum(jnp.sum(off != 0), 1)
  return cov + jnp.mean(jnp.diagonal(cov)) * eye + off_mean * (1 - eye)


def normalize_covariance(cov):
  """The covariance scaled to a unit diagonal: S_ij / (sd_i sd_j)."""
  sd = jnp.sqrt(jnp.diagonal(cov))
  return cov / (sd[:, None] * sd[None, :])


def l2_normalize(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


def class_statistics(features, labels, weight, num_classes):
  """Every class's normalised prototype and precision matrix from features [N, D] labelled [N].

  weight [N] is 1 for real samples and 0 for padding. Returns {'prototype':
  [C, D], 'precision': [C, D, D], 'valid': [C]}; a class with fewer than two
  samples has no covariance and is not valid (its distance is never the least).
  """
  dims = features.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=features.dtype) * weight[:, None]  # [N, C]
  counts = jnp.sum(onehot, axis=0)
  means = (onehot.T @ features) / jnp.maximum(counts, 1)[:, None]
  centered = features - means[labels]
  valid = counts >= 2

  def covariance(args):
    members, count = args
    cov = (centered * members[:, None]).T @ centered / jnp.maximum(count - 1, 1)
    for _ in range(SHRINKAGE_STEPS):
      cov = shrink(cov)
    cov = normalize_covariance(cov)
    return jnp.where(count >= 2, cov, jnp.eye(dims, dtype=cov.dtype))

  covariances = jax.lax.map(covariance, (onehot.T, counts))  # one class at a time: [N, D] memory
  return {'prototype': l2_normalize(means), 'precision': jnp.linalg.inv(covariances + JITTER),
          'valid': valid}


def distances(features, stats):
  """Squared Mahalanobis distances [C, B] of features [B, D] to every class of `stats`
  (both normalised; invalid classes at +inf)."""
  diff = l2_normalize(features)[None] - stats['prototype'][:, None]  # [C, B, D]
  d = jnp.einsum('cbd,cde,cbe->cb', diff, stats['precision'], diff)
  return jnp.where(stats['valid'][:, None], d, jnp.inf)
