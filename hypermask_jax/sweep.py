"""Sweeps: `config.sweep` maps field names to lists of values; the runs are their product.

  config.sweep.seed = (1, 2, 3, 4, 5)          # in a config file, or on the command line:
  --config.sweep.seed=1,2,3,4,5 --config.sweep.beta=5e-4,1e-3

makes 10 runs. Runs that differ only in traced fields (fields.TRACED) share one
compiled program, vmapped over a leading runs axis; a static field in the
sweep splits the runs into groups, each its own program, run one after
another. `runs_per_program` caps the runs of one program (a larger group runs
as several); 0 lets the program take as many as fit in memory.

A config without a sweep is one run, with its outputs directly in the workdir.
The runs of a sweep write theirs to `<workdir>/runs/<name>/` (the same files
as a single run); each program keeps its checkpoints in
`<workdir>/programs/<name>/`.
"""

import dataclasses
import itertools
import json
import numbers

from ml_collections import config_dict

from hypermask_jax import config_checks
from hypermask_jax import fields
from hypermask_jax import outputs

SWEEP_FIRST = ('method', 'dataset', 'target')  # in run names; 'seed' always comes last


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its swept values and its own resolved config."""
  index: int
  values: dict
  config: config_dict.ConfigDict

  @property
  def name(self):
    """A folder name from the swept values: 'beta=0.001,lam=0.0005,seed=1' ('' if not swept)."""
    return ','.join(f'{k}={short(v)}' for k, v in self.values.items())


@dataclasses.dataclass(frozen=True)
class Program:
  """Runs that share one compiled program; `config` carries the static choices they share."""
  index: int
  runs: tuple
  config: config_dict.ConfigDict

  @property
  def name(self):
    return f'program{self.index + 1}'


def short(value):
  """A swept value as run names and tables show it: 0.001, 25-25, True."""
  if isinstance(value, (tuple, list)):
    return '-'.join(short(v) for v in value)
  return f'{value:g}' if isinstance(value, float) else str(value)


def is_sweep(config):
  return bool(config.get(fields.SWEEP))


def swept_values(config):
  """{field: tuple of values} of config.sweep, checked; fields in naming order (seed last)."""
  sweep = config.get(fields.SWEEP) or {}
  found = {}
  for field in sweep:
    if field == fields.SWEEP or field not in config:
      raise config_checks.ConfigError(f'config.sweep.{field}: no such config field to sweep')
    values = sweep[field]
    if isinstance(values, str):
      values = tuple(v.strip() for v in values.split(','))
    elif not isinstance(values, (tuple, list)) or (
        isinstance(config[field], tuple) and values and not isinstance(values[0], (tuple, list))):
      values = (values,)  # one value (a tuple-valued field takes a list of tuples)
    if not values:
      raise config_checks.ConfigError(f'config.sweep.{field}: empty; give at least one value')
    found[field] = tuple(values)
  order = lambda f: (f == 'seed', f not in SWEEP_FIRST, f)
  return {f: found[f] for f in sorted(found, key=order)}


def _with_value(config, field, value):
  """config with field = value, coerced to the field's type; ConfigError naming the field."""
  current = config[field]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, numbers.Integral) and not isinstance(
      value, bool):
    value = float(value)
  if isinstance(value, str) and not isinstance(current, str) and current is not None:
    try:  # a value split from a comma-separated string: '1e-3' for a float field
      value = type(current)(value) if not isinstance(current, bool) else {
          'true': True, 'false': False}[value.lower()]
    except (ValueError, KeyError):
      pass
  try:
    config[field] = value
  except TypeError:
    raise config_checks.ConfigError(
        f'config.sweep.{field}: {value!r} is not of the field\'s type '
        f'({type(current).__name__}, like {current!r})') from None


def expand(config):
  """The runs of config (one if it has no sweep), each with its own checked config."""
  values = swept_values(config)
  base = config.copy_and_resolve_references()
  with base.unlocked():
    base[fields.SWEEP] = config_dict.ConfigDict()
  runs = []
  names = set()
  for index, combo in enumerate(itertools.product(*values.values())):
    run_config = base.copy_and_resolve_references()
    with run_config.unlocked():
      for field, value in zip(values, combo):
        _with_value(run_config, field, value)
    try:
      run_config = config_checks.resolve(run_config)
    except config_checks.ConfigError as e:
      if not values:
        raise
      raise config_checks.ConfigError(f'config.sweep (run {dict(zip(values, combo))}): '
                                      f'{e}') from None
    run = Run(index, dict(zip(values, combo)), run_config)
    if run.name in names:
      raise config_checks.ConfigError(f'config.sweep: two runs are named {run.name!r}; list '
                                      'each value once')
    names.add(run.name)
    runs.append(run)
  return runs


def program_config(runs):
  """The config a program compiles: its runs' shared static fields; sparsity is the largest."""
  config = runs[0].config.copy_and_resolve_references()
  with config.unlocked():
    config.sparsity = max(run.config.sparsity for run in runs)
  return config


def group(runs, capacity):
  """Programs: runs with equal static fields, at most capacity(program config) in each.

  Programs are numbered in the order of their first runs; the same runs and
  capacity give the same programs in every process and on every resume.
  """
  groups = {}
  for run in runs:
    key = repr(sorted(fields.static_part(outputs.flat_config(run.config)).items()))
    groups.setdefault(key, []).append(run)
  programs = []
  for members in groups.values():
    size = capacity(program_config(members))
    for start in range(0, len(members), size):
      chunk = tuple(members[start:start + size])
      programs.append(Program(len(programs), chunk, program_config(chunk)))
  return programs


def check(config, workdir, shard=None):
  """The runs of config and the shard's (index, count), the config, its sweep and the shard
  checked, and the workdir checked to hold no other sweep or run: raises BadInput, writes
  nothing. Needs no JAX, so the command line refuses bad input with it before importing JAX
  (train_and_evaluate checks again, for callers of the library)."""
  runs = expand(config)
  shard = parse_shard(shard)
  check_folder(workdir, config)
  return runs, shard


def parse_shard(text):
  """'i/n' (0 <= i < n) -> (i, n); None -> (0, 1). ConfigError-like BadInput otherwise."""
  if text is None:
    return 0, 1
  try:
    index, count = (int(part) for part in text.split('/'))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise config_checks.ConfigError(f'--sweep_shard={text}: must be i/n with 0 <= i < n, '
                                    'e.g. 0/4 for the first of 4 shards')
  return index, count


def shard(programs, index, count):
  """The programs shard `index` of `count` runs (round robin, so shards stay balanced)."""
  return [p for p in programs if p.index % count == index]


SWEEP_RECORD = 'sweep.json'
RUNS = 'runs'
PROGRAMS = 'programs'


def record(config):
  """What identifies a sweep: its base config (less run settings) and its swept values."""
  base = {k: v for k, v in outputs.flat_config(config).items()
          if k.split('.')[0] != fields.SWEEP and k not in fields.RUN_SETTINGS}
  return {'config': base, 'sweep': {k: [list(x) if isinstance(x, tuple) else x for x in v]
                                    for k, v in swept_values(config).items()}}


def check_folder(workdir, config):
  """Raises WorkdirError if workdir holds another sweep, or a single run where a sweep goes (or
  the other way round). Writes nothing."""
  path = outputs.epath.Path(workdir)
  saved = path / SWEEP_RECORD
  if is_sweep(config):
    if (path / outputs.CONFIG).exists():
      raise outputs.WorkdirError(f'{path} holds a single run; a sweep needs its own --workdir')
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(record(config))):
      raise outputs.WorkdirError(f'{path} holds another sweep (its {SWEEP_RECORD} differs); '
                                 'use another --workdir')
  elif saved.exists():
    raise outputs.WorkdirError(f'{path} holds a sweep; a single run needs its own --workdir')


def save_record(workdir, config):
  path = outputs.epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  (path / SWEEP_RECORD).write_text(json.dumps(record(config), indent=2, sort_keys=True))


def run_folder(workdir, config, run):
  """Where a run writes its results: the workdir itself for a single run."""
  return outputs.epath.Path(workdir) / RUNS / run.name if is_sweep(config) else (
      outputs.epath.Path(workdir))


def program_folder(workdir, config, program):
  """Where a program keeps its checkpoints and lock: the workdir itself for a single run."""
  return outputs.epath.Path(workdir) / PROGRAMS / program.name if is_sweep(config) else (
      outputs.epath.Path(workdir))
