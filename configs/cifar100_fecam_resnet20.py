"""HyperMask in FeCAM's class-incremental Split CIFAR-100 setting, with ResNet-20.

FeCAM's fixed class order and scenario (docs/methods.md): by default the one
the official HyperMask code reports, 5 tasks of 20 classes
(`--config.fecam_scenario=6`, 11 or 21 for the others; the head has as many
outputs as the largest task's classes). Its best hyperparameters for this
setting: embedding 48, hypernetwork (200,), Adam 1e-4, batch 32, 200 epochs,
beta 0.01, lambda 1 (unmasked L1), sparsity 0, plateau schedule, selection by
validation loss (the reference's 'val_loss' compares the validation accuracy:
`--config.selection=best_val` reproduces that code), 50 validation images per
class. After each task, the test samples of all seen tasks are classified
without the task: FeCAM's class and task modes and the entropy.

Variants (configs/variants.py): published, `:small` (3 tasks, width 1, hypernetwork (10,), 3
epochs: a CPU smoke run), `:seeds`.
"""

from configs import cifar100_resnet20
from configs import variants

VARIANTS = variants.VARIANTS


def get_config(variant='published'):
  return variants.apply(published(), variant, small)


def published():
  config = cifar100_resnet20.published()
  config.dataset = 'split_cifar100_fecam'
  config.fecam_scenario = 5
  config.num_tasks = 5
  config.hnet_hidden = (200,)
  config.learning_rate = 1e-4
  config.selection = 'best_val_loss'
  config.task_inference = 'fecam'
  return config


def small(config):
  cifar100_resnet20.small(config)
  config.learning_rate = 1e-3
