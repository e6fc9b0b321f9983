"""Checkpoints of a run with orbax: the whole train state plus the progress made so far.

Saves are asynchronous (training goes on while they are written). A step
directory is committed by orbax only once it is complete, so a kill during a
save leaves a temporary directory that is ignored; a committed checkpoint that
cannot be read (a truncated file) is moved aside with a warning and the next
older one is tried. Good checkpoints are never deleted except by max_to_keep.
"""

from absl import logging
from etils import epath
import orbax.checkpoint as ocp

CHECKPOINTS = 'checkpoints'
UNREADABLE = 'checkpoints_unreadable'


class Checkpointer:
  """Saves (state, progress) under <workdir>/checkpoints and restores the newest readable one."""

  def __init__(self, workdir, keep):
    self.workdir = epath.Path(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.workdir / CHECKPOINTS, options=options,
                                         item_names=('state', 'progress'))

  def save(self, step, state, progress):
    """Starts an asynchronous save; returns once the arrays are copied off the device.

    A step that is already saved is the state just resumed from: it is kept as it is.
    """
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    progress=ocp.args.JsonSave(progress)),
                      force=True)

  def restore_latest(self, template):
    """(state, progress) of the newest readable checkpoint, or None if there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template), progress=ocp.args.JsonRestore()))
        return restored.state, restored.progress
      except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint.
        aside = self.workdir / UNREADABLE / str(step)
        logging.warning('Checkpoint %d is unreadable (%s: %s); moving it to %s and trying an '
                        'older one.', step, type(e).__name__, str(e).splitlines()[0][:200], aside)
        aside.parent.mkdir(parents=True, exist_ok=True)
        (self.workdir / CHECKPOINTS / str(step)).rename(aside)
        self.manager.reload()
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    """Waits for the save in flight, then releases the manager's threads."""
    self.manager.wait_until_finished()
    self.manager.close()
