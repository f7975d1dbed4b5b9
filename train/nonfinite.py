"""Host side of the non-finite step guard of `train.steps.train_step`.

The train step marks each step whose loss, loss terms, gradient norm or
update norm is not finite with the metric `nonfinite`, and does not apply
its update. The trainer fetches the metrics of the steps since its last
check whenever it syncs with the devices anyway (at log, eval, checkpoint
and preemption steps). `NonfiniteGuard.check` then logs each skipped step,
or returns the first bad step so that the trainer can save the state from
before it and stop.
"""

import math

from absl import logging

FLAG = 'nonfinite'


def describe(metrics):
  """Lists the non-finite values of one step's metrics.

  Args:
    metrics: one step's metrics, name -> float.

  Returns:
    A string such as 'loss=nan, loss_terms/edge=nan, grad_norm=inf': the
    total first, then the loss terms, then the norms.
  """

  def order(name):
    return (name != 'loss', not name.startswith('loss_terms/'), name)

  return ', '.join(
    f'{name}={metrics[name]}'
    for name in sorted(metrics, key=order)
    if name != FLAG and not math.isfinite(metrics[name])
  )


class NonfiniteGuard:
  """Finds the steps that the train step marked as non-finite.

  Attributes:
    skip: whether such steps are skipped (True) or stop the run (False).
    skipped_steps: steps skipped so far by this process's run.
  """

  def __init__(self, *, skip):
    self.skip = skip
    self.skipped_steps = 0

  def check(self, records):
    """Checks the fetched metrics of steps not checked before.

    Args:
      records: (step, metrics) pairs in step order, metrics as floats.

    Returns:
      The first non-finite step when steps are not skipped, else None. Each
      skipped step is logged as a warning and counted.
    """
    for step, metrics in records:
      if not metrics[FLAG]:
        continue
      if not self.skip:
        return step
      self.skipped_steps += 1
      logging.warning(
        'Skipped step %d because of non-finite values: %s. Its update was '
        'not applied; %d steps skipped so far.',
        step,
        describe(metrics),
        self.skipped_steps,
      )
    return None
