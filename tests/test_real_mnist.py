"""Short runs of the small configs on real MNIST: they learn, and the regularisers prevent forgetting.

Reference points (this repo, CPU, seed 1), 3 Permuted MNIST tasks: HyperMask
94.0% mean final accuracy, BWT -1.2 (without regularisers BWT -37); HNET
93.4%, BWT -0.1; fine-tuning 78.4%, BWT -27.5; joint training 96.6%. Small
Split MNIST (5 tasks): HyperMask 99.2%.
"""

import pytest

from configs import hnet_permuted_mnist
from configs import permuted_mnist
from configs import split_mnist
from hypermask_jax import train


pytestmark = pytest.mark.slow  # real training on real MNIST


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
  # One program per function for the whole run.
  assert summary['traces'] == {'init_state': 1, 'begin_task': 1, 'train_steps': 1, 'train_step': 1,
                               'end_chunk': 1, 'evaluate_test': 1, 'evaluate_val': 1}


def test_without_regularisers_it_forgets_clearly_more(permuted_runs):
  regularised, plain = permuted_runs['hypermask'], permuted_runs['unregularised']
  assert plain['bwt'] <= regularised['bwt'] - 10.0, (plain['bwt'], regularised['bwt'])
  assert plain['mean_accuracy'] <= regularised['mean_accuracy'] - 5.0


@pytest.fixture(scope='module')
def hnet_and_baselines(mnist_data_dir, tmp_path_factory):
  """HNET's small config and the two baselines on the same 3 tasks and step budget."""
  workdir = tmp_path_factory.mktemp('hnet')
  return {method: run(hnet_permuted_mnist.get_config('small'), mnist_data_dir, workdir / method,
                      method=method) for method in ('hnet', 'finetune', 'joint')}


def test_small_hnet_permuted_mnist(hnet_and_baselines):
  summary = hnet_and_baselines['hnet']
  assert summary['mean_accuracy'] >= 90.0, summary
  assert summary['bwt'] >= -2.0, summary
  assert summary['params']['compression'] < 1.0  # the chunked hypernet is the smaller network


def test_finetuning_forgets_and_joint_training_bounds_from_above(hnet_and_baselines):
  hnet, finetune, joint = (hnet_and_baselines[m] for m in ('hnet', 'finetune', 'joint'))
  assert finetune['bwt'] <= hnet['bwt'] - 5.0, (finetune['bwt'], hnet['bwt'])
  assert joint['mean_accuracy'] >= hnet['mean_accuracy'] - 1.0


def test_small_split_mnist(mnist_data_dir, tmp_path):
  summary = run(split_mnist.get_config('small'), mnist_data_dir, tmp_path / 'split')
  assert len(summary['accuracy_matrix']) == 5
  assert summary['mean_accuracy'] >= 97.0, summary
