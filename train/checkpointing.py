"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

The state is saved unreplicated (one copy of params, optimizer state and step),
so a checkpoint does not depend on the number of devices that wrote it.
"""

import os

import orbax.checkpoint as ocp


def create_manager(workdir, *, keep):
  """Opens (or creates) the checkpoint manager of a run.

  Args:
    workdir: the run's working directory.
    keep: how many of the newest checkpoints to keep.

  Returns:
    An `orbax.checkpoint.CheckpointManager`. Steps are saved only when the
    trainer calls `save`, so the trainer's schedule is the only schedule.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
  )


def save(manager, step, state):
  """Saves the unreplicated `state` as `step`; returns whether it was saved."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager, state):
  """Restores the newest checkpoint onto `state`'s structure, if any.

  Args:
    manager: the run's checkpoint manager.
    state: an unreplicated train state with the expected structure; its
      values are replaced.

  Returns:
    The restored state, or `state` unchanged when there is no checkpoint.

  Raises:
    ValueError: the checkpoint's arrays do not fit `state`, for example
      because the model widths changed since the checkpoint was written.
  """
  step = manager.latest_step()
  if step is None:
    return state
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(state))
  except ValueError as err:
    raise ValueError(
      f'The checkpoint at step {step} in {manager.directory} does not fit '
      f'the model and optimizer of this config: {err}'
    ) from err
