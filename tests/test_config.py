"""Bad input: a clear error naming the field, before any compute, from the API and the CLI."""

import pytest

from configs import permuted_mnist
from configs import split_mnist
from hypermask_jax import config_checks
from hypermask_jax import hypernet
from hypermask_jax import methods
from tests.conftest import synthetic_mnist
from hypermask_jax.data import tasks


def test_the_checks_allow_the_choices_the_library_implements_by_name():
  """config_checks, free of JAX, lists the choices itself; the tables that map a choice's
  name to its implementation hold exactly those."""
  assert tuple(methods.METHODS) == config_checks.METHODS
  assert tuple(hypernet.ACTIVATIONS) == config_checks.CHOICES['hnet_activation']


@pytest.mark.parametrize('field,value,message', [
    ('dataset', 'cifar10', "config.dataset='cifar10': must be one of"),
    ('method', 'ewc', "config.method='ewc': must be one of"),
    ('beta', -1.0, 'config.beta=-1.0: must be a number in [0, inf)'),
    ('lam', 'abc', "config.lam='abc': must be a number"),
    ('learning_rate', 0.0, 'config.learning_rate=0.0: must be a number in (0, inf)'),
    ('sparsity', 100.0, 'config.sparsity=100.0: must be a number in [0, 100)'),
    ('sparsity', -0.5, 'config.sparsity=-0.5: must be a number in [0, 100)'),
    ('batch_size', 0, 'config.batch_size=0: must be an integer in [1, inf)'),
    ('steps_per_task', 2.5, 'config.steps_per_task=2.5: must be an integer'),
    ('target_hidden', (100, -1), 'config.target_hidden=(100, -1): must be a tuple of positive'),
    ('beta', float('nan'), 'config.beta=nan: must be finite'),
    ('target', 'vgg', "config.target='vgg': must be one of ('mlp', 'resnet20', 'zenkenet')"),
    ('target', 'resnet20', "config.target='resnet20' needs image inputs"),
    ('lr_schedule', 'plateau', "config.lr_schedule='plateau' works per epoch: it needs "
     'config.epochs_per_task > 0'),
    ('selection', 'best', "config.selection='best': must be one of ('last', 'best_val', "
     "'best_val_loss')"),
    ('epochs_per_task', 3, 'config.steps_per_task=5000: must be None when '
     'config.epochs_per_task=3'),
    ('plateau_factor', 1.0, 'config.plateau_factor=1.0: must be a number in (0, 1)'),
    ('selection_every_steps', -100, 'config.selection_every_steps=-100: must be an integer in '
     '[0, inf)'),
    ('hnet_init', 'kaiming', "config.hnet_init='kaiming': must be one of ('torch', 'xavier')"),
    ('output_heads', 'multi', "config.output_heads='multi': must be one of ('shared', "
     "'per_task')"),
    ('data_protocol', 'hnet', "config.data_protocol='hnet': must be one of ('hypermask', "
     "'hypercl')"),
    ('zenkenet_dropout', True, "config.zenkenet_dropout=True: must be one of ('architecture', "
     "'off')"),
])
def test_bad_field_is_named(field, value, message):
  config = permuted_mnist.get_config()
  with config.ignore_type():
    config[field] = value
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.resolve(config)
  assert message in str(e.value)


def test_cifar_configs_resolve_and_refuse_bad_combinations():
  from configs import cifar100_resnet20  # pylint: disable=g-import-not-at-top
  for variant in ('published', 'small'):
    assert config_checks.resolve(cifar100_resnet20.get_config(variant)).steps_per_task is None
  config = cifar100_resnet20.get_config()
  config.num_tasks = 11
  with pytest.raises(config_checks.ConfigError, match='split_cifar100 has at most 10'):
    config_checks.resolve(config)
  config = cifar100_resnet20.get_config()
  config.method, config.batch_norm = 'joint', 'running'
  with pytest.raises(config_checks.ConfigError, match="batch_norm='running' keeps statistics"):
    config_checks.resolve(config)


def test_hypercl_protocol_refuses_what_needs_a_validation_split():
  from configs import cifar100_resnet20  # pylint: disable=g-import-not-at-top
  config = cifar100_resnet20.get_config()
  config.data_protocol = 'hypercl'
  with pytest.raises(config_checks.ConfigError, match="data_protocol='hypercl' covers the MNIST"):
    config_checks.resolve(config)
  config = permuted_mnist.get_config()
  config.data_protocol, config.epochs_per_task, config.steps_per_task = 'hypercl', 2, None
  config.selection = 'best_val'
  with pytest.raises(config_checks.ConfigError, match="config.selection='best_val' needs a "
                     "validation split"):
    config_checks.resolve(config)


HYPERCL = {'hnet_init': 'xavier', 'lookahead': True, 'output_heads': 'per_task',
           'data_protocol': 'hypercl', 'train_embeddings': 'current'}
HYPERMASK = {'hnet_init': 'torch', 'lookahead': False, 'output_heads': 'shared',
             'data_protocol': 'hypermask'}


def test_hnet_configs_run_hnet_as_hypercl_published_it():
  from configs import hnet_permuted_mnist  # pylint: disable=g-import-not-at-top
  from configs import hnet_permuted_mnist_100  # pylint: disable=g-import-not-at-top
  from configs import hnet_split_mnist  # pylint: disable=g-import-not-at-top
  for module in (hnet_permuted_mnist, hnet_permuted_mnist_100, hnet_split_mnist):
    for variant in module.VARIANTS:
      config = module.get_config(variant)
      assert {k: config[k] for k in HYPERCL} == HYPERCL, (module.__name__, variant)
  assert hnet_split_mnist.get_config().hnet_activation == 'relu'
  assert hnet_permuted_mnist_100.get_config().reg_subset == 0  # every old task, every step
  assert ('data_protocol=hypercl hnet_init=xavier lookahead=True output_heads=per_task '
          'train_embeddings=current') in config_checks.describe(hnet_permuted_mnist.get_config())


def test_hypermask_configs_keep_hypermasks_settings():
  from configs import cifar100_resnet20  # pylint: disable=g-import-not-at-top
  from configs import cifar100_zenkenet  # pylint: disable=g-import-not-at-top
  for module in (permuted_mnist, split_mnist, cifar100_resnet20, cifar100_zenkenet):
    config = module.get_config()
    assert config.method == 'hypermask'
    assert {k: config[k] for k in HYPERMASK} == HYPERMASK, module.__name__
  assert cifar100_zenkenet.get_config().zenkenet_dropout == 'off'  # as published
  # The reference's best-validation checks: every 100 iterations and at each epoch's end.
  assert cifar100_resnet20.get_config().selection_every_steps == 100
  assert cifar100_zenkenet.get_config().selection_every_steps == 100
  assert 'selection=best_val selection_every_steps=100' in config_checks.describe(
      cifar100_resnet20.get_config())


def test_more_tasks_than_max_tasks():
  config = permuted_mnist.get_config()
  config.num_tasks = 12
  config.max_tasks = 10
  with pytest.raises(config_checks.ConfigError, match='num_tasks=12 exceeds config.max_tasks=10'):
    config_checks.resolve(config)


def test_max_tasks_defaults_to_num_tasks():
  config = permuted_mnist.get_config()
  config.num_tasks = 20
  resolved = config_checks.resolve(config)
  assert resolved.max_tasks == 20 and config.max_tasks is None
  config.max_tasks = 30
  assert config_checks.resolve(config).max_tasks == 30 and config.num_tasks == 20


def test_split_mnist_has_five_tasks():
  config = split_mnist.get_config()
  config.num_tasks = 6
  with pytest.raises(config_checks.ConfigError, match='split_mnist has at most 5'):
    config_checks.resolve(config)


def test_batch_larger_than_a_task():
  train, test = synthetic_mnist(n_train=600, n_test=100)
  data = tasks.split_mnist(train, test, num_tasks=5, val_size=10)
  config = split_mnist.get_config()
  with pytest.raises(config_checks.ConfigError, match='config.batch_size=128: larger than the '
                     'smallest task training set'):
    config_checks.fit_to_data(config, data)
