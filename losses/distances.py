"""Per-example distances between two batches of arrays.

Every function takes arrays of shape [B, ...], usually NHWC images in [0, 1],
casts them to float32 whatever their dtype, and returns float32 values of
shape [B]. Each value is the mean of the elementwise term over every non-batch
axis, and the caller reduces over the batch. Shapes are checked when the
function is traced, and a mismatch raises ValueError.

The distances that compare two arrays elementwise (all but `psnr` and
`focal_frequency`) take an optional
keyword `weights`, an array of the rank of the inputs with the batch size
of the inputs and each other axis of their size or of size 1, such as a
[B, H, W, 1] mask for NHWC images. The mean then becomes the weighted mean
sum(w * term) / sum(w) per example, with `w` broadcast to the inputs. So
weights of ones give exactly the unweighted value, and an element of weight
0 does not affect the value or receive a gradient. An example whose weights
sum to 0 has the value 0. Weights should be >= 0, which is not checked.

Float options (`delta`, `epsilon`, `alpha`, `scale`, `data_range`) are static
arguments, so they must be Python numbers, and each new value compiles a new
function.
"""

from collections.abc import Callable
import functools
import math

import jax
import jax.numpy as jnp


def _check_pair(name: str, a: jax.Array, b: jax.Array) -> None:
  """Raise ValueError unless `a` and `b` have the same shape of rank >= 1."""
  if a.ndim < 1:
    raise ValueError(
      f'{name}: inputs must have shape [B, ...] with a batch axis, got a '
      f'scalar of shape {a.shape}.'
    )

  if a.shape != b.shape:
    raise ValueError(
      f'{name}: inputs must have the same shape, got {a.shape} and {b.shape}.'
    )


def _check_positive(name: str, option: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f'{name}: {option} must be positive, got {value!r}.')


def _check_weights(name: str, values: jax.Array, weights: jax.Array) -> None:
  """Raise ValueError unless `weights` broadcasts to `values` as documented."""
  is_broadcastable = weights.ndim == values.ndim and all(
    size in (1, expected)
    for size, expected in zip(weights.shape[1:], values.shape[1:], strict=True)
  )
  if not is_broadcastable or weights.shape[0] != values.shape[0]:
    raise ValueError(
      f'{name}: weights must have the rank and batch size of the inputs, and '
      f'each other axis of their size or of size 1, got shape '
      f'{weights.shape} for inputs of shape {values.shape}.'
    )


def _mean_per_example(
  values: jax.Array, weights: jax.Array | None = None, name: str = ''
) -> jax.Array:
  """Average over every axis except the leading batch axis.

  With `weights`, return the weighted mean sum(w * values) / sum(w) per
  example, and 0 where the weights of an example sum to 0.
  """
  axes = tuple(range(1, values.ndim))
  if weights is None:
    return jnp.mean(values, axis=axes)

  _check_weights(name, values, weights)
  weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)
  total_weight = jnp.sum(weights, axis=axes)

  # The where keeps the division finite, and its gradient too, where an
  # example's weights sum to 0.
  has_weight = total_weight > 0
  safe_total_weight = jnp.where(has_weight, total_weight, 1.0)
  weighted_sum = jnp.sum(weights * values, axis=axes)
  return jnp.where(has_weight, weighted_sum / safe_total_weight, 0.0)


@jax.jit
def mse(
  a: jax.Array, b: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
  """Compute the mean squared error per example, mean((a - b)^2).

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('mse', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)
  return _mean_per_example(jnp.square(difference), weights, 'mse')


@jax.jit
def mae(
  a: jax.Array, b: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
  """Compute the mean absolute error per example, mean(|a - b|).

  The gradient uses the subgradient sign(a - b), which is 0 where a == b.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('mae', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  # Equal to |d|, but differentiates to sign(d), which is 0 where a == b.
  # jax.grad(jnp.abs) is 1 at 0 (JAX 0.10.2), so matched pixels would still
  # receive a gradient.
  absolute = difference * jax.lax.stop_gradient(jnp.sign(difference))
  return _mean_per_example(absolute, weights, 'mae')


@jax.jit
def rmse(
  a: jax.Array, b: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
  """Compute the root mean squared error per example, sqrt(mean((a - b)^2)).

  The value is exact, with no epsilon added. Where a == b for a whole example,
  the value is 0 and its gradient is defined as 0. A plain sqrt would give an
  infinite derivative there and a NaN gradient.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('rmse', a, b)
  mean_squared = mse(a, b, weights=weights)

  # jnp.where differentiates both branches, so the sqrt must never see 0. The
  # inner where feeds it 1 instead, and the outer one discards that result.
  # The gradient is then 0 rather than 0 * inf = NaN.
  is_positive = mean_squared > 0
  safe_mean_squared = jnp.where(is_positive, mean_squared, 1.0)
  return jnp.where(is_positive, jnp.sqrt(safe_mean_squared), 0.0)


@functools.partial(jax.jit, static_argnames=('delta',))
def huber(
  a: jax.Array,
  b: jax.Array,
  *,
  delta: float = 1.0,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Compute the mean Huber loss per example.

  With d = a - b, each element contributes 0.5 * d^2 where |d| <= delta and
  delta * (|d| - 0.5 * delta) elsewhere. The loss is quadratic near 0 and
  linear in the tails, with a continuous first derivative. Source: P. J.
  Huber, "Robust Estimation of a Location Parameter", Annals of Mathematical
  Statistics 35, 73-101, 1964.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    delta: positive threshold on |a - b| where the loss turns linear.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('huber', a, b)
  _check_positive('huber', 'delta', delta)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  absolute = jnp.abs(difference)
  quadratic = 0.5 * jnp.square(difference)
  linear = delta * (absolute - 0.5 * delta)
  elementwise = jnp.where(absolute <= delta, quadratic, linear)
  return _mean_per_example(elementwise, weights, 'huber')


@functools.partial(jax.jit, static_argnames=('epsilon',))
def charbonnier(
  a: jax.Array,
  b: jax.Array,
  *,
  epsilon: float = 1e-3,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Compute the mean Charbonnier loss per example.

  Each element contributes sqrt(d^2 + epsilon^2) - epsilon with d = a - b, a
  smooth approximation of |d|. The subtracted epsilon makes the value exactly
  0 where a == b. The usual form sqrt(d^2 + epsilon^2) has a floor of epsilon
  instead, and both forms have the same gradient d / sqrt(d^2 + epsilon^2),
  which is finite everywhere. This form equals
  scipy.special.pseudo_huber(epsilon, d) / epsilon. Source: P. Charbonnier,
  L. Blanc-Feraud, G. Aubert and M. Barlaud, "Two deterministic
  half-quadratic regularization algorithms for computed imaging", ICIP 1994.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    epsilon: positive smoothing scale, in the units of a and b.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('charbonnier', a, b)
  _check_positive('charbonnier', 'epsilon', epsilon)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  smoothed = jnp.sqrt(jnp.square(difference) + epsilon**2) - epsilon
  return _mean_per_example(smoothed, weights, 'charbonnier')


@jax.jit
def log_cosh(
  a: jax.Array, b: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
  """Compute the mean log-cosh loss per example, mean(log(cosh(a - b))).

  Each element is about d^2 / 2 for small d = a - b and about |d| - log(2)
  for large d, with the gradient tanh(d). It is evaluated as
  |d| + log1p(expm1(-2|d|) / 2), which equals log(cosh(d)), does not
  overflow for large |d| and keeps float32 precision for small |d|, where
  log(cosh(d)) would round to 0.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('log_cosh', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  absolute = jnp.abs(difference)
  elementwise = absolute + jnp.log1p(0.5 * jnp.expm1(-2.0 * absolute))
  return _mean_per_example(elementwise, weights, 'log_cosh')


def _check_alpha(name: str, alpha: float) -> None:
  if math.isnan(alpha) or alpha == math.inf:
    raise ValueError(
      f'{name}: alpha must be a real number or -inf, got {alpha!r}.'
    )


@functools.partial(jax.jit, static_argnames=('alpha', 'scale'))
def robust(
  a: jax.Array,
  b: jax.Array,
  *,
  alpha: float = 1.0,
  scale: float = 0.1,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Compute the mean of Barron's general robust loss per example.

  With z = ((a - b) / scale)^2, each element contributes
  |alpha - 2| / alpha * ((z / |alpha - 2| + 1)^(alpha / 2) - 1), from J. T.
  Barron, "A General and Adaptive Robust Loss Function", CVPR 2019. alpha
  and scale are fixed here, not learned. The formula is undefined at
  alpha = 0, alpha = 2 and alpha = -inf, so those use their limits: z / 2
  for alpha = 2 (L2), log(z / 2 + 1) for alpha = 0 (Cauchy) and
  1 - exp(-z / 2) for alpha = -inf (Welsch). alpha = 1 gives
  sqrt(z + 1) - 1, a Charbonnier loss, and alpha = -2 Geman-McClure. The
  power is evaluated as expm1(alpha / 2 * log1p(z / |alpha - 2|)), which
  stays accurate for alpha near 0.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    alpha: shape parameter, any real number or float('-inf'). Smaller values
      penalise large differences less.
    scale: positive width of the quadratic bowl around 0, in the units of a
      and b.
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('robust', a, b)
  _check_alpha('robust', alpha)
  _check_positive('robust', 'scale', scale)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)
  squared = jnp.square(difference / scale)

  if alpha == 2.0:
    elementwise = 0.5 * squared
  elif alpha == 0.0:
    elementwise = jnp.log1p(0.5 * squared)
  elif alpha == -math.inf:
    elementwise = -jnp.expm1(-0.5 * squared)
  else:
    shift = abs(alpha - 2.0)
    power = jnp.expm1(0.5 * alpha * jnp.log1p(squared / shift))
    elementwise = shift / alpha * power
  return _mean_per_example(elementwise, weights, 'robust')


@jax.jit
def bce_with_logits(
  logits: jax.Array,
  targets: jax.Array,
  *,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Compute the mean binary cross-entropy per example from logits.

  Each element contributes -t * log(sigmoid(z)) - (1 - t) * log(1 - sigmoid(z))
  for logit z and target t, written in the stable form
  max(z, 0) - z * t + log1p(exp(-|z|)) = softplus(z) - z * t. The code uses
  jax.nn.softplus, which evaluates that form through jnp.logaddexp and has
  the exact gradient sigmoid(z) - t everywhere. Differentiating the max/abs
  expression directly gives -t at z == 0 in JAX 0.10.2, because the
  derivative of jnp.maximum at a tie is 0.5 and that of jnp.abs at 0 is 1.

  Soft targets anywhere in [0, 1] are accepted. For a soft target the minimum
  over z is the binary entropy of t, not 0. Values outside [0, 1] are not
  checked and make the loss unbounded below.

  Args:
    logits: array of shape [B, ...], the pre-sigmoid outputs.
    targets: array of the same shape with values in [0, 1].
    weights: optional elementwise weights, see the module docstring.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('bce_with_logits', logits, targets)
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)

  elementwise = jax.nn.softplus(logits) - logits * targets
  return _mean_per_example(elementwise, weights, 'bce_with_logits')


@functools.partial(jax.jit, static_argnames=('data_range',))
def psnr(a: jax.Array, b: jax.Array, *, data_range: float = 1.0) -> jax.Array:
  """Compute the peak signal-to-noise ratio per example, in dB.

  PSNR = 10 * log10(data_range^2 / mean((a - b)^2)), with the mean over each
  example's non-batch axes, which is the definition that
  skimage.metrics.peak_signal_noise_ratio uses for a single image. This is an
  evaluation metric, not a loss. Where a == b for a whole example the mean
  squared error is 0 and the value is +inf, and the function is not meant to
  be differentiated.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.
    data_range: positive difference between the largest and smallest possible
      value, 1.0 for images in [0, 1].

  Returns:
    float32 array of shape [B], +inf where a == b.
  """
  _check_pair('psnr', a, b)
  _check_positive('psnr', 'data_range', data_range)

  mean_squared = mse(a, b)
  return 10.0 * jnp.log10(data_range**2 / mean_squared)


@functools.partial(jax.jit, static_argnames=('alpha',))
def focal_frequency(
  a: jax.Array, b: jax.Array, *, alpha: float = 1.0
) -> jax.Array:
  """Compute the focal frequency loss per example.

  From L. Jiang, B. Dai, W. Wu and C. C. Loy, "Focal Frequency Loss for Image
  Reconstruction and Synthesis", ICCV 2021. F is the orthonormal 2-D DFT over
  H and W of each image and channel, as numpy.fft.fft2(x, axes=(1, 2),
  norm='ortho'), and d = |F(a) - F(b)|^2 per frequency. The spectrum weight
  w = d^(alpha / 2), divided by its maximum over H, W and C of each example,
  lies in [0, 1] and is held fixed under stop_gradient, so it only picks the
  frequencies that the gradient of d concentrates on. The value is mean(w * d)
  over H, W and C. Where d is 0 for a whole example, w is defined as 0, so
  the value and its gradient are 0 there.

  Args:
    a: array of shape [B, H, W, C].
    b: array of the same shape as `a`.
    alpha: positive exponent of the weight. Larger values focus more on the
      frequencies with the largest error.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('focal_frequency', a, b)
  if a.ndim != 4:
    raise ValueError(
      f'focal_frequency: inputs must be NHWC with shape [B, H, W, C], got '
      f'shape {a.shape}.'
    )
  if not (alpha > 0 and math.isfinite(alpha)):
    raise ValueError(
      f'focal_frequency: alpha must be a positive finite number, got {alpha!r}.'
    )

  spectrum_difference = jnp.fft.fft2(
    a.astype(jnp.float32) - b.astype(jnp.float32), axes=(1, 2), norm='ortho'
  )
  squared_error = jnp.square(spectrum_difference.real) + jnp.square(
    spectrum_difference.imag
  )

  # alpha > 0, so error ** (alpha / 2) is 0 where error is 0. The where
  # avoids 0 / 0 for an example whose error is 0 everywhere.
  error = jax.lax.stop_gradient(squared_error)
  power = error ** (0.5 * alpha)
  maximum = jnp.max(power, axis=(1, 2, 3), keepdims=True)
  has_maximum = maximum > 0
  safe_maximum = jnp.where(has_maximum, maximum, 1.0)
  weight = jnp.where(has_maximum, power / safe_maximum, 0.0)
  return jnp.mean(weight * squared_error, axis=(1, 2, 3))


# Distances that compare two images of the same kind, keyed by their config
# name. Each takes (a, b, **options). Binary cross-entropy is not listed
# because it reads logits and targets rather than two images.
DISTANCES: dict[str, Callable[..., jax.Array]] = {
  'mse': mse,
  'mae': mae,
  'rmse': rmse,
  'huber': huber,
  'charbonnier': charbonnier,
  'log_cosh': log_cosh,
  'robust': robust,
}
