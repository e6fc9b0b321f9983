"""Accuracy-matrix metrics against hand-computed numbers."""

import numpy as np
import pytest

from hypermask_jax import metrics

ACC = np.array([[90.0, np.nan, np.nan],
                [85.0, 95.0, np.nan],
                [80.0, 96.0, 70.0]])


def test_mean_final_accuracy():
  assert metrics.mean_final_accuracy(ACC) == pytest.approx((80 + 96 + 70) / 3)


def test_backward_transfer():
  assert metrics.backward_transfer(ACC) == pytest.approx(((80 - 90) + (96 - 95)) / 2)


def test_forgetting():
  # task 0: max(90, 85) - 80 = 10; task 1: max(95) - 96 = -1.
  assert metrics.forgetting(ACC) == pytest.approx((10 - 1) / 2)


def test_forward_transfer_against_the_random_network():
  # A[0, 1] = 60 before training task 1, A[1, 2] = 30 before task 2; R = (10, 12, 9).
  before, random_init = [None, 60.0, 30.0], [10.0, 12.0, 9.0]
  assert metrics.forward_transfer(before, random_init) == pytest.approx(((60 - 12) + (30 - 9)) / 2)


def test_summary_keeps_just_after_training_apart_from_final():
  summary = metrics.per_task(ACC, [None, 60.0, 30.0], [10.0, 12.0, 9.0])
  assert summary['just_after_training_accuracy'] == [90.0, 95.0, 70.0]
  assert summary['final_accuracy'] == [80.0, 96.0, 70.0]
  assert summary['fwt'] == pytest.approx(34.5)
  assert summary['random_init_accuracy'] == [10.0, 12.0, 9.0]
  assert summary['before_training_accuracy'] == [None, 60.0, 30.0]


def test_single_task():
  acc = np.array([[88.0]])
  summary = {**metrics.summary(acc), **metrics.per_task(acc, [None], [11.0])}
  assert {k: summary[k] for k in ('mean_accuracy', 'bwt', 'forgetting', 'fwt')} == {
      'mean_accuracy': 88.0, 'bwt': 0.0, 'forgetting': 0.0, 'fwt': 0.0}
