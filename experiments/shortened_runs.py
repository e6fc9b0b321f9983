"""The benchmarks' shortened runs of the published configs: which configs, and how shortened;
and the settings the step benchmarks time a config under.

Kept apart from experiments/benchmark_vs_torch.py (a script with command-line
flags) so that tests can import it.
"""

import math

CONFIGS = ('permuted_mnist', 'split_mnist', 'cifar100_resnet20', 'cifar100_zenkenet',
           'hnet_permuted_mnist', 'hnet_split_mnist', 'hnet_permuted_mnist_100')


def shortened_config(name, num_tasks, steps):
  """The published config with `num_tasks` tasks of about `steps` steps, published shapes kept."""
  from hypermask_jax import config_checks  # pylint: disable=g-import-not-at-top
  config = __import__(f'configs.{name}', fromlist=['get_config']).get_config()
  with config.unlocked():
    config.max_tasks = config.max_tasks or config.num_tasks
    config.num_tasks = min(num_tasks, config.num_tasks)
    if config.epochs_per_task:
      config.epochs_per_task = math.ceil(steps / steps_per_epoch(config))
    else:
      config.steps_per_task = steps
    config.checkpoint_every_steps = 10 ** 9  # the end-of-task checkpoints only
  return config_checks.resolve(config)


def for_step_timing(config, steps, calls):
  """The config, changed in place, as the step benchmarks time it: `calls` + 1 compiled calls
  of `steps` steps (a log line each), steps instead of epochs (no end-of-epoch validation),
  a constant rate and the last parameters kept (no best-validation check)."""
  with config.unlocked():
    config.log_every_steps = steps
    config.steps_per_task = max(config.steps_per_task or 0, steps * (calls + 1))
    config.epochs_per_task, config.lr_schedule, config.selection = 0, 'constant', 'last'
  return config


def with_steps(config):
  """A copy of the config with steps_per_task filled in from its epochs (the PyTorch loop
  counts steps; hypermask_jax takes the epochs)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.epochs_per_task:
      config.steps_per_task = config.epochs_per_task * steps_per_epoch(config)
  return config


def steps_per_epoch(config):
  return math.ceil(4500 / config.batch_size)  # Split CIFAR-100: 4500 training images per task
