"""HyperMask on Split CIFAR-100 with ZenkeNet: the ResNet-20 config with the target and lambda changed.

Variants (configs/variants.py): published (200 epochs per task), `:small` (3 tasks of 8
epochs: a CPU smoke run; without BatchNorm the masked ZenkeNet needs more steps than
ResNet-20 to learn a task), `:seeds`.
"""

from configs import cifar100_resnet20
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = cifar100_resnet20.published()
  config.target = 'zenkenet'
  config.lam = 0.01
  return config


def small(config):
  cifar100_resnet20.small(config)
  config.epochs_per_task = 8
