"""Where a run ran: the project's version and commit, the library versions, backend and devices,
and the memory it took.

Recorded in every summary.json (provenance) and printed when a run starts.
"""

import functools
from importlib import metadata
import pathlib
import subprocess

import jax

import hypermask_jax
from hypermask_jax import paths

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets')


@functools.cache
def git_commit():
  """The checkout's commit (with '-dirty' for uncommitted changes), or None outside git."""
  try:
    run = lambda *args: subprocess.run(['git', '-C', str(REPO), *args], capture_output=True,
                                       text=True, timeout=10, check=True).stdout.strip()
    commit = run('rev-parse', 'HEAD')
    return commit + ('-dirty' if run('status', '--porcelain', '--untracked-files=no') else '')
  except (OSError, subprocess.SubprocessError):
    return None


def describe():
  """Provenance for summary.json."""
  devices = jax.devices()
  return {'hypermask_jax': hypermask_jax.__version__, 'git_commit': git_commit(),
          **{name: metadata.version(name) for name in LIBRARIES},
          'backend': jax.default_backend(),
          'devices': sorted({d.device_kind for d in devices}), 'device_count': len(devices),
          'process_count': jax.process_count()}


def one_line():
  """'hypermask_jax 0.3.0 (commit 1a2b3c4d) on cpu: 1 device (cpu); jax 0.10.2, ...'."""
  env = describe()
  commit = f" (commit {env['git_commit'][:8]})" if env['git_commit'] else ''
  count = env['device_count']
  return (f"hypermask_jax {env['hypermask_jax']}{commit} on {env['backend']}: {count} "
          f"device{'s' if count > 1 else ''} ({', '.join(env['devices'])}); jax {env['jax']}, "
          f"flax {env['flax']}, optax {env['optax']}")


def peak_memory():
  """(peak bytes, what they measure): the default device's peak where the backend reports it
  (GPU, TPU), else the process's peak resident set (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak'
  with open('/proc/self/status') as f:
    kib = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
  return kib * 1024, 'process peak resident set'


def use_compilation_cache(folder):
  """Keeps compiled programs in `folder` (JAX's persistent compilation cache; '' turns it off),
  so a resumed or repeated run of the same config skips compiling. Entries are keyed by the
  program and the backend, so a changed config or machine compiles anew. Programs that took
  0.1 s or more to compile are kept: the evaluation and the task start, which XLA:CPU compiles
  in 0.12-0.35 s for the MNIST configs, as well as the training step; below that, JAX's
  eager operations, which cost as much to load as to compile."""
  if not folder:
    return
  jax.config.update('jax_compilation_cache_dir', paths.absolute(folder))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.1)
