"""The variants every published config offers, after a colon: `--config=configs/FILE.py:small`.

  published  the settings of the paper's runs (the default)
  small      a smoke run of the same kind that fits a 2-core CPU in minutes
  seeds      the published settings over the papers' five seeds, as one sweep
"""

VARIANTS = ('published', 'small', 'seeds')
SEEDS = (1, 2, 3, 4, 5)  # as in the papers: "five different seed values"


def apply(config, variant, small, seeds=SEEDS):
  """config (the published settings) turned into `variant`; small(config) makes the small one."""
  if variant == 'small':
    small(config)
  elif variant == 'seeds':
    config.sweep.seed = seeds
  elif variant != 'published':
    raise ValueError(f'unknown variant {variant!r}: use one of {VARIANTS}')
  return config
