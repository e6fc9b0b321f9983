"""Continual-learning metrics over the accuracy matrix A[i, j] (test accuracy on task j after task i)."""

import numpy as np


def mean_final_accuracy(acc):
  """mean_j A[T-1, j]: the headline number."""
  return float(np.mean(acc[-1]))


def backward_transfer(acc):
  """BWT = mean_{j<T-1} (A[T-1, j] - A[j, j]); 0 for a single task."""
  t = acc.shape[0]
  if t < 2:
    return 0.0
  return float(np.mean([acc[-1, j] - acc[j, j] for j in range(t - 1)]))


def forgetting(acc):
  """mean_{j<T-1} (max_{j<=i<T-1} A[i, j] - A[T-1, j]); 0 for a single task."""
  t = acc.shape[0]
  if t < 2:
    return 0.0
  return float(np.mean([np.max(acc[j:t - 1, j]) - acc[-1, j] for j in range(t - 1)]))


def cosine_similarity(embeddings):
  """Pairwise cosine similarity of task embeddings [T, E] -> [T, T]."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  return unit @ unit.T


def summary(acc):
  return {'mean_accuracy': mean_final_accuracy(acc), 'bwt': backward_transfer(acc),
          'forgetting': forgetting(acc)}
