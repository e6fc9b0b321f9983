"""The benchmarks' shortened configs: every published config they name runs as written."""

import pytest

from experiments import shortened_runs
from hypermask_jax import config_checks


@pytest.mark.parametrize('name', shortened_runs.CONFIGS)
def test_shortened_configs_resolve_as_train_and_evaluate_takes_them(name):
  """hypermask_jax gets the config as shortened (epochs stay epochs); the PyTorch loop gets the
  same config with its steps counted."""
  config = shortened_runs.shortened_config(name, 2, 100)
  assert config_checks.resolve(config).num_tasks == 2  # what train_and_evaluate does first
  steps = shortened_runs.with_steps(config)
  if config.epochs_per_task:
    assert config.steps_per_task is None
    assert steps.steps_per_task == config.epochs_per_task * 141 >= 100  # 4500 images, batch 32
  else:
    assert steps.steps_per_task == config.steps_per_task == 100
