"""Where a program's runs live: one 1-D mesh ('runs') over every device of every process.

A program's runs axis is split over the mesh; the images are replicated. On
several hosts the same command runs on each: `start_distributed` joins them
(jax.distributed) when the environment describes a multi-process job, every
process computes its share of the runs, `fetch` gives every process the host
values of all runs, and only the primary process (0) writes files other than
checkpoints (orbax writes those from every process, each its own shards).
"""

import os

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from hypermask_jax import errors

COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
NUM_PROCESSES = 'JAX_NUM_PROCESSES'
PROCESS_ID = 'JAX_PROCESS_ID'


def start_distributed():
  """Joins a multi-process job when the environment describes one; call before any JAX work.

  - JAX_COORDINATOR_ADDRESS (host:port of process 0) with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID: an explicit job, e.g. one command per machine;
  - SLURM (SLURM_NTASKS > 1) or Open MPI (OMPI_COMM_WORLD_SIZE > 1): JAX reads
    the job from the scheduler's environment.
  Anything else is a single process. CPU devices talk through gloo.
  """
  explicit = os.environ.get(COORDINATOR)
  scheduled = any(int(os.environ.get(v, '1') or 1) > 1
                  for v in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'))
  if not explicit and not scheduled:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if not explicit:
    jax.distributed.initialize()
    return
  try:
    count, index = int(os.environ[NUM_PROCESSES]), int(os.environ[PROCESS_ID])
  except (KeyError, ValueError):
    raise errors.BadInput(f'{COORDINATOR}={explicit} is set: {NUM_PROCESSES} and {PROCESS_ID} '
                          'must be integers too (the number of processes, and this one\'s '
                          'index from 0)') from None
  jax.distributed.initialize(explicit, num_processes=count, process_id=index)


def is_primary():
  """Whether this process writes the shared files (process 0)."""
  return jax.process_index() == 0


def runs_mesh():
  """The 1-D mesh the runs axis is split over: every device of every process."""
  return Mesh(np.array(jax.devices()), ('runs',))


def padded_runs(num_runs, mesh):
  """Runs rounded up to a multiple of the devices (the extra ones repeat the last run)."""
  devices = mesh.devices.size
  return -(-num_runs // devices) * devices


def fetch(tree):
  """Host (numpy) values of arrays, whichever processes hold their shards."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flag):
  """Whether `flag` holds on any process (every process gets the same answer)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)]))))


class Discard:
  """Stands in for a writer on a process that does not write: every call does nothing."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: None
