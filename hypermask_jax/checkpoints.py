"""Checkpoints of a run with orbax: the whole train state plus the progress made so far.

Saves are asynchronous (training goes on while they are written). A step
directory is committed by orbax only once it is complete, so a kill during a
save leaves a temporary directory that is ignored. A committed checkpoint that
cannot be read (a truncated file) is moved aside with a warning and the next
older one is tried; one that reads but holds arrays of other shapes than the
config makes (the config changed) is refused with an error and left in place.
Good checkpoints are deleted only by `keep` and, once a run has finished, by
`keep_newest`.
"""

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from hypermask_jax import errors

CHECKPOINTS = 'checkpoints'
UNREADABLE = 'checkpoints_unreadable'


class CheckpointMismatch(errors.BadInput):
  """The checkpoint holds a train state of other shapes than this config's."""


def _shapes(tree):
  """{path: shape} of a pytree's arrays, paths as tuples of plain names (dict keys, fields)."""
  name = lambda k: getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))
  return {tuple(str(name(k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Saves (state, progress) under <workdir>/checkpoints and restores the newest readable one.

  Creates nothing until the first save.
  """

  def __init__(self, workdir, keep):
    self.workdir = epath.Path(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.workdir / CHECKPOINTS, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'progress': ocp.JsonCheckpointHandler()})

  def save(self, step, state, progress):
    """Starts an asynchronous save; returns once the arrays are copied off the device.

    A step that is already saved is the state just resumed from: it is kept as it is.
    """
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    progress=ocp.args.JsonSave(progress)),
                      force=True)

  def _mismatch(self, step, template):
    """How checkpoint `step`'s arrays differ from the template's, or None (same, or unreadable)."""
    try:
      saved = _shapes(self.manager.item_metadata(step).state.tree)
    except Exception:  # pylint: disable=broad-except  (unreadable metadata: not a mismatch)
      return None
    wanted = _shapes(template)
    for path in sorted(set(saved) | set(wanted)):
      if saved.get(path) != wanted.get(path):
        return (f"{'/'.join(path)}: saved {list(saved[path]) if path in saved else 'nothing'}, "
                f"this config {list(wanted[path]) if path in wanted else 'nothing'}")
    return None

  def restore_latest(self, template):
    """(state, progress) of the newest readable checkpoint, or None if there is none.

    Raises CheckpointMismatch if the newest readable checkpoint holds other shapes.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore()))
        return restored.state, restored.progress
      except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint.
        mismatch = self._mismatch(step, template)
        if mismatch is not None:
          raise CheckpointMismatch(
              f'checkpoint {step} in {self.workdir / CHECKPOINTS} holds a train state of other '
              f'shapes than this config makes ({mismatch}); resume with the config (and the '
              'hypermask_jax version) it was saved with, or use another --workdir') from None
        aside = self._unreadable_folder(step)
        logging.warning('Checkpoint %d is unreadable (%s: %s); moving it to %s and trying an '
                        'older one.', step, type(e).__name__, str(e).splitlines()[0][:200], aside)
        (self.workdir / CHECKPOINTS / str(step)).rename(aside)
        self.manager.reload()
    return None

  def _unreadable_folder(self, step):
    """A new folder name under checkpoints_unreadable/ for step (step, step.1, step.2, ...)."""
    parent = self.workdir / UNREADABLE
    parent.mkdir(parents=True, exist_ok=True)
    aside, n = parent / str(step), 0
    while aside.exists():
      n += 1
      aside = parent / f'{step}.{n}'
    return aside

  def keep_newest(self, count):
    """Deletes all but the newest `count` checkpoints (a finished run keeps only its last)."""
    self.manager.wait_until_finished()
    for step in sorted(self.manager.all_steps(), reverse=True)[count:]:
      self.manager.delete(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Waits for the save in flight, then releases the manager's threads."""
    self.manager.wait_until_finished()
    self.manager.close()
