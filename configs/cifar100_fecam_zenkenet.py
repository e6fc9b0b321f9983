"""HyperMask in FeCAM's class-incremental Split CIFAR-100 setting, with ZenkeNet.

As configs/cifar100_fecam_resnet20.py with the reference's ZenkeNet setting, lambda 0.01.

Variants (configs/variants.py): published, `:small` (3 tasks of 8 epochs), `:seeds`.
"""

from configs import cifar100_fecam_resnet20
from configs import cifar100_zenkenet
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = cifar100_fecam_resnet20.published()
  config.target = 'zenkenet'
  config.lam = 0.01
  return config


def small(config):
  cifar100_zenkenet.small(config)
  config.learning_rate = 1e-3
