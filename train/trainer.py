"""Trains and evaluates the autoencoder on a tfds dataset: `train_and_evaluate`.

A run lives in its workdir: `config.json` (the resolved config),
`metrics.jsonl`, TensorBoard event files, `checkpoints/` (Orbax),
`reconstructions.png`, `reconstructions.npz` (the grid's test images and
their final reconstructions, as arrays) and `summary.json` (final test
metrics beside the mean-image baseline, with the training cost). Rerunning
the same command resumes from the newest intact checkpoint, and the batches
after it are those that an uninterrupted run reads, so a killed and resumed
run ends with the same parameters.

Evaluation scores the test split with the fixed suite of `train.metrics`,
plus the configured loss terms under `loss_terms/`.

SIGTERM saves a checkpoint of the current step and stops the run
(`train.preemption`). A step with a non-finite loss, loss term or norm is
either skipped or stops the run after its predecessor is saved
(`config.skip_nonfinite_steps`, `train.nonfinite`). In a run of several
processes, every process trains on its shard of each global batch, and only
process 0 writes files other than checkpoints.
"""

import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from losses import composite
from losses import distances
from models import autoencoder
from models import feature_nets
from train import checkpointing
from train import input_pipeline
from train import metrics as metric_suite
from train import nonfinite
from train import preemption
from train import steps
from train import train_state
from train import validation
from train import workdir as run_files
from train import writers

SUMMARY_FILE = 'summary.json'
RECONSTRUCTIONS_FILE = 'reconstructions.npz'
MAX_CACHED_EVAL_BYTES = 256 * 2**20


def evaluate(p_eval_step, params, batches):
  """Runs the eval step over the whole eval split of this process.

  Args:
    p_eval_step: the pmap'd eval step.
    params: replicated parameters.
    batches: an iterable over this process's eval batches, dicts with
      `image` and `mask` as `input_pipeline.eval_batches` yields them.

  Returns:
    A dict of per-example means (name -> float) over the eval split.
  """
  device_count = jax.local_device_count()
  totals = {}
  for batch in batches:
    sharded = jax.tree.map(lambda x: steps.shard(x, device_count), batch)
    sums = steps.unreplicate(p_eval_step(params, sharded))
    for name, value in jax.device_get(sums).items():
      totals[name] = totals.get(name, 0.0) + float(value)

  count = totals.pop('count')
  return {name: value / count for name, value in totals.items()}


def _cached(cache, key, compute):
  """Returns `cache[key]`, calling `compute()` to fill it on a miss."""
  if key not in cache:
    cache[key] = compute()
  return cache[key]


def _data_key(kind, builder, *fields):
  """Returns a cache key for data read from `builder`."""
  return (kind, builder.info.full_name, str(builder.data_dir), *fields)


def _eval_data(builder, config, cache):
  """Returns `read()`, which gives one pass over this process's eval batches.

  An eval split of at most `MAX_CACHED_EVAL_BYTES` is read once and kept in
  `cache`, so later evaluations, and later runs that share the cache, do not
  rebuild the tf.data pipeline. Larger splits are streamed on every pass.
  """
  split = config.data.eval_split
  key = _data_key(
    'eval_batches',
    builder,
    split,
    config.eval_batch_size,
    jax.process_index(),
    jax.process_count(),
  )

  def stream():
    return input_pipeline.eval_batches(
      builder,
      split=split,
      batch_size=config.eval_batch_size // jax.process_count(),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  size = input_pipeline.num_examples(builder, split) * 4
  size *= int(np.prod(input_pipeline.image_shape(builder)))
  if size > MAX_CACHED_EVAL_BYTES:
    return stream
  batches = _cached(cache, key, lambda: list(stream()))
  return lambda: batches


def mean_image_psnr(builder, config):
  """PSNR on the eval split of predicting the training split's mean image.

  This is the baseline a reconstruction must beat: the best constant
  prediction under MSE.

  Returns:
    (mean PSNR over eval images in dB, the mean image [H, W, C]).
  """

  def batches(split):
    return input_pipeline.eval_batches(builder, split=split, batch_size=500)

  total, count = 0.0, 0
  for batch in batches(config.data.train_split):
    total = total + batch['image'][batch['mask']].astype(np.float64).sum(0)
    count += int(batch['mask'].sum())
  mean_image = (total / count).astype(np.float32)

  psnrs = []
  for batch in batches(config.data.eval_split):
    images = batch['image'][batch['mask']]
    prediction = np.broadcast_to(mean_image, images.shape)
    psnrs.append(np.asarray(distances.psnr(prediction, images)))
  return float(np.concatenate(psnrs).mean()), mean_image


def _grid_images(builder, config, cache):
  """Reads the first `num_grid_images` eval images, [N, H, W, C]."""
  count = config.num_grid_images
  split = config.data.eval_split

  def read():
    batches = input_pipeline.eval_batches(
      builder, split=split, batch_size=max(count, 1)
    )
    batch = next(iter(batches))
    return batch['image'][batch['mask']][:count]

  return _cached(cache, _data_key('grid_images', builder, split, count), read)


@dataclasses.dataclass
class Programs:
  """The model, optimizer and compiled functions that one config needs.

  Runs whose configs differ only in `seed` share them, so a sweep over seeds
  compiles each step once. `compile_seconds` is the wall time of the first
  train step, compilation included, measured by the run that compiled it.
  """

  model: Any
  tx: Any
  schedule: Any
  p_train_step: Any
  p_eval_step: Any
  reconstruct: Any
  compile_seconds: float | None = None


def program_key(config, image_shape):
  """Returns a key that configs differing only in their seed share."""
  fields = config.to_dict()
  fields.pop('seed', None)
  fields.pop('ablation', None)
  return json.dumps(
    {
      'config': fields,
      'image_shape': list(image_shape),
      'devices': [str(device) for device in jax.local_devices()],
    },
    sort_keys=True,
    default=str,
  )


def build_programs(config, image_shape):
  """Builds the model, optimizer, losses and pmap'd steps for `config`.

  Args:
    config: a validated run config.
    image_shape: (H, W, C) of the dataset's images.

  Returns:
    A `Programs`. Its steps compile on their first call.
  """
  # Every configured feature term is evaluated, so each gets its network
  # even at weight 0. A missing weights file or checkpoint fails here,
  # before the workdir is touched.
  model = autoencoder.create_model(config.model, image_shape)
  feature_networks = {
    name: feature_nets.create(config.loss.terms[name], model)
    for name in ('gram', 'features')
    if name in config.loss.terms
  }
  loss_fn = composite.make_loss(config.loss, feature_networks=feature_networks)
  eval_loss_fn = composite.make_loss(
    config.loss,
    feature_networks=feature_networks,
    all_terms=config.eval_all_terms,
  )
  p_train_step, p_eval_step = steps.pmap_steps(
    loss_fn,
    eval_loss_fn,
    model.apply,
    metrics_fn=metric_suite.make_suite(image_shape),
    skip_nonfinite=config.skip_nonfinite_steps,
  )
  schedule = train_state.create_learning_rate_schedule(config)

  @jax.jit
  def reconstruct(params, images):
    return jax.nn.sigmoid(model.apply({'params': params}, images))

  return Programs(
    model=model,
    tx=train_state.create_optimizer(config, schedule),
    schedule=schedule,
    p_train_step=p_train_step,
    p_eval_step=p_eval_step,
    reconstruct=reconstruct,
  )


def _restore(manager, state, workdir, config):
  """Restores the newest checkpoint, naming the config fields that changed."""
  try:
    return checkpointing.restore_latest(manager, state)
  except checkpointing.IncompatibleCheckpointError as err:
    manager.close()
    saved = run_files.read_config(workdir)
    changes = run_files.config_changes(saved, config) if saved else []
    raise ValueError(
      f'{err}\nConfig fields changed since the checkpoint was written: '
      f'{"; ".join(changes) or "unknown (no config.json)"}. Resume with the '
      'config the run started with, or use a new --workdir.'
    ) from err


def _fetch(pending):
  """Copies the metrics of pending steps to the host, as floats."""
  fetched = jax.device_get([steps.unreplicate(m) for _, m in pending])
  return [
    (step, {name: float(value) for name, value in metrics.items()})
    for (step, _), metrics in zip(pending, fetched, strict=True)
  ]


def _train_means(records, *, skip):
  """Averages the metrics of the logged steps into one log row.

  Skipped steps are left out of the means and counted in
  `train/skipped_steps` instead.
  """
  finite = [metrics for _, metrics in records if not metrics[nonfinite.FLAG]]
  names = [name for name in records[0][1] if name != nonfinite.FLAG]
  means = {}
  if finite:
    means = {
      f'train/{name}': float(np.mean([m[name] for m in finite]))
      for name in names
    }
  if skip:
    means['train/skipped_steps'] = float(len(records) - len(finite))
  return means


def _stop_at_nonfinite(manager, state, bad_step, metrics):
  """Saves the state from before `bad_step` and raises FloatingPointError.

  The train step applied no update from `bad_step` on (`state.halted`), so
  the parameters and optimizer state are those after step `bad_step - 1`.
  """
  good_step = bad_step - 1
  last_good = steps.unreplicate(state).replace(step=good_step)
  if good_step not in manager.all_steps():
    checkpointing.save(manager, good_step, last_good)
  manager.wait_until_finished()
  manager.close()
  raise FloatingPointError(
    f'Step {bad_step} has non-finite values: {nonfinite.describe(metrics)}. '
    f'The state from before it is saved as the checkpoint at step '
    f'{good_step} in {manager.directory}, and rerunning the same config '
    'stops at the same step. Lower config.learning_rate or the weight of '
    'the diverging term, or set config.skip_nonfinite_steps=True to skip '
    'such steps.'
  )


def train_and_evaluate(config, workdir, *, cache=None):
  """Trains the autoencoder described by `config`, resuming from `workdir`.

  Args:
    config: the run config (see `configs/default.py`).
    workdir: directory for checkpoints, logs and results.
    cache: an optional dict shared between calls. Runs whose configs differ
      only in their seed then reuse one model, optimizer and set of compiled
      steps, and runs on the same data reuse its eval split and baseline.

  Returns:
    A dict of the final eval metrics, with `baseline_psnr` (the mean-image
    baseline), `step`, `steps_per_second` (training steps of this call, the
    first one excluded) and `compile_seconds`.

  Raises:
    ValueError: the config is invalid, a checkpoint does not fit it, or the
      dataset has an unreadable example.
    FloatingPointError: a step had a non-finite loss, loss term or norm and
      `config.skip_nonfinite_steps` is False. The checkpoint of the step
      before it is saved first.
    train.preemption.Preempted: SIGTERM arrived; the checkpoint of the last
      trained step is saved first.
  """
  # Reject a bad config before touching the workdir or compiling.
  validation.validate_config(config)
  builder = input_pipeline.get_builder(
    config.data.name, config.data.data_dir, download=config.data.download
  )
  image_shape = input_pipeline.image_shape(builder)
  device_count = jax.local_device_count()
  validation.validate_for_data(
    config,
    image_shape=image_shape,
    device_count=device_count,
    process_count=jax.process_count(),
    num_examples=lambda split: input_pipeline.num_examples(builder, split),
  )

  if cache is None:
    cache = {}
  programs = _cached(
    cache,
    ('programs', program_key(config, image_shape)),
    lambda: build_programs(config, image_shape),
  )
  model = programs.model

  # State. Resume order: build a fresh state from the seed, overwrite it with
  # the newest checkpoint if there is one, then write the workdir's files and
  # start the input pipeline from the restored step.
  os.makedirs(workdir, exist_ok=True)
  rng = jax.random.key(config.seed)
  state = train_state.create_train_state(
    config, model, image_shape, rng, tx=programs.tx
  )
  manager = checkpointing.create_manager(workdir, keep=config.keep_checkpoints)
  state = _restore(manager, state, workdir, config)
  initial_step = int(state.step)
  if initial_step:
    logging.info('Resumed from the checkpoint at step %d.', initial_step)
  logging.info(
    'Autoencoder with %d parameters on %d devices; images %s.',
    train_state.parameter_count(state.params),
    device_count,
    image_shape,
  )

  run_files.write_config(workdir, config, step=initial_step)
  dropped = run_files.drop_metrics_after(workdir, initial_step or -1)
  if dropped:
    logging.info(
      'Removed %d metric rows logged after step %d by an interrupted run.',
      dropped,
      initial_step,
    )
  writer = writers.MetricWriter(workdir)

  p_train_step, p_eval_step = programs.p_train_step, programs.p_eval_step
  schedule = programs.schedule
  state = steps.replicate(state)

  # The batches are a function of the seed and the step, so a resumed run
  # reads exactly the batches that an uninterrupted run reads from here on.
  train_iter = input_pipeline.train_batches(
    builder,
    split=config.data.train_split,
    batch_size=config.batch_size // jax.process_count(),
    seed=config.seed,
    start_step=initial_step,
    shuffle_buffer=config.data.shuffle_buffer,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  read_eval_batches = _eval_data(builder, config, cache)
  grid_images = _grid_images(builder, config, cache)

  def evaluate_and_log(step, params):
    metrics = evaluate(p_eval_step, params, read_eval_batches())
    writer.write_scalars(
      step, {f'eval/{name}': value for name, value in metrics.items()}
    )
    return metrics

  # Step 0 is the untrained model, so every run's curve starts from it.
  if initial_step == 0:
    evaluate_and_log(0, state.params)

  logging.info(
    'Training from step %d to %d.', initial_step, config.num_train_steps
  )
  # Training speed counts train steps only: the first step (compilation),
  # evaluations and checkpoint saves are left out.
  timer_step, timer_start, paused = initial_step, time.perf_counter(), 0.0
  train_steps, train_seconds = 0, 0.0
  guard = nonfinite.NonfiniteGuard(skip=config.skip_nonfinite_steps)
  # (step, metrics on the devices) since the last log row; the first
  # `checked` of them have passed the guard.
  pending, checked = [], 0
  eval_metrics = None
  with preemption.SigtermWatcher() as sigterm:
    for step in range(initial_step + 1, config.num_train_steps + 1):
      images = steps.shard(next(train_iter), device_count)
      state, metrics = p_train_step(state, images)
      pending.append((step, metrics))

      if step == initial_step + 1:
        jax.block_until_ready(metrics)
        first_step_seconds = time.perf_counter() - timer_start
        logging.info(
          'First step (with compilation) took %.1f s.', first_step_seconds
        )
        if programs.compile_seconds is None:
          programs.compile_seconds = first_step_seconds
        timer_step, timer_start = step, time.perf_counter()

      is_last = step == config.num_train_steps
      preempted = sigterm.reached(step)
      log_now = step % config.log_every_steps == 0 or is_last
      eval_now = step % config.eval_every_steps == 0 or is_last
      save_now = step % config.checkpoint_every_steps == 0 or is_last
      if not (log_now or eval_now or save_now or preempted):
        continue

      # Every branch below syncs with the devices, so the guard's fetch adds
      # no stall. It runs first, so that no log row, evaluation or
      # checkpoint is made from a state that a non-finite step halted.
      records = _fetch(pending)
      bad_step = guard.check(records[checked:])
      checked = len(records)
      if bad_step is not None:
        writer.close()
        _stop_at_nonfinite(manager, state, bad_step, dict(records)[bad_step])

      if log_now:
        means = _train_means(records, skip=guard.skip)
        elapsed = time.perf_counter() - timer_start - paused
        if step > timer_step:
          means['train/steps_per_second'] = (step - timer_step) / elapsed
          train_steps += step - timer_step
          train_seconds += elapsed
        means['train/learning_rate'] = float(schedule(step - 1))
        writer.write_scalars(step, means)
        pending, checked = [], 0
        timer_step, timer_start, paused = step, time.perf_counter(), 0.0

      pause_start = time.perf_counter()
      if eval_now:
        eval_metrics = evaluate_and_log(step, state.params)
        grid_reconstructions = _write_grid(
          writer,
          step,
          programs.reconstruct,
          state.params,
          grid_images,
          workdir,
        )

      if save_now or preempted:
        checkpointing.save(manager, step, steps.unreplicate(state))
      paused += time.perf_counter() - pause_start

      if preempted and not is_last:
        manager.wait_until_finished()
        logging.warning(
          'SIGTERM received; saved the checkpoint at step %d and stopping.',
          step,
        )
        writer.close()
        manager.close()
        raise preemption.Preempted(step, manager.directory)

  if guard.skipped_steps:
    logging.warning(
      '%d steps were skipped because of non-finite values.',
      guard.skipped_steps,
    )
  manager.wait_until_finished()

  # Final report: test metrics against the mean-image baseline.
  if eval_metrics is None:
    eval_metrics = evaluate(p_eval_step, state.params, read_eval_batches())
    grid_reconstructions = _reconstruct(
      programs.reconstruct, state.params, grid_images
    )
  baseline_key = _data_key(
    'baseline_psnr',
    builder,
    config.data.train_split,
    config.data.eval_split,
  )
  baseline_psnr = _cached(
    cache, baseline_key, lambda: mean_image_psnr(builder, config)[0]
  )
  summary = {
    'step': int(steps.unreplicate(state.step)),
    'baseline_psnr': baseline_psnr,
    'steps_per_second': train_steps / train_seconds if train_seconds else None,
    'compile_seconds': programs.compile_seconds,
    **eval_metrics,
  }
  logging.info(
    'Test PSNR %.2f dB at step %d; predicting the training-set mean image '
    'gives %.2f dB. Results are in %s.',
    summary['psnr'],
    summary['step'],
    baseline_psnr,
    os.path.abspath(workdir),
  )
  if jax.process_index() == 0:
    np.savez(
      os.path.join(workdir, RECONSTRUCTIONS_FILE),
      images=grid_images,
      reconstructions=grid_reconstructions,
    )
    with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  writer.close()
  manager.close()
  return summary


def _reconstruct(reconstruct, params, images):
  """Returns the reconstructions [N, H, W, C] of `images` as a numpy array."""
  if not len(images):
    return np.zeros_like(images)
  return np.asarray(reconstruct(steps.unreplicate(params), images))


def _write_grid(writer, step, reconstruct, params, images, workdir):
  """Writes test images above their reconstructions, to TensorBoard and PNG.

  Returns:
    The reconstructions [N, H, W, C].
  """
  reconstructions = _reconstruct(reconstruct, params, images)
  if len(images) and jax.process_index() == 0:
    grid = writers.image_grid(images, reconstructions)
    writer.write_image(step, 'eval/reconstructions', grid)
    writers.save_png(os.path.join(workdir, 'reconstructions.png'), grid)
  return reconstructions
