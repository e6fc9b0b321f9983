"""Config files (configs/*.py with get_config(variant)): found, loaded and checked by name.

`load('configs/permuted_mnist.py:small')` is what --config does, with errors
that name the file or the variant (ml_collections' own loader reports them as
tracebacks or defers them to the first use of the config). `check_flags`
checks a command line's --config and --config.FIELD flags that way before
absl parses them; `define_flag` defines the --config flag of a command that
does (hypermask_jax.main, and the scripts through errors.run_script).
"""

import difflib
import importlib.util
import os
import pathlib
import re

from ml_collections import config_flags

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


def _config_value(argv):
  """The value given to --config (the last one, as absl takes it; None if the flag is absent)."""
  value = None
  for i, arg in enumerate(argv):
    match = re.match(r'^--?config(=(.*))?$', arg)
    if match:
      value = match.group(2) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else '')
  return value


def _fields(config, prefix=''):
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if hasattr(value, 'items'):
      names += _fields(value, f'{prefix}{key}.')
  return names


def define_flag(default, help_text):
  """The --config flag (config_flags.DEFINE_config_file) of a command that checks its flags
  with check_flags first: it takes any --config.FIELD (and so an unlocked config), where
  ml_collections would refuse an unknown one with a traceback as the command is imported."""
  return config_flags.DEFINE_config_file('config', default, help_text, lock_config=False,
                                         accept_new_attributes=True)


def check_flags(argv, default=None, sweep=True):
  """Checks --config and every --config.FIELD override in argv with messages that name them.

  ml_collections reports these cases with tracebacks or deferred errors; this
  finds them first (the config file is loaded once more by the flag itself).
  default: the config a command runs without --config (None: --config is
  required); sweep: whether --config.sweep.FIELD is allowed.
  """
  value = _config_value(argv)
  example = ('name a config file, e.g. --config=configs/permuted_mnist.py:small '
             '(--help lists them)')
  if value is None and default is None:
    raise errors.BadInput(f'--config: missing; {example}')
  if value == '':
    raise errors.BadInput(f'--config: empty; {example}')
  config = default if value is None else load(value)
  fields = [f for f in _fields(config) if f.split('.')[0] != 'sweep']
  for arg in argv:
    match = re.match(r'^--?(?:no)?config\.([^=]+)', arg)
    if not match:
      continue
    field = match.group(1)
    swept = sweep and field.startswith('sweep.')
    if (field[len('sweep.'):] if swept else field) not in fields:
      close = difflib.get_close_matches(field[len('sweep.'):] if swept else field, fields, n=1,
                                        cutoff=0.6)
      hint = (f"did you mean --config.{'sweep.' if swept else ''}{close[0]}?" if close
              else '--help lists the main ones')
      what = 'no such config field to sweep' if swept else 'no such config field'
      raise errors.BadInput(f'--config.{field}: {what} ({hint})')
