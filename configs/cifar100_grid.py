"""HyperMask's published grid search on Split CIFAR-100: beta x lambda, 12 runs.

beta in {0.01, 0.05, 0.1, 1}, lambda in {0.01, 0.1, 1}, as the reference
searched them, at seed 1; the 12 runs train as one compiled program. The
sweep's best.json names the setting with the best mean validation accuracy.

Variants: published (ResNet-20, the other settings as `configs/cifar100_resnet20.py`),
`:zenkenet` (as `configs/cifar100_zenkenet.py`) and `:small` (the grid on the ResNet-20
smoke config, `configs/cifar100_resnet20.py:small`, for a CPU).
"""

from configs import cifar100_resnet20
from configs import cifar100_zenkenet

VARIANTS = ('published', 'zenkenet', 'small')
GRID = {'beta': (0.01, 0.05, 0.1, 1.0), 'lam': (0.01, 0.1, 1.0)}


def get_config(variant='published'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}: use one of {VARIANTS}')
  if variant == 'zenkenet':
    config = cifar100_zenkenet.get_config()
  else:
    config = cifar100_resnet20.get_config(variant)
  for field, values in GRID.items():
    config.sweep[field] = values
  return config
