"""HyperMask's published grid search on Permuted MNIST-10: beta x lambda x masked L1, 12 runs.

beta in {1e-3, 5e-4, 5e-3}, lambda in {1e-3, 5e-4}, l1_masked in {True, False},
as the reference searched them, at seed 1. All 12 runs differ only in traced
fields, so they train as one compiled program. The sweep's best.json names the
setting with the best mean validation accuracy; add seeds to the grid with
`--config.sweep.seed=1,2,3,4,5`, or run the best setting alone over them.

Variants: published (the other settings as `configs/permuted_mnist.py`) and
`:small` (those of `configs/permuted_mnist.py:small`: 12 runs of 3 tasks on a CPU).
"""

from configs import permuted_mnist

VARIANTS = ('published', 'small')
GRID = {'beta': (1e-3, 5e-4, 5e-3), 'lam': (1e-3, 5e-4), 'l1_masked': (True, False)}


def get_config(variant='published'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}: use one of {VARIANTS}')
  config = permuted_mnist.get_config(variant)
  for field, values in GRID.items():
    config.sweep[field] = values
  return config
