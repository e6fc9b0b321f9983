"""HyperMask on Split CIFAR-100 with ZenkeNet: the ResNet-20 config with the target and lambda changed.

Variants: `configs/cifar100_zenkenet.py` (published, 200 epochs per task) and
`configs/cifar100_zenkenet.py:small` (3 tasks of 8 epochs: a CPU smoke run; without
BatchNorm the masked ZenkeNet needs more steps than ResNet-20 to learn a task).
"""

from configs import cifar100_resnet20


def get_config(variant='published'):
  config = cifar100_resnet20.get_config(variant)
  config.target = 'zenkenet'
  # The published numbers were produced without dropout (the reference's network stayed in
  # evaluation mode after the first validation); 'architecture' trains with it.
  config.zenkenet_dropout = 'off'
  config.lam = 0.01
  if variant == 'small':
    config.epochs_per_task = 8
  return config
