"""HyperMask on Tiny ImageNet with the 64x64 ZenkeNet, published settings.

As configs/tiny_imagenet_resnet20.py with the reference's ZenkeNet settings:
sparsity 50, beta 0.01, lambda 1, Adam 1e-3. The 64x64 ZenkeNet has 64
channels in both conv stages and no hidden Dense layer (targets.py).

Variants (configs/variants.py): published, `:small` (3 tasks of 6 epochs), `:seeds` (5 to 9).
"""

from configs import tiny_imagenet_resnet20
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small, tiny_imagenet_resnet20.SEEDS)


def published():
  config = tiny_imagenet_resnet20.published()
  config.target = 'zenkenet'
  config.sparsity = 50.0
  config.beta = 0.01
  config.lam = 1.0
  config.learning_rate = 1e-3
  return config


def small(config):
  tiny_imagenet_resnet20.small(config)
  config.epochs_per_task = 6  # with lambda 1 the later tasks learn through their masks: slower
