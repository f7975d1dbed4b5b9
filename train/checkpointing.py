"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

A checkpoint contains `step`, `params` and `opt_state` of the train state as
host (NumPy) arrays, one copy of each. It therefore does not depend on the
number of devices or processes that wrote it, and it restores onto any
other. In a run of several processes every process calls `save` and
`restore_latest`, process 0 writes the arrays, and every process reads them,
so the workdir must be on a file system that all processes share.

`restore_latest` skips a newest checkpoint that cannot be read (a partial
copy, a missing or truncated file) with a warning, moves it to
`<workdir>/corrupt_checkpoints/` and restores the newest intact one.
"""

import os
import time

from absl import logging
import jax
import orbax.checkpoint as ocp

from train import multihost

# Fields of the train state that a checkpoint stores. The guard flag `halted`
# is left out because a saved state is always one that may train on.
_SAVED_FIELDS = ('step', 'params', 'opt_state')
_CORRUPT_DIRECTORY = 'corrupt_checkpoints'
# Most mismatching arrays or subtrees that an error message lists.
_MAX_LISTED = 12
# Characters of each read error that the final error message repeats.
_MAX_FAILURE_CHARS = 300


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint whose arrays do not fit the model or optimizer."""


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
    os.path.join(os.path.abspath(workdir), 'checkpoints'),
    options=options,
    item_handlers=ocp.StandardCheckpointHandler(),
  )


def save(manager, step, state):
  """Saves an unreplicated `state` as checkpoint `step`.

  Every process of the run must call this with the same step.

  Args:
    manager: the run's checkpoint manager.
    step: the checkpoint's step number.
    state: an unreplicated train state; only `_SAVED_FIELDS` are saved.

  Returns:
    Whether the checkpoint was saved. Orbax writes it in the background;
    `manager.wait_until_finished()` waits for it.
  """
  tree = jax.device_get(_saved_tree(state))
  return manager.save(step, args=ocp.args.StandardSave(tree), force=True)


def restore_latest(manager, state):
  """Restores the newest intact checkpoint onto `state`, if there is one.

  Every process of the run must call this; they all restore the same step.

  Args:
    manager: the run's checkpoint manager.
    state: an unreplicated train state with the expected structure; its
      saved fields are replaced by NumPy arrays from the checkpoint.

  Returns:
    The restored state, or `state` unchanged when there is no checkpoint.

  Raises:
    IncompatibleCheckpointError: the arrays of the newest readable
      checkpoint do not fit `state`, because the model or the optimizer
      changed since it was written. The message lists the arrays that
      differ.
    ValueError: there are checkpoints, but none of them can be read.
  """
  template = jax.device_get(_saved_tree(state))
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    restored, mismatch, failure = _try_restore(manager, step, template)
    if multihost.any_process(mismatch is not None):
      raise IncompatibleCheckpointError(
        mismatch
        or f'The checkpoint at step {step} in {manager.directory} does not '
        'fit the model and optimizer of this config on another process.'
      )
    if multihost.all_processes(failure is None):
      return state.replace(**restored)

    failure = failure or 'unreadable on another process'
    failures.append(f'step {step}: {failure[:_MAX_FAILURE_CHARS]}')
    moved_to = _move_aside(manager, step)
    logging.warning(
      'Skipped the checkpoint at step %d in %s because it cannot be read, '
      'and moved it to %s: %s',
      step,
      manager.directory,
      moved_to,
      failure,
    )

  if failures:
    raise ValueError(
      f'No checkpoint in {manager.directory} could be read: '
      f'{"; ".join(failures)}. They were moved to '
      f'{_corrupt_root(manager)}. Rerun to start from step 0, or restore '
      'an intact copy of the checkpoints.'
    )
  return state


def _saved_tree(state):
  return {field: getattr(state, field) for field in _SAVED_FIELDS}


def _try_restore(manager, step, template):
  """Reads one checkpoint; returns (tree, mismatch message, failure)."""
  try:
    metadata = manager.item_metadata(step)
  # Orbax raises ValueError for unreadable array metadata, KeyError for a
  # step directory without the checkpoint item, and OSError for I/O errors.
  except (ValueError, KeyError, OSError) as err:
    return None, None, f'{type(err).__name__}: {err}'

  tree = getattr(metadata, 'tree', None)
  if isinstance(tree, dict):
    differences = _differences(tree, template)
    if differences:
      message = (
        f'The checkpoint at step {step} in {manager.directory} does not fit '
        'the model and optimizer of this config. ' + ' '.join(differences)
      )
      return None, message, None

  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(template))
  except (ValueError, KeyError, OSError) as err:
    return None, None, f'{type(err).__name__}: {err}'
  return restored, None, None


def _differences(metadata_tree, template):
  """Describes how a checkpoint's arrays differ from the template's.

  Returns:
    Sentences naming the subtrees that only one side has and the arrays
    whose shapes differ; empty when the structures and shapes agree.
  """
  saved = _shapes_by_path(metadata_tree)
  expected = _shapes_by_path(template)
  only_saved = _subtree_roots(saved.keys() - expected.keys(), expected)
  only_expected = _subtree_roots(expected.keys() - saved.keys(), saved)
  # Parameters first: they are what a changed model shows up in.
  common = sorted(
    saved.keys() & expected.keys(),
    key=lambda path: (not path.startswith('params'), path),
  )
  reshaped = [
    f'{path} {saved[path]} in the checkpoint, {expected[path]} now'
    for path in common
    if None not in (saved[path], expected[path])
    and saved[path] != expected[path]
  ]

  sentences = []
  if only_saved:
    sentences.append(f'Only the checkpoint has: {_listing(only_saved)}.')
  if only_expected:
    sentences.append(f'Only this config has: {_listing(only_expected)}.')
  if reshaped:
    sentences.append(f'Shapes differ: {_listing(reshaped)}.')
  return sentences


def _shapes_by_path(tree):
  """Maps 'params.encoder.conv0.kernel'-style paths to shapes (or None)."""
  shapes = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, 'shape', None)
    shapes[_path_name(key_path)] = None if shape is None else tuple(shape)
  return shapes


def _path_name(key_path):
  """Writes dict keys and attribute names with dots, indices in brackets."""
  name = ''
  for key in key_path:
    if isinstance(key, jax.tree_util.SequenceKey):
      name += f'[{key.idx}]'
    elif isinstance(key, jax.tree_util.DictKey):
      name += f'.{key.key}'
    elif isinstance(key, jax.tree_util.GetAttrKey):
      name += f'.{key.name}'
    else:
      name += f'.{key}'
  return name.lstrip('.')


def _subtree_roots(paths, other):
  """Shortens each path to its first prefix that `other` does not contain."""
  other_prefixes = {_prefix for path in other for _prefix in _prefixes(path)}
  roots = set()
  for path in paths:
    for prefix in _prefixes(path):
      if prefix not in other_prefixes:
        roots.add(prefix)
        break
  return sorted(roots)


def _prefixes(path):
  """Yields 'a', 'a.b', 'a.b[0]', ... up to `path` itself."""
  for index, char in enumerate(path):
    if char in '.[' and index:
      yield path[:index]
  yield path


def _listing(items):
  if len(items) <= _MAX_LISTED:
    return ', '.join(items)
  return (
    ', '.join(items[:_MAX_LISTED]) + f' and {len(items) - _MAX_LISTED} more'
  )


def _corrupt_root(manager):
  return os.path.join(
    os.path.dirname(str(manager.directory)), _CORRUPT_DIRECTORY
  )


def _move_aside(manager, step):
  """Moves checkpoint `step` out of the manager's directory.

  Process 0 moves it while the others wait, so that a later save of the same
  step does not collide with the unreadable copy.

  Returns:
    The new path on process 0, and the directory it went to elsewhere.
  """
  source = os.path.join(str(manager.directory), str(step))
  destination = _corrupt_root(manager)
  multihost.barrier(f'before_moving_checkpoint_{step}')
  if jax.process_index() == 0:
    # The time stamp keeps a second unreadable copy of the same step apart.
    destination = os.path.join(
      destination, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    )
    os.makedirs(_corrupt_root(manager), exist_ok=True)
    os.replace(source, destination)
  multihost.barrier(f'after_moving_checkpoint_{step}')
  manager.reload()
  return destination
