"""Config files (configs/*.py with get_config(variant)): found, loaded and checked by name.

`load('configs/permuted_mnist.py:small')` is what --config does, with errors
that name the file or the variant (ml_collections' own loader reports them as
tracebacks or defers them to the first use of the config).
"""

import importlib.util
import os
import pathlib

from hypermask_jax import errors

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def _module(path):
  spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def available():
  """[(path relative to the repo, variants, first docstring line)] of configs/*.py."""
  found = []
  for path in sorted(CONFIGS.glob('*.py')):
    module = _module(str(path))
    if hasattr(module, 'get_config'):
      found.append((f'configs/{path.name}', getattr(module, 'VARIANTS', ('published',)),
                    (module.__doc__ or '').strip().splitlines()[0]))
  return found


def load(value):
  """The ConfigDict of 'PATH[:VARIANT]'; errors.BadInput naming what is wrong (as --config)."""
  path, _, variant = value.partition(':')
  if not os.path.isfile(path):
    known = ', '.join(p for p, _, _ in available())
    raise errors.BadInput(f'--config={value}: no such file {path!r}; the configs are {known}')
  try:
    module = _module(path)
  except Exception as e:  # pylint: disable=broad-except  (a user's config may raise anything)
    raise errors.BadInput(f'--config={value}: cannot load {path} ({type(e).__name__}: '
                          f'{e})') from None
  if not hasattr(module, 'get_config'):
    raise errors.BadInput(f'--config={value}: {path} has no get_config()')
  variants = getattr(module, 'VARIANTS', None)
  if variant and variants is not None and variant not in variants:
    raise errors.BadInput(f"--config={value}: unknown variant {variant!r}; {path} has "
                          f"{', '.join(variants)}")
  try:
    return module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.BadInput(f'--config={value}: get_config({variant!r}) failed '
                          f'({type(e).__name__}: {e})') from None
