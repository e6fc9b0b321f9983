"""Checks a config before any compute, naming the bad field and what it allows.

Free of JAX (as data/benchmarks.py, sweep.py and outputs.py), so that the command line refuses
a bad config before it imports JAX: CHOICES is the one record of what each choice field allows,
and the modules that implement a choice are tested to implement exactly these.
"""

import math
import numbers

from hypermask_jax import errors
from hypermask_jax import paths
from hypermask_jax.data import benchmarks
from hypermask_jax.data import class_orders

METHODS = ('hypermask', 'hnet', 'finetune', 'joint')  # methods.METHODS implements each
CHOICES = {'hnet_activation': ('elu', 'relu'), 'reg_targets': ('stored', 'snapshot'),
           'train_embeddings': ('all', 'current'), 'target': ('mlp', 'resnet20', 'zenkenet'),
           'batch_norm': ('batch', 'running'), 'lr_schedule': ('constant', 'plateau'),
           'selection': ('last', 'best_val', 'best_val_loss'),
           'task_inference': ('none', 'entropy', 'fecam'), 'hnet_init': ('torch', 'xavier'),
           'output_heads': ('shared', 'per_task'), 'data_protocol': benchmarks.PROTOCOLS,
           'zenkenet_dropout': ('architecture', 'off')}
IMAGE_TARGETS = ('resnet20', 'zenkenet')  # they need image inputs, not the MNIST vectors


# The settings that tell the two references' protocols apart, printed when a run starts.
PROTOCOL_FIELDS = ('method', 'dataset', 'data_protocol', 'hnet_init', 'lookahead', 'output_heads',
                   'train_embeddings', 'reg_subset', 'target', 'zenkenet_dropout', 'selection',
                   'selection_every_steps')


def describe(config):
  """'method=hnet data_protocol=hypercl hnet_init=xavier ...': the protocol-defining fields."""
  return ' '.join(f'{field}={config[field]}' for field in PROTOCOL_FIELDS)


class ConfigError(errors.BadInput):
  """A config field holds a value the library cannot run with."""


def _number(config, field, low=None, high=None, low_open=False, high_open=False, integer=False):
  value = config[field]
  kind = 'an integer' if integer else 'a number'
  if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
    raise ConfigError(f'config.{field}={value!r}: must be {kind}')
  if not math.isfinite(value):
    raise ConfigError(f'config.{field}={value!r}: must be finite')
  bad_low = low is not None and (value <= low if low_open else value < low)
  bad_high = high is not None and (value >= high if high_open else value > high)
  if bad_low or bad_high:
    lo = '' if low is None else ('(' if low_open else '[') + f'{low}, '
    hi = 'inf)' if high is None else f'{high}' + (')' if high_open else ']')
    raise ConfigError(f'config.{field}={value!r}: must be {kind} in {lo or "(-inf, "}{hi}')


def _sizes(config, field):
  value = config[field]
  if (not isinstance(value, (tuple, list))
      or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                 for v in value)):
    raise ConfigError(f'config.{field}={value!r}: must be a tuple of positive integers')


def resolve(config):
  """A validated copy of config with its defaults filled in (max_tasks = num_tasks if unset)
  and a local data_dir made absolute."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.max_tasks is None:
      config.max_tasks = config.num_tasks
    if isinstance(config.data_dir, str):
      config.data_dir = paths.absolute(config.data_dir)
  validate(config)
  return config


def validate(config):
  """Raises ConfigError for the first field that is out of range."""
  if config.dataset not in benchmarks.BENCHMARKS:
    raise ConfigError(f'config.dataset={config.dataset!r}: must be one of {benchmarks.BENCHMARKS}')
  if config.method not in METHODS:
    raise ConfigError(f'config.method={config.method!r}: must be one of {METHODS}')
  for field in ('num_tasks', 'max_tasks', 'batch_size', 'embedding_size', 'log_every_steps',
                'eval_batch_size', 'checkpoint_every_steps', 'checkpoints_to_keep',
                'width_factor'):
    _number(config, field, low=1, integer=True)
  _number(config, 'final_checkpoints_to_keep', low=0, integer=True)
  _number(config, 'runs_per_program', low=0, integer=True)
  _number(config, 'max_call_seconds', low=0, low_open=True)
  _number(config, 'epochs_per_task', low=0, integer=True)
  if config.epochs_per_task == 0:
    _number(config, 'steps_per_task', low=1, integer=True)
  elif config.steps_per_task is not None:
    raise ConfigError(f'config.steps_per_task={config.steps_per_task!r}: must be None when '
                      f'config.epochs_per_task={config.epochs_per_task} (the steps follow from '
                      'the epochs); set one of the two')
  _number(config, 'seed', low=0, integer=True)
  _number(config, 'chunk_size', low=0, integer=True)
  _number(config, 'chunk_embedding_size', low=1, integer=True)
  _number(config, 'reg_subset', low=0, integer=True)
  for field, allowed in CHOICES.items():
    if config[field] not in allowed:
      raise ConfigError(f'config.{field}={config[field]!r}: must be one of {allowed}')
  for field, empty in (('data_dir', "TFDS's default"), ('compilation_cache', 'no cache')):
    if not isinstance(config[field], str):
      raise ConfigError(f'config.{field}={config[field]!r}: must be a path (a string; '
                        f"'' for {empty})")
  for field in ('lookahead', 'l1_masked', 'download'):
    if not isinstance(config[field], bool):
      raise ConfigError(f'config.{field}={config[field]!r}: must be True or False')
  _number(config, 'learning_rate', low=0, low_open=True)
  _number(config, 'beta', low=0)
  _number(config, 'lam', low=0)
  _number(config, 'sparsity', low=0, high=100, high_open=True)
  _number(config, 'plateau_factor', low=0, high=1, low_open=True, high_open=True)
  _number(config, 'plateau_patience', low=0, integer=True)
  _number(config, 'selection_every_steps', low=0, integer=True)
  _number(config, 'plateau_min_lr', low=0)
  for field, default in (('lr_schedule', 'constant'), ('selection', 'last')):
    if config[field] != default and not config.epochs_per_task:
      raise ConfigError(f'config.{field}={config[field]!r} works per epoch: it needs '
                        f'config.epochs_per_task > 0 (or {field}={default!r})')
  if config.data_protocol == 'hypercl':
    if config.dataset not in ('permuted_mnist', 'split_mnist'):
      raise ConfigError("config.data_protocol='hypercl' covers the MNIST benchmarks: use "
                        f"data_protocol='hypermask' with dataset={config.dataset!r}")
    for field, default in (('lr_schedule', 'constant'), ('selection', 'last')):
      if config[field] != default:
        raise ConfigError(f"config.{field}={config[field]!r} needs a validation split, which "
                          f"config.data_protocol='hypercl' has none of: use {field}={default!r}")
  if config.target in IMAGE_TARGETS and config.dataset not in benchmarks.IMAGE_BENCHMARKS:
    raise ConfigError(f'config.target={config.target!r} needs image inputs: use it with '
                      f'dataset in {benchmarks.IMAGE_BENCHMARKS}, or target=\'mlp\' for '
                      f'{config.dataset}')
  if config.fecam_scenario not in class_orders.FECAM_SCENARIOS:
    raise ConfigError(f'config.fecam_scenario={config.fecam_scenario!r}: must be one of '
                      f'{tuple(class_orders.FECAM_SCENARIOS)} (the number of tasks of a FeCAM '
                      'scenario)')
  if config.batch_norm == 'running' and config.method == 'joint':
    raise ConfigError("config.batch_norm='running' keeps statistics per task, but "
                      "method='joint' mixes tasks in a batch: use batch_norm='batch'")
  _sizes(config, 'target_hidden')
  _sizes(config, 'hnet_hidden')
  if config.num_tasks > config.max_tasks:
    raise ConfigError(f'config.num_tasks={config.num_tasks} exceeds config.max_tasks='
                      f'{config.max_tasks}: raise max_tasks to at least num_tasks')
  most = benchmarks.max_tasks(config)
  if most is not None and config.num_tasks > most:
    scenario = (f' (fecam_scenario={config.fecam_scenario})'
                if config.dataset == 'split_cifar100_fecam' else '')
    raise ConfigError(f'config.num_tasks={config.num_tasks}: {config.dataset}{scenario} has at '
                      f'most {most} tasks')


def fit_to_data(config, task_set):
  """Checks what depends on the loaded data; fills steps_per_task from epochs_per_task.

  An epoch is ceil(largest task training set / batch_size) steps.
  """
  smallest = int(task_set.train.size.min())
  if config.batch_size > smallest:
    raise ConfigError(f'config.batch_size={config.batch_size}: larger than the smallest task '
                      f'training set ({smallest} examples); must be at most {smallest}')
  if not config.epochs_per_task:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.steps_per_task = (config.epochs_per_task
                             * math.ceil(task_set.train.max_size / config.batch_size))
  return config
