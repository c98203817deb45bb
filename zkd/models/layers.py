"""Building blocks shared by the CNN families (CIFAR ResNets, WRN, VGG, ImageNet ResNets; the grouped
convolutions of the MobileNets and ShuffleNets).

All layers follow PyTorch so that ``zkd.convert`` can load PyTorch weights by name:

- convolutions pad explicitly like ``nn.Conv2d(padding=p)`` (Flax's "SAME" pads stride-2 convs
  differently from PyTorch);
- BatchNorm uses PyTorch's defaults: momentum 0.1 there (``momentum=0.9`` here), epsilon 1e-5,
  variance computed in two passes. One known difference: PyTorch stores the *unbiased* batch
  variance in ``running_var`` during training, Flax the biased one; the factor n/(n-1) is below
  1.00025 for the per-channel counts n >= 4096 of CIFAR training at batch 64.
- initialisation mirrors the reference implementations: Kaiming-normal (fan_out, ReLU gain)
  convolutions, BatchNorm scale 1 / bias 0, and PyTorch's default ``nn.Linear`` initialisation.

Shapes: images and feature maps are NHWC ``[B, H, W, C]``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from zkd.models.batchnorm import BatchNorm

Dtype = Any

# kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated as in PyTorch.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, use_bias: bool = False,
         dtype: Optional[Dtype] = None, name: str, groups: int = 1,
         kernel_init=conv_init) -> nn.Module:
    """``nn.Conv2d(in, features, kernel, stride, padding, bias=use_bias, groups=groups)``.

    Grouped convolutions (``groups > 1``) are ``GroupedConv``: the same variables as ``nn.Conv``,
    computed without XLA's grouped convolution on CPU (see there)."""
    if groups > 1:
        return GroupedConv(features, kernel, stride, padding, groups, use_bias=use_bias, dtype=dtype,
                           kernel_init=kernel_init, name=name)
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), use_bias=use_bias,
        feature_group_count=groups, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name,
    )


class GroupedConv(nn.Module):
    """``nn.Conv(features, (kernel, kernel), strides=stride, padding=((padding, padding),) * 2,
    feature_group_count=groups)``: the same parameters (``kernel`` [k, k, C_in / groups, features],
    ``bias`` [features]) and initialisation, and on accelerators the same computation.

    On CPU, XLA runs grouped convolutions far slower than the same arithmetic written out
    (figures: docs/performance.md), so there a depthwise convolution (groups = C_in = features) is the sum of its k x k shifted, strided
    views of the zero-padded input times the per-channel taps, and a 1x1 grouped convolution one
    batched product over the groups. Both agree with XLA's grouped convolution to float32
    roundoff (tests/test_models_mobile.py checks values and gradients, and the models against
    PyTorch). Other grouped shapes (e.g. a channel multiplier) keep XLA's convolution.
    """

    features: int
    kernel: int
    stride: int
    padding: int
    groups: int
    use_bias: bool = False
    dtype: Optional[Dtype] = None
    kernel_init: Any = conv_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C_in] -> [B, H', W', features]."""
        c_in, k, g = x.shape[-1], self.kernel, self.groups
        if c_in % g or self.features % g:
            raise ValueError(f"{self.name}: {c_in} input and {self.features} output channels do not split into "
                             f"{g} groups")
        w = self.param("kernel", self.kernel_init, (k, k, c_in // g, self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        dtype = self.dtype or jnp.result_type(x, w)
        x, w = x.astype(dtype), w.astype(dtype)
        on_cpu = jax.default_backend() == "cpu"
        if on_cpu and g == c_in == self.features:
            y = _depthwise(x, w[:, :, 0, :], self.stride, self.padding)
        elif on_cpu and k == 1 and self.stride == 1 and self.padding == 0:
            batch, height, width, _ = x.shape
            y = jnp.einsum("bhwgi,gio->bhwgo", x.reshape(batch, height, width, g, c_in // g),
                           w[0, 0].reshape(c_in // g, g, self.features // g).transpose(1, 0, 2))
            y = y.reshape(batch, height, width, self.features)
        else:
            pad = ((self.padding, self.padding),) * 2
            y = jax.lax.conv_general_dilated(x, w, (self.stride, self.stride), pad,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g)
        return y if b is None else y + b.astype(dtype)


def _depthwise(x: jax.Array, taps: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise convolution of x [B, H, W, C] with taps [k, k, C]: the sum over the k x k taps of
    the strided view of the zero-padded input each tap sees, times that tap's per-channel weight."""
    k = taps.shape[0]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_h = (xp.shape[1] - k) // stride + 1
    out_w = (xp.shape[2] - k) // stride + 1
    y = None
    for i in range(k):
        for j in range(k):
            view = xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
            y = view * taps[i, j] if y is None else y + view * taps[i, j]
    return y


def batch_norm(train: bool, *, dtype: Optional[Dtype] = None, name: str) -> BatchNorm:
    """``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` with PyTorch's momentum and epsilon.

    ``train=True`` normalizes with batch statistics and updates ``batch_stats`` (the caller must
    pass ``mutable=["batch_stats"]``); ``train=False`` uses the running statistics. Flax's
    ``nn.BatchNorm`` (two-pass variance) computed with matrix products (zkd.models.batchnorm).
    """
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                     param_dtype=jnp.float32, name=name)


def _torch_linear_bias_init(key, shape, dtype=jnp.float32, *, fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def dense(features: int, fan_in: int, *, dtype: Optional[Dtype] = None, name: str,
          weight_std: Optional[float] = None, zero_bias: bool = False) -> nn.Dense:
    """``nn.Linear(fan_in, features)`` with PyTorch's default initialisation (weight and bias
    uniform in +-1/sqrt(fan_in)). ``weight_std`` gives N(0, weight_std^2) weights instead (CRD's
    VGG); ``zero_bias`` a zero bias (CRD's VGG and WRN). ``[..., fan_in] -> [..., features]``;
    params float32."""
    if weight_std is None:
        kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    else:
        kernel_init = nn.initializers.normal(weight_std)
    if zero_bias:
        bias_init = nn.initializers.zeros
    else:
        bias_init = lambda k, s, d=jnp.float32: _torch_linear_bias_init(k, s, d, fan_in=fan_in)
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                    bias_init=bias_init, name=name)


def global_avg_pool(x):
    """``nn.AdaptiveAvgPool2d(1)`` + flatten: ``[B, H, W, C] -> [B, C]``."""
    return jnp.mean(x, axis=(1, 2))


def classifier_output(logits):
    """Logits are returned in float32 at least whatever the computation dtype (losses need the
    range; float64 stays float64)."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class ConvBN(nn.Module):
    """``nn.Sequential(nn.Conv2d(.., kernel, stride, bias=False), nn.BatchNorm2d(..))``:
    the projection shortcut of ResNets, children named "0" (conv) and "1" (BN).
    ``[B, H, W, C] -> [B, ceil(H/stride), ceil(W/stride), features]``."""

    features: int
    stride: int = 1
    kernel: int = 1
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = conv(self.features, self.kernel, self.stride, self.kernel // 2, dtype=self.dtype,
                 name="0")(x)
        return batch_norm(train, dtype=self.dtype, name="1")(x)


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block (He et al. 2016): two 3x3 convs, identity or 1x1
    projection shortcut (when the stride or width changes), ReLU after the sum.

    ``shortcut_name`` is the PyTorch attribute of the projection: "downsample" (CRD/mdistiller
    CIFAR ResNets, torchvision) or "shortcut" (CRD's CIFAR ResNet18/50).
    ``[B, H, W, Cin] -> [B, H/stride, W/stride, planes]``.
    """

    planes: int
    stride: int = 1
    shortcut_name: str = "downsample"
    dtype: Optional[Dtype] = None
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out = conv(self.planes, 3, self.stride, 1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(out))
        out = conv(self.planes, 3, 1, 1, dtype=self.dtype, name="conv2")(out)
        out = batch_norm(train, dtype=self.dtype, name="bn2")(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = ConvBN(self.planes, self.stride, dtype=self.dtype, name=self.shortcut_name)(x, train)
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 with the stride -> 1x1 to ``4 * planes``), as in
    torchvision ("ResNet v1.5") and CRD's CIFAR ResNet50.
    ``[B, H, W, Cin] -> [B, H/stride, W/stride, 4 * planes]``."""

    planes: int
    stride: int = 1
    shortcut_name: str = "downsample"
    dtype: Optional[Dtype] = None
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        width = self.planes * self.expansion
        out = conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(out))
        out = conv(self.planes, 3, self.stride, 1, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
        out = conv(width, 1, dtype=self.dtype, name="conv3")(out)
        out = batch_norm(train, dtype=self.dtype, name="bn3")(out)
        if self.stride != 1 or x.shape[-1] != width:
            x = ConvBN(width, self.stride, dtype=self.dtype, name=self.shortcut_name)(x, train)
        return nn.relu(out + x)


class Stage(nn.Module):
    """``nn.Sequential`` of ``num_blocks`` blocks named "0", "1", ...; the first has the stride.

    Each block is ``block(features, stride, dtype=dtype, **dict(options), name=str(i))``.
    """

    block: Any
    features: int
    num_blocks: int
    stride: int = 1
    dtype: Optional[Dtype] = None
    options: tuple = ()

    @nn.compact
    def __call__(self, x, train: bool):
        for i in range(self.num_blocks):
            x = self.block(self.features, self.stride if i == 0 else 1, dtype=self.dtype,
                           **dict(self.options), name=str(i))(x, train)
        return x
