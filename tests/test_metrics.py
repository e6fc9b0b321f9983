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


def test_single_task():
  acc = np.array([[88.0]])
  assert metrics.summary(acc) == {'mean_accuracy': 88.0, 'bwt': 0.0, 'forgetting': 0.0}
