"""SIGTERM/SIGINT become a request to stop at the next chunk boundary, after a checkpoint."""

import signal
import threading

from absl import logging

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: stopped early, state saved; run again to resume.


class Preempted(Exception):
  """Raised once the checkpoint for a requested stop is on disk."""


class StopSignals:
  """Context manager: while active, SIGTERM and SIGINT set `requested` instead of killing.

  A second signal raises KeyboardInterrupt, for a user who will not wait.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # a second signal: stop now, without a new checkpoint
      raise KeyboardInterrupt(f'second {signal.Signals(signum).name}')
    self.requested = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint at the next chunk boundary, then '
                    'exiting with status %d.', self.requested, EXIT_PREEMPTED)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
