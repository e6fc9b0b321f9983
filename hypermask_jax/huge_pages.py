"""Restarts the command line's process once so that glibc's allocator asks for huge pages.

XLA:CPU allocates a compiled call's temporaries afresh at every call, and
glibc serves allocations that large with new mappings, which the kernel fills
4 KiB page by page: the page faults are most of a call's own cost. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc marks those mappings for
transparent huge pages (2 MiB). On the 2-core AMD EPYC (Zen 5, glibc 2.36),
`experiments/benchmark_step.py` with and without it: Permuted MNIST-100 at
task 100, 185,369 -> 643 page faults and 199 -> 10 ms per call (a call of a
run holds about 5 of its 470 ms steps there); Permuted MNIST at task 1,
30,247 -> 220-299 faults and 24-31 -> at most 4 ms per call.

glibc reads GLIBC_TUNABLES only when a process starts, and offers this
setting no other way (`mallopt` has no counterpart), so `python -m hypermask_jax.main`
re-executes itself with it set, before JAX is imported. It does so only
where it helps: glibc 2.35 or later, and the kernel's transparent huge pages
in `madvise` mode (in `always` mode every large mapping gets them already;
in `never`, none can). A GLIBC_TUNABLES already in the environment, even
empty, is left as it is: set `GLIBC_TUNABLES=` to opt out.
"""

import os
import re
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def glibc_version():
  """(major, minor) of the running glibc, or None where the C library is another."""
  try:
    match = re.fullmatch(r'glibc (\d+)\.(\d+)\S*', os.confstr('CS_GNU_LIBC_VERSION') or '')
  except (AttributeError, ValueError, OSError):  # no confstr, or no such name, outside glibc
    return None
  return (int(match.group(1)), int(match.group(2))) if match else None


def thp_mode():
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(THP_MODE_FILE) as f:
      match = re.search(r'\[(\w+)\]', f.read())
  except OSError:
    return None
  return match.group(1) if match else None


def wanted(environ, version, mode):
  """Whether to restart with TUNABLE: not set by the user, glibc >= 2.35, THP in madvise mode."""
  return 'GLIBC_TUNABLES' not in environ and version is not None and version >= (2, 35) and (
      mode == 'madvise')


def restart_with_huge_pages():
  """Re-executes this process (same command line) with TUNABLE set, where `wanted`.

  Where the re-execution itself fails (no interpreter path to run), the
  process goes on as it is, without the tunable.
  """
  if wanted(os.environ, glibc_version(), thp_mode()):
    os.environ['GLIBC_TUNABLES'] = TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    try:
      os.execv(sys.executable, sys.orig_argv)
    except OSError:
      del os.environ['GLIBC_TUNABLES']
