"""Train-step timings: the ablation's loss variants, PyTorch, FLOP/s.

Each step is built as `train.trainer` builds it: the autoencoder from
`models.autoencoder.create_model`, the feature networks from
`models.feature_nets.create`, the loss from `losses.composite.make_loss`,
the pmap'd step from `train.steps.pmap_steps` with the train state's buffers
donated, and the state from `train.train_state.create_train_state`,
replicated with `train.steps.replicate`. The step runs on one device, and
on one fixed batch that already lives on it, so the times leave out the
input pipeline.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import timing
from benchmarks import torch_peers
from configs import ablation
from configs import default
from losses import composite
from models import autoencoder
from models import feature_nets
from train import steps
from train import train_state


def variant_config(base, fields):
  """Returns `base` with every term at weight 0, then `fields` applied.

  Args:
    base: the ablation's base config.
    fields: {term: {field: value}} of one variant from
      `configs.ablation.variants()`.

  Returns:
    A new ConfigDict; `base` is unchanged.
  """
  config = ml_collections.ConfigDict(base.to_dict())
  for term in config.loss.terms:
    config.loss.terms[term].weight = 0.0
  for term, term_fields in fields.items():
    for field, value in term_fields.items():
      config.loss.terms[term][field] = value
  return config


@dataclasses.dataclass
class StepBench:
  """A compiled train step on fixed inputs.

  Attributes:
    run: callable running one step to completion.
    flops: XLA's cost-analysis FLOP count of one step.
    parameters: number of trained parameters.
    params: the initial parameter tree, on the host.
    model: the Flax autoencoder.
  """

  run: object
  flops: float
  parameters: int
  params: object
  model: object


def build_step(config, images):
  """Builds the train step of `config` the way train.trainer does.

  Args:
    config: a run config.
    images: [B, H, W, C] float32 batch to train on repeatedly.

  Returns:
    A `StepBench`.
  """
  image_shape = images.shape[1:]
  model = autoencoder.create_model(config.model, image_shape)
  feature_networks = {
    name: feature_nets.create(config.loss.terms[name], model)
    for name in ('gram', 'features')
    if name in config.loss.terms
  }
  loss_fn = composite.make_loss(config.loss, feature_networks=feature_networks)
  eval_loss_fn = composite.make_loss(
    config.loss, feature_networks=feature_networks, all_terms=True
  )
  devices = jax.local_devices()[:1]
  p_train_step, _ = steps.pmap_steps(
    loss_fn, eval_loss_fn, model.apply, devices=devices
  )
  state = train_state.create_train_state(
    config, model, image_shape, jax.random.key(config.seed)
  )
  params = state.params
  parameters = train_state.parameter_count(params)
  state = steps.replicate(state, devices)
  sharded = jax.device_put(steps.shard(images, 1), devices[0])

  cost = p_train_step.lower(state, sharded).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  flops = float(cost.get('flops', float('nan')))

  holder = {'state': state}

  def run():
    holder['state'], metrics = p_train_step(holder['state'], sharded)
    jax.block_until_ready(metrics)

  return StepBench(run, flops, parameters, params, model)


def run_variants(batches, names, *, warmup, repeats, step_batch):
  """Times the train step of each ablation variant against 'mse'.

  Args:
    batches: label -> [N, H, W, C] images, N at least the batch size.
    names: variant names from `configs.ablation.variants()`; 'mse' is
      added if missing, as the reference.
    warmup: untimed steps after the first one.
    repeats: timed steps.
    step_batch: batch size, or None for the ablation config's.

  Returns:
    Rows of (images, variant, terms, step ms, time ratio to mse, ratio of
    XLA's FLOP counts to mse's).
  """
  base = ablation.get_config()
  variants = ablation.variants()
  names = ['mse', *[name for name in names if name != 'mse']]
  batch = step_batch or base.batch_size
  rows = []
  for label, images in batches.items():
    benches = {
      name: build_step(variant_config(base, variants[name]), images[:batch])
      for name in names
    }
    times = timing.median_times(
      {name: bench.run for name, bench in benches.items()},
      warmup=warmup,
      repeats=repeats,
    )
    for name in names:
      flop_ratio = benches[name].flops / benches['mse'].flops
      terms = ', '.join(
        f'{term} {fields.get("weight", "")}'.strip()
        for term, fields in variants[name].items()
      )
      rows.append(
        (
          label,
          name,
          terms,
          timing.milliseconds(times[name]),
          f'{times[name] / times["mse"]:.2f}',
          f'{flop_ratio:.2f}',
        )
      )
  return rows


def _torch_default_step(torch, config, images, params):
  """Builds the PyTorch step of the default config with the same weights.

  Returns:
    (run, parameter count, the initial logits of `images` as NHWC numpy).
  """
  functional = torch.nn.functional
  model = torch_peers.build_autoencoder(
    torch, tuple(config.model.widths), config.model.latent_dim, images.shape[1:]
  )
  torch_peers.load_jax_params(torch, model, params)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
  inputs = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  edge_weight = float(config.loss.terms.edge.weight)

  def loss_fn():
    reconstructions = torch.sigmoid(model(inputs))
    pixel = functional.mse_loss(reconstructions, inputs)
    edges = functional.mse_loss(
      torch_peers.sobel_components(torch, reconstructions),
      torch_peers.sobel_components(torch, inputs),
    )
    return pixel + edge_weight * edges

  def run():
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    optimizer.step()

  with torch.no_grad():
    logits = model(inputs).numpy().transpose(0, 2, 3, 1)
  parameters = sum(parameter.numel() for parameter in model.parameters())
  return run, parameters, logits


def check_default_loss(config):
  """Raises ValueError unless the loss is MSE plus a Sobel edge MSE.

  The PyTorch step implements only that loss.
  """
  weighted = {
    name: term
    for name, term in config.loss.terms.items()
    if float(term.weight) > 0
  }
  edge = weighted.get('edge')
  pixel = weighted.get('pixel')
  if (
    set(weighted) != {'pixel', 'edge'}
    or pixel.distance != 'mse'
    or float(pixel.weight) != 1.0
    or edge.distance != 'mse'
    or edge.kernel != 'sobel'
    or edge.output != 'components'
    or edge.padding not in ('reflect', 'replicate')
  ):
    raise ValueError(
      'The PyTorch default step implements MSE plus a weighted MSE between '
      'Sobel edge components, but configs/default.py now trains on '
      f'{sorted(weighted)}. Update benchmarks/train_steps.py to match.'
    )


def run_default(batches, peers, *, warmup, repeats, step_batch):
  """Times the default config's step against the PyTorch step.

  Args:
    batches: label -> [N, H, W, C] images, N at least the batch size.
    peers: the modules from `torch_peers.import_peers`.
    warmup: untimed steps after the first one.
    repeats: timed steps.
    step_batch: batch size, or None for the default config's.

  Returns:
    (rows of the comparison, {label: (JAX step seconds, XLA FLOPs per step,
    batch size)}, notes).
  """
  config = default.get_config()
  check_default_loss(config)
  batch = step_batch or config.batch_size
  torch = peers['torch']
  rows = []
  results = {}
  notes = []
  if torch is None:
    notes.append(
      'torch is not installed, so the default step runs without its '
      'PyTorch peer.'
    )

  for label, images in batches.items():
    images = images[:batch]
    bench = build_step(config, images)
    runs = {'jax': bench.run}
    torch_parameters = logit_difference = '-'
    if torch is not None:
      torch_run, torch_parameters, torch_logits = _torch_default_step(
        torch, config, images, bench.params
      )
      logits = bench.model.apply({'params': bench.params}, jnp.asarray(images))
      logit_difference = f'{np.max(np.abs(torch_logits - logits)):.1e}'
      runs['torch'] = torch_run

    times = timing.median_times(runs, warmup=warmup, repeats=repeats)
    results[label] = (times['jax'], bench.flops, batch)
    torch_time = times.get('torch')
    rows.append(
      (
        label,
        batch,
        timing.milliseconds(times['jax']),
        timing.milliseconds(torch_time) if torch_time else '-',
        f'{times["jax"] / torch_time:.2f}' if torch_time else '-',
        bench.parameters,
        torch_parameters,
        logit_difference,
      )
    )
  return rows, results, notes


def matmul_flops_per_second(size, *, warmup, repeats):
  """Measures the FLOP/s of a float32 [size, size] @ [size, size] matmul."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((size, size)), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  times = timing.median_times(
    {'matmul': lambda: jax.block_until_ready(matmul(a, b))},
    warmup=warmup,
    repeats=repeats,
  )
  return 2.0 * size**3 / times['matmul']
