"""Stopping on SIGTERM with a checkpoint at the current step.

Schedulers that preempt a job (Kubernetes, Slurm, Cloud TPU maintenance)
send SIGTERM, wait a grace period and then send SIGKILL. Inside
`SigtermWatcher`, SIGTERM only marks the run as preempted, and
`reached(step)` becomes True at the next step, the same step on every
process. The trainer then saves a checkpoint of that step, closes its files
and raises `Preempted`, and `main.py` exits with `EXIT_CODE`. Rerunning the
same command resumes from that checkpoint without losing a step.
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

from train import multihost

# Exit status of main.py after a SIGTERM: EX_TEMPFAIL from sysexits.h, a
# temporary failure that a rerun fixes. It differs from 0 (finished) so that
# a job system does not mark a preempted run as done.
EXIT_CODE = os.EX_TEMPFAIL


class Preempted(Exception):  # noqa: N818 (the name states the event)
  """Raised after a SIGTERM, once the checkpoint of `step` is written.

  Attributes:
    step: the last trained step, which the checkpoint holds.
  """

  def __init__(self, step, checkpoint_dir):
    super().__init__(
      f'Stopped by SIGTERM after step {step}. The checkpoint of that step is '
      f'in {checkpoint_dir}; rerun the same command to resume from it.'
    )
    self.step = step


class SigtermWatcher:
  """Context manager that turns SIGTERM into a flag checked once per step.

  In a run of one process it installs a Python SIGTERM handler for the
  duration of the `with` block, and restores the previous handler after.
  In a run of several processes, JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM, and `reached` returns
  its decision, which is the same step on every process.
  """

  def __init__(self):
    self._received = False
    self._previous_handler = None
    self._use_service = False

  def __enter__(self):
    if multihost.preemption_service_running():
      self._use_service = True
    elif jax.process_count() > 1:
      logging.warning(
        'The JAX preemption service is off, so SIGTERM stops this process '
        'without a checkpoint. Turn on jax_enable_preemption_service to save '
        'one.'
      )
    elif threading.current_thread() is not threading.main_thread():
      logging.warning(
        'Training outside the main thread, where Python cannot handle '
        'signals, so SIGTERM stops the process without a checkpoint.'
      )
    else:
      self._previous_handler = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _handle(self, signum, frame):
    del signum, frame  # Only the arrival matters.
    self._received = True

  def reached(self, step):
    """Returns whether the run should stop after `step`.

    Every process must call this after every step, with the same `step`.
    """
    if self._use_service:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received
