"""BatchNorm whose batch statistics do not depend on how the batch is split over devices:
``flax.linen.BatchNorm``'s semantics and variables, the same statistics on 1, 2 or 512 devices.

Training-mode BatchNorm needs per-channel sums over the ``B x H x W`` positions of the global
batch: the mean and variance going forward, ``sum(g)`` and ``sum(g * x_hat)`` coming back. With
the batch sharded, XLA computes a sum as a partial sum per device plus an all-reduce, so its
rounding depends on the device count; a deep network amplifies that rounding layer by layer, and
where a ReLU input lies within it of zero the ReLU's mask flips and the gradient changes by a whole
term (docs/parallelism.md). Every sum here is ``batch_sum``: a sum over each example's own positions
(on the device that holds the example), then an exactly associative sum over the batch in fixed
point, the same bits in any order on any device count. The statistics therefore add no
device-count dependence of their own; tests/test_parallelism.py checks every model family.

Same as ``nn.BatchNorm(use_running_average=not train, momentum, epsilon, dtype, param_dtype,
use_fast_variance=False)`` over the last axis, up to float32 roundoff: parameters ``scale`` (ones)
and ``bias`` (zeros), statistics ``batch_stats/mean`` (zeros) and ``batch_stats/var`` (ones, the
*biased* batch variance, as Flax stores it); statistics computed in float32 whatever the input
dtype (float64 inputs in float64), two-pass variance ``mean((x - mean)^2)``; running statistics
not updated while initializing; output in ``dtype``. The backward pass is the closed-form
BatchNorm gradient with the same sums (``jax.custom_vjp``).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


# Bits per fixed-point limb of batch_sum, chosen from the batch size so that a sum of B limbs fits
# in int32: B * 2**bits < 2**31.
def _limb_bits(batch: int) -> int:
    return min(24, 30 - max(batch - 1, 1).bit_length())


def batch_sum(x: jax.Array) -> jax.Array:
    """Per-channel sum of ``x`` [B, ..., C] (float32 or float64) over every axis but the last -> [C]
    in ``x``'s dtype, the same bits however the batch axis is sharded.

    Each example's positions are summed in ``x``'s dtype (per example, so on the device that holds it).
    The B per-example sums are then added exactly: scaled by one power of two per channel (from
    their largest magnitude, a max, which is exact in any order) into [-1, 1], and split into two
    integer limbs of ``_limb_bits(B)`` bits each; integer addition is associative, so XLA may
    split the batch over any number of devices and reduce in any order. The result is within about
    one float32 ulp of the exact sum of the per-example sums: what the limbs drop of each is below
    2**-(2 * bits) of the largest (2**-48 at B <= 64, 2**-36 at B = 4096). A non-finite input
    gives NaN.
    """
    b, c = x.shape[0], x.shape[-1]
    per_example = x.reshape(b, -1, c).sum(axis=1)                                 # [B, C]
    largest = jnp.max(jnp.abs(per_example), axis=0)                              # [C]
    # 2**exponent > largest (frexp: largest = m * 2**e, 0.5 <= m < 1); 0 for an all-zero channel.
    exponent = jnp.frexp(jnp.where(largest > 0, largest, 1.0))[1]
    exponent = jnp.where(jnp.isfinite(largest), exponent, 0)
    bits = _limb_bits(b)
    scaled = jnp.ldexp(per_example, bits - exponent)                             # |scaled| < 2**bits
    high = jnp.round(scaled)
    low = jnp.round(jnp.ldexp(scaled - high, bits))                              # scaled - high exact
    high_sum = jnp.sum(high.astype(jnp.int32), axis=0)
    low_sum = jnp.sum(low.astype(jnp.int32), axis=0)
    total = high_sum.astype(x.dtype) + jnp.ldexp(low_sum.astype(x.dtype), -bits)
    # largest - largest is 0, or NaN where the channel holds an inf or a NaN.
    return jnp.ldexp(total, exponent - bits) + (largest - largest)


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of ``x`` [B, ..., C] (float32 or float64) over all leading
    axes, [C] in ``x``'s dtype."""
    n = x.size // x.shape[-1]
    mean = batch_sum(x) / n
    centred = x - mean
    return mean, batch_sum(centred * centred) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
    """Training-mode BatchNorm of ``x`` [B, ..., C] (float32 or float64) with its own batch statistics:
    ``((x - mean) * rsqrt(var + epsilon) * scale + bias, mean, var)``; ``scale``, ``bias`` [C]."""
    out, _ = _normalize_fwd(x, scale, bias, epsilon)
    return out


def _normalize_fwd(x, scale, bias, epsilon):
    mean, var = batch_moments(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    x_hat = (x - mean) * rstd
    y = x_hat * scale + bias
    return (y, mean, var), (x_hat, rstd, scale)


def _normalize_bwd(epsilon, res, cotangents):
    # Cotangents of the returned statistics are ignored: they feed only the running averages,
    # which are batch_stats (never differentiated).
    x_hat, rstd, scale = res
    g = cotangents[0]
    n = g.size // g.shape[-1]
    d_bias = batch_sum(g)
    d_scale = batch_sum(g * x_hat)
    d_x = (scale * rstd / n) * (n * g - d_bias - x_hat * d_scale)
    return d_x, d_scale, d_bias


normalize_train.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the last axis (see the module docstring). ``[..., C] -> [..., C]``."""

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (channels,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (channels,))
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        # Statistics in float32 at least: bfloat16 activations are normalized in float32; float64
        # (jax_enable_x64, the device-count tests' exact reference) stays float64.
        stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
        scale, bias = scale.astype(stats_dtype), bias.astype(stats_dtype)
        if self.use_running_average:
            y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
            return y.astype(dtype)
        y, mean, var = normalize_train(x.astype(stats_dtype), scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = (self.momentum * ra_mean.value + (1 - self.momentum) * mean).astype(jnp.float32)
            ra_var.value = (self.momentum * ra_var.value + (1 - self.momentum) * var).astype(jnp.float32)
        return y.astype(dtype)
