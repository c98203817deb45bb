"""BatchNorm whose batch reductions are matrix products: ``flax.linen.BatchNorm``'s semantics and
variables, faster on CPU.

Training-mode BatchNorm needs per-channel sums over ``B x H x W`` positions: the mean and variance
going forward, ``sum(g)`` and ``sum(g * x_hat)`` coming back. Written as reductions, XLA's CPU
backend splits each into a slow windowed reduction (``reduce-window``): in the resnet56 -> resnet20
step at batch 64 they took ~12% of the step (docs/performance.md). Here every one of them is a
product with a vector of ones, ``ones[N] @ x[N, C]``, which XLA hands to its matrix-multiply
library; the backward pass is the closed-form BatchNorm gradient with the same products
(``jax.custom_vjp``). On accelerators the products are as cheap as the reductions.

Same as ``nn.BatchNorm(use_running_average=not train, momentum, epsilon, dtype, param_dtype,
use_fast_variance=False)`` over the last axis, up to float32 roundoff (the sums' order differs):
parameters ``scale`` (ones) and ``bias`` (zeros), statistics ``batch_stats/mean`` (zeros) and
``batch_stats/var`` (ones, the *biased* batch variance, as Flax stores it); statistics computed in
float32 whatever the input dtype, two-pass variance ``mean((x - mean)^2)``; running statistics
not updated while initializing; output in ``dtype``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _channel_sum(x2: jax.Array) -> jax.Array:
    """Sum over rows of ``x2`` [N, C] as ``ones[N] @ x2`` -> [C], float32 accumulation."""
    return jnp.dot(jnp.ones((x2.shape[0],), x2.dtype), x2, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of ``x`` [..., C] over all leading axes, float32 [C]."""
    x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    n = x2.shape[0]
    mean = _channel_sum(x2) / n
    centred = x2 - mean
    return mean, _channel_sum(centred * centred) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
    """Training-mode BatchNorm of ``x`` [..., C] (float32) with its own batch statistics:
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
    shape, channels = g.shape, g.shape[-1]
    g2, x2 = g.reshape(-1, channels), x_hat.reshape(-1, channels)
    n = g2.shape[0]
    d_bias = _channel_sum(g2)
    d_scale = _channel_sum(g2 * x2)
    d_x = (scale * rstd / n) * (n * g2 - d_bias - x2 * d_scale)
    return d_x.reshape(shape), d_scale, d_bias


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
        scale32, bias32 = scale.astype(jnp.float32), bias.astype(jnp.float32)
        if self.use_running_average:
            y = (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale32) + bias32
            return y.astype(dtype)
        y, mean, var = normalize_train(x.astype(jnp.float32), scale32, bias32, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(dtype)
