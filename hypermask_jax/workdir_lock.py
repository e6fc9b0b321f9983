"""One writer per workdir: a lock that names its holder and dies with it.

The holder keeps an exclusive `flock` on `<workdir>/.lock` for its whole life
and writes its host, process id and start time into the file. The kernel drops
a flock when its process ends, however it ends (SIGKILL, out of memory), so a
lock left behind by a killed run never blocks the resume: the file may remain,
but nobody holds it. A pid written into a file, by contrast, can outlive its
process or be reused, which is why the file's content only names the holder and
never decides whether the lock is held.

flock needs a local (or NFS) filesystem. A workdir on a remote store (gs://...)
is not locked: the run says so once, and keeping one writer is up to the user.
"""

import datetime
import fcntl
import json
import os
import socket

from absl import logging

from hypermask_jax import errors
from hypermask_jax import paths

LOCK = '.lock'


class WorkdirBusy(errors.BadInput):
  """Another live process holds the workdir."""


class WorkdirLock:
  """probe() refuses early and writes nothing; acquire() takes the lock; release() gives it back."""

  def __init__(self, workdir):
    self.workdir = workdir
    self.path = os.path.join(str(workdir), LOCK)
    self._fd = None

  def _busy(self, fd):
    try:
      holder = json.loads(os.pread(fd, 4096, 0) or b'{}')
    except ValueError:
      holder = {}
    return WorkdirBusy(
        f"{self.workdir}: in use by another run (host {holder.get('host', '?')}, "
        f"pid {holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it to end "
        'or stop it, then run the same command again')

  def probe(self):
    """Raises WorkdirBusy if a live process holds the lock. Writes nothing."""
    if paths.is_remote(self.workdir) or not os.path.exists(self.path):
      return
    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      raise self._busy(fd) from None
    finally:
      os.close(fd)  # closing drops the shared lock taken for the test

  def acquire(self):
    """Takes the lock for this process (the workdir must exist) or raises WorkdirBusy."""
    if paths.is_remote(self.workdir):
      logging.warning('%s is not on a local filesystem: it cannot be locked, so make sure only '
                      'one process runs in it.', self.workdir)
      return
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        error = self._busy(fd)
        os.close(fd)
        raise error from None
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same_file = False
      if same_file:  # else a releasing holder unlinked it between our open and flock: retry
        break
      os.close(fd)
    since = datetime.datetime.now().isoformat(timespec='seconds')
    holder = json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': since})
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    self._fd = fd

  def release(self):
    """Removes the lock file and gives the lock up."""
    if self._fd is None:
      return
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
