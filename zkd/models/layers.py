"""Building blocks shared by the ResNet-style families (CIFAR ResNets, WRN, VGG, ImageNet ResNets).

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
         kernel_init=conv_init) -> nn.Conv:
    """``nn.Conv2d(in, features, kernel, stride, padding, bias=use_bias, groups=groups)``."""
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), use_bias=use_bias,
        feature_group_count=groups, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name,
    )


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
    """Logits are returned in float32 whatever the computation dtype (losses need the range)."""
    return logits.astype(jnp.float32)


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
