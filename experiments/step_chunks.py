"""A config's compiled train chunk, from a checkout of this repository, set to a task.

What `compare_checkouts.py` times in two checkouts and `profile_step.py`
profiles in this one: the trainer each checkout's `hypermask_jax` builds for
the config (on synthetic data of the config's shapes), its state passed
through each task's start up to the task asked for, and one compiled call of
`steps` steps. `alternating` is how `compare_checkouts.py` times two versions,
and `benchmark_step.py --compare_torch` our step and PyTorch's: in turn.
"""

import contextlib
import dataclasses
import os
import pathlib
import sys
from typing import Any, Callable

import jax
import numpy as np

from hypermask_jax import errors

THIS_CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Chunk:
  """run(state) -> the state after one compiled call; state: the latest; hlo(): its program."""
  run: Callable[[Any], Any]
  state: Any
  hlo: Callable[[], str]


@contextlib.contextmanager
def imported_from(checkout):
  """`hypermask_jax` as `checkout` holds it, for the duration of the block."""
  def forget():
    for name in [m for m in sys.modules if m.split('.')[0] == 'hypermask_jax']:
      del sys.modules[name]
  forget()
  sys.path.insert(0, str(checkout))
  try:
    yield
  finally:
    sys.path.remove(str(checkout))
    forget()


def alternating(timers, calls):
  """{name: [what each call returned]} of `calls` calls of each timer {name: () -> seconds}.

  The timers take turns, in the dict's order and then reversed (ABBA ABBA
  ...), so that all see the same minutes of a shared machine, whose speed
  changes from one minute to the next, and none always runs right after
  another.
  """
  names = list(timers)
  times = {name: [] for name in names}
  for call in range(calls):
    for name in names if call % 2 == 0 else names[::-1]:
      times[name].append(timers[name]())
  return times


@contextlib.contextmanager
def environment(values):
  """os.environ with `values` set, for the duration of the block."""
  saved = {name: os.environ.get(name) for name in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        del os.environ[name]
      else:
        os.environ[name] = value


def build(checkout, config, task, steps, env=None):
  """The Chunk of `checkout`'s trainer at `task` (0-based), after one untimed call.

  env: {variable: value} set while the trainer is built and its chunk compiled
  (the backend choices are read then), and restored after.
  """
  with imported_from(checkout), environment(env or {}):
    from hypermask_jax import config_checks  # pylint: disable=g-import-not-at-top
    from hypermask_jax import errors as its_errors  # pylint: disable=g-import-not-at-top
    from hypermask_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    from hypermask_jax.data import tasks  # pylint: disable=g-import-not-at-top
    from hypermask_jax.methods import METHODS  # pylint: disable=g-import-not-at-top
    try:  # its BadInput is another class than this checkout's
      config = config_checks.resolve(config)
      task_set = tasks.synthetic_task_set(config)
      method = METHODS[config.method](config, task_set.input_shape, task_set.num_classes)
      trainer = trainer_lib.Trainer(config, method)
      state, data, hp = trainer.fresh(task_set, [config])
    except its_errors.BadInput as e:
      raise errors.BadInput(f'the checkout {checkout} refuses the config: {e}') from None
    for t in range(task + 1):  # each task's start, as a run passes through them
      state = trainer.begin_task(state, t, hp)
    run = lambda state: trainer.train_steps(state, data, hp, np.int32(steps))[0]
    state = jax.block_until_ready(run(state))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)  # the calls donate their state: lower from shapes
    hlo = lambda: trainer.train_steps.lower(shapes, data, hp, np.int32(steps)).compile().as_text()
    return Chunk(run, state, hlo)
