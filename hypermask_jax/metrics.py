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


def just_after_training(acc):
  """A[j, j]: each task's accuracy right after it was trained (the diagonal)."""
  return [float(acc[j, j]) for j in range(acc.shape[0])]


def forward_transfer(before_training, random_init):
  """FWT = mean_{j>=1} (A[j-1, j] - R_j); 0 for a single task.

  before_training[j] = A[j-1, j], task j's test accuracy after training task
  j-1 (before training task j; entry 0 unused); random_init[j] = R_j, its
  test accuracy with the run's initial (random) parameters.
  """
  gains = [before_training[j] - random_init[j] for j in range(1, len(random_init))]
  return float(np.mean(gains)) if gains else 0.0


def cosine_similarity(embeddings):
  """Pairwise cosine similarity of task embeddings [T, E] -> [T, T]."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  return unit @ unit.T


def summary(acc):
  """The headline metrics of an accuracy matrix (of the tasks done so far)."""
  return {'mean_accuracy': mean_final_accuracy(acc), 'bwt': backward_transfer(acc),
          'forgetting': forgetting(acc)}


def per_task(acc, before_training, random_init):
  """FWT, and the per-task accuracies behind the metrics (lists over tasks): final, just after
  training (the diagonal), before training (A[j-1, j]) and with the initial params (R_j)."""
  return {'fwt': forward_transfer(before_training, random_init),
          'final_accuracy': [float(a) for a in acc[-1]],
          'just_after_training_accuracy': just_after_training(acc),
          'before_training_accuracy': list(before_training),
          'random_init_accuracy': list(random_init)}
