"""Start-up and agreement between the processes of a multi-process run.

A run of several processes (one per host, or several on one machine for
tests) calls `initialize` once, before any JAX computation. Afterwards the
pmap'd steps run over the devices of all processes, and the functions here
let the processes take the same decision on the host, for example which
checkpoint to restore. In a run of one process they cost nothing.
"""

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


def initialize(
  *, coordinator_address=None, num_processes=None, process_id=None
):
  """Connects this process to the others with `jax.distributed.initialize`.

  On a Cloud TPU pod slice, and under Slurm or Open MPI, JAX finds the
  coordinator, the process count and this process's id by itself, so every
  argument may be None. Elsewhere all three are needed.

  Args:
    coordinator_address: 'host:port' of process 0, which every process must
      reach; process 0 listens on that port.
    num_processes: number of processes in the run.
    process_id: this process's index, in [0, num_processes).
  """
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )
  logging.info(
    'Joined a run of %d processes as process %d; %d of its %d devices are '
    'local.',
    jax.process_count(),
    jax.process_index(),
    jax.local_device_count(),
    jax.device_count(),
  )


def all_processes(flag):
  """Returns whether `flag` is True on every process.

  Every process must call this at the same point, as with any collective.
  """
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, np.bool_))
  return bool(np.all(flags))


def any_process(flag):
  """Returns whether `flag` is True on at least one process.

  Every process must call this at the same point, as with any collective.
  """
  return not all_processes(not flag)


def barrier(name):
  """Waits until every process has reached the barrier called `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def preemption_service_running():
  """Returns whether JAX's preemption service handles SIGTERM.

  `jax.distributed.initialize` starts the service unless the JAX option
  `jax_enable_preemption_service` is off. It catches SIGTERM on any process
  and lets `multihost_utils.reached_preemption_sync_point` return True on
  every process at the same step.
  """
  # NOTE: jax 0.10.2 has no public accessor for the sync manager.
  state = jax._src.distributed.global_state  # noqa: SLF001
  return state.preemption_sync_manager is not None
