"""Trains a convolutional autoencoder, or probes its loss terms.

This file only parses flags and sets up the process. Training lives in
`train/trainer.py`, ablation sweeps in `train/sweep.py` and the loss response
probe in `train/probe.py`.

  python main.py --config=configs/default.py --workdir=runs/digits
  python main.py --mode=ablate --config=configs/ablation.py \
    --workdir=runs/ablation
  python main.py --mode=probe --config=configs/probe.py --workdir=runs/probe

A run of several processes starts one per host with the same flags plus
--distributed (Cloud TPU pod slices, Slurm, Open MPI) or
--coordinator_address, --num_processes and --process_id (anywhere else).
Exit status: 0 when the run finished, `train.preemption.EXIT_CODE` (75)
when SIGTERM stopped it after saving a checkpoint, 1 on an error.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from train import multihost
from train import preemption
from train import probe
from train import sweep
from train import trainer

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'ablate', 'probe'],
  'train: train and evaluate the autoencoder. ablate: train one model per '
  'loss variant and seed and write a comparison report (needs a config with '
  'an ablation field, such as configs/ablation.py). probe: write every loss '
  "term's response to perturbed test images (needs a config with a probe "
  'field, such as configs/probe.py).',
)
flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, logs and results.'
)
config_flags.DEFINE_config_file(
  'config',
  None,
  'Path to a config file; override fields with --config.FIELD=VALUE.',
  lock_config=True,
)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_bool(
  'distributed',
  False,
  'Join a run of several processes with jax.distributed.initialize. On a '
  'Cloud TPU pod slice, and under Slurm or Open MPI, JAX finds the other '
  'processes by itself; elsewhere set the three flags below, which imply '
  'this one.',
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'Address (host:port) of process 0, which listens on that port and must be '
  'reachable from every process.',
)
flags.DEFINE_integer(
  'num_processes', None, 'Number of processes in a multi-process run.'
)
flags.DEFINE_integer(
  'process_id', None, "This process's index in a multi-process run, from 0."
)


def parse_flags(argv):
  """Parses flags; exits with a clear message on an unknown config field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as err:
    # ml_collections raises these, with only the missing key as the message,
    # when an override names a field that the config file does not define.
    field = str(err.args[0]).strip('\'"')
    overrides = [arg for arg in argv[1:] if arg.startswith('--config.')]
    raise SystemExit(
      f'Unknown config field {field!r} in the overrides '
      f'{" ".join(overrides)}. Override only fields that the config file '
      'defines; its get_config() lists them.'
    ) from err


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  process_flags = (
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
  )
  if FLAGS.distributed or any(flag is not None for flag in process_flags):
    multihost.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )

  logging.info(
    'JAX process %d of %d, local devices: %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  if FLAGS.mode == 'probe':
    if 'probe' not in FLAGS.config:
      raise app.UsageError(
        '--mode=probe needs a config with a probe field; use '
        '--config=configs/probe.py or a config file that imports it.'
      )
    probe.run_probe(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'ablate':
    if 'ablation' not in FLAGS.config:
      raise app.UsageError(
        '--mode=ablate needs a config with an ablation field; use '
        '--config=configs/ablation.py or a config file that imports it.'
      )
    _stop_cleanly_on_sigterm(sweep.run_sweep, FLAGS.config, FLAGS.workdir)
  else:
    _stop_cleanly_on_sigterm(
      trainer.train_and_evaluate, FLAGS.config, FLAGS.workdir
    )


def _stop_cleanly_on_sigterm(run, config, workdir):
  """Calls `run`; after a SIGTERM it exits with `preemption.EXIT_CODE`."""
  try:
    run(config, workdir)
  except preemption.Preempted as stop:
    logging.warning('%s', stop)
    sys.exit(preemption.EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
