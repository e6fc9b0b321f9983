"""Short runs of the small configs on real MNIST: they learn, and the regularisers prevent forgetting.

Reference points (this repo, CPU, seed 1): small Permuted MNIST about 94% mean
final accuracy with BWT about -1; without regularisers BWT about -37; small
Split MNIST about 99%.
"""

import pytest

from configs import permuted_mnist
from configs import split_mnist
from hypermask_jax import train


def run(config, data_dir, workdir, **overrides):
  config.data_dir = data_dir
  config.update(overrides)
  return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def permuted_runs(mnist_data_dir, tmp_path_factory):
  """The small Permuted MNIST config, with and without the regularisers (3 tasks each)."""
  workdir = tmp_path_factory.mktemp('pmnist')
  return {
      'hypermask': run(permuted_mnist.get_config('small'), mnist_data_dir, workdir / 'hm'),
      'unregularised': run(permuted_mnist.get_config('small'), mnist_data_dir, workdir / 'none',
                           beta=0.0, lam=0.0),
  }


def test_small_permuted_mnist_learns_and_remembers(permuted_runs):
  summary = permuted_runs['hypermask']
  assert len(summary['accuracy_matrix']) == 3
  assert summary['mean_accuracy'] >= 90.0, summary
  assert summary['bwt'] >= -2.0, summary
  # One program per function for the whole run; evaluate has one per split shape (val, test).
  assert summary['traces'] == {'begin_task': 1, 'train_chunk': 1, 'evaluate': 2}


def test_without_regularisers_it_forgets_clearly_more(permuted_runs):
  regularised, plain = permuted_runs['hypermask'], permuted_runs['unregularised']
  assert plain['bwt'] <= regularised['bwt'] - 10.0, (plain['bwt'], regularised['bwt'])
  assert plain['mean_accuracy'] <= regularised['mean_accuracy'] - 5.0


def test_small_split_mnist(mnist_data_dir, tmp_path):
  summary = run(split_mnist.get_config('small'), mnist_data_dir, tmp_path / 'split')
  assert len(summary['accuracy_matrix']) == 5
  assert summary['mean_accuracy'] >= 97.0, summary
