"""Per-example distances between two batches of arrays.

Every function takes arrays of shape [B, ...], usually NHWC images in [0, 1],
casts them to float32 whatever their dtype, and returns float32 values of
shape [B]. Each value is the mean of the elementwise term over every non-batch
axis, and the caller reduces over the batch. Shapes are checked when the
function is traced, and a mismatch raises ValueError.

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


def _mean_per_example(values: jax.Array) -> jax.Array:
  """Average over every axis except the leading batch axis."""
  return jnp.mean(values, axis=tuple(range(1, values.ndim)))


@jax.jit
def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Compute the mean squared error per example, mean((a - b)^2).

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('mse', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)
  return _mean_per_example(jnp.square(difference))


@jax.jit
def mae(a: jax.Array, b: jax.Array) -> jax.Array:
  """Compute the mean absolute error per example, mean(|a - b|).

  The gradient uses the subgradient sign(a - b), which is 0 where a == b.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('mae', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  # Equal to |d|, but differentiates to sign(d), which is 0 where a == b.
  # jax.grad(jnp.abs) is 1 at 0 (JAX 0.10.2), so matched pixels would still
  # receive a gradient.
  absolute = difference * jax.lax.stop_gradient(jnp.sign(difference))
  return _mean_per_example(absolute)


@jax.jit
def rmse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Compute the root mean squared error per example, sqrt(mean((a - b)^2)).

  The value is exact, with no epsilon added. Where a == b for a whole example,
  the value is 0 and its gradient is defined as 0. A plain sqrt would give an
  infinite derivative there and a NaN gradient.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('rmse', a, b)
  mean_squared = mse(a, b)

  # jnp.where differentiates both branches, so the sqrt must never see 0. The
  # inner where feeds it 1 instead, and the outer one discards that result.
  # The gradient is then 0 rather than 0 * inf = NaN.
  is_positive = mean_squared > 0
  safe_mean_squared = jnp.where(is_positive, mean_squared, 1.0)
  return jnp.where(is_positive, jnp.sqrt(safe_mean_squared), 0.0)


@functools.partial(jax.jit, static_argnames=('delta',))
def huber(a: jax.Array, b: jax.Array, *, delta: float = 1.0) -> jax.Array:
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

  Returns:
    float32 array of shape [B].
  """
  _check_pair('huber', a, b)
  _check_positive('huber', 'delta', delta)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  absolute = jnp.abs(difference)
  quadratic = 0.5 * jnp.square(difference)
  linear = delta * (absolute - 0.5 * delta)
  return _mean_per_example(jnp.where(absolute <= delta, quadratic, linear))


@functools.partial(jax.jit, static_argnames=('epsilon',))
def charbonnier(
  a: jax.Array, b: jax.Array, *, epsilon: float = 1e-3
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

  Returns:
    float32 array of shape [B].
  """
  _check_pair('charbonnier', a, b)
  _check_positive('charbonnier', 'epsilon', epsilon)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  smoothed = jnp.sqrt(jnp.square(difference) + epsilon**2) - epsilon
  return _mean_per_example(smoothed)


@jax.jit
def log_cosh(a: jax.Array, b: jax.Array) -> jax.Array:
  """Compute the mean log-cosh loss per example, mean(log(cosh(a - b))).

  Each element is about d^2 / 2 for small d = a - b and about |d| - log(2)
  for large d, with the gradient tanh(d). It is evaluated as
  |d| + log1p(expm1(-2|d|) / 2), which equals log(cosh(d)), does not
  overflow for large |d| and keeps float32 precision for small |d|, where
  log(cosh(d)) would round to 0.

  Args:
    a: array of shape [B, ...].
    b: array of the same shape as `a`.

  Returns:
    float32 array of shape [B].
  """
  _check_pair('log_cosh', a, b)
  difference = a.astype(jnp.float32) - b.astype(jnp.float32)

  absolute = jnp.abs(difference)
  elementwise = absolute + jnp.log1p(0.5 * jnp.expm1(-2.0 * absolute))
  return _mean_per_example(elementwise)


def _check_alpha(name: str, alpha: float) -> None:
  if math.isnan(alpha) or alpha == math.inf:
    raise ValueError(
      f'{name}: alpha must be a real number or -inf, got {alpha!r}.'
    )


@functools.partial(jax.jit, static_argnames=('alpha', 'scale'))
def robust(
  a: jax.Array, b: jax.Array, *, alpha: float = 1.0, scale: float = 0.1
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
  return _mean_per_example(elementwise)


@jax.jit
def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
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

  Returns:
    float32 array of shape [B].
  """
  _check_pair('bce_with_logits', logits, targets)
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)

  elementwise = jax.nn.softplus(logits) - logits * targets
  return _mean_per_example(elementwise)


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
