"""CIFAR "MobileNetV2": the width-0.5 MobileNetV2 of the KD literature (CRD; mdistiller's
"mobile_half").

Also home of the blocks the mobile families share (``zkd.models.shufflenet`` and
``zkd.models.imagenet_mobilenet`` import them), built on ``zkd.models.layers``: "same"-padded
grouped convolutions, flat Conv-BN-activation stacks and the containers that reproduce
``torch.nn.Sequential`` naming, so that ``zkd.convert.state_dict_to_variables`` maps checkpoints
without per-model code.

The CIFAR network (Sandler et al., 2018, adapted to 32x32 inputs by CRD), on a 32x32 input:

    conv1   3x3 conv, stride 2, int(32 w) channels, BN, ReLU                     -> 16x16
    blocks  seven stages of inverted residuals (t expansion, c channels, n blocks, s stride):
              (1, 16, 1, 1) (6, 24, 2, 1) (6, 32, 3, 2) (6, 64, 4, 2)            -> 4x4
              (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1)                        -> 2x2
            with int(c w) channels; every block has its 1x1 expansion conv, even at t = 1
    conv2   1x1 conv to 1280 channels, BN, ReLU
    global average pool, classifier.0 (Linear)

With w = 0.5 and 100 classes it has 812,836 parameters. Any input of at least 1x1 pixels and any
channel count works (Fashion-MNIST's 28x28x1 goes 14, 7, 4, 2), since the pooling is global.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax

from zkd.models import register
from zkd.models.layers import (Dtype, batch_norm, classifier_output, conv, conv_init, dense,
                               global_avg_pool)

# ---------------------------------------------------------------------------------------------
# Shared building blocks of the mobile families.
# ---------------------------------------------------------------------------------------------

# PyTorch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): CRD's ShuffleNets and
# MobileNetV1 keep it.
TORCH_DEFAULT_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def check_images(x: jax.Array) -> None:
    """Raise ValueError unless ``x`` is a batch of NHWC images [B, H, W, C]."""
    if x.ndim != 4:
        raise ValueError(f"expected NHWC images [B, H, W, C], got shape {tuple(x.shape)}")


def same_conv(features: int, kernel: int, stride: int = 1, groups: int = 1, *,
              dtype: Optional[Dtype], name: str, kernel_init: Callable = conv_init) -> nn.Conv:
    """Bias-free ``nn.Conv2d(.., kernel, stride, padding=kernel // 2, groups=groups)``.

    Kernel [k, k, C / groups, features]; [B, H, W, C] -> [B, ceil(H / s), ceil(W / s), features].
    """
    return conv(features, kernel, stride, kernel // 2, groups=groups, dtype=dtype, name=name,
                kernel_init=kernel_init)


class ConvSpec(NamedTuple):
    """One ``Conv2d, BatchNorm2d[, activation]`` triple of a ``ConvBNStack``."""

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True


def conv_bn_stack(x: jax.Array, layers: Sequence[ConvSpec], train: bool, *,
                  activation: Callable[[jax.Array], jax.Array] = nn.relu,
                  kernel_init: Callable = conv_init, dtype: Optional[Dtype] = None,
                  start: int = 0) -> jax.Array:
    """The body of a flat PyTorch ``nn.Sequential(Conv2d, BatchNorm2d, [act,] Conv2d, ...)``.

    Call inside a compact method: the calling module gets the children, named by their torch
    index counted from ``start`` (the conv of a triple ``str(i)``, its BatchNorm ``str(i + 1)``;
    a parameter-free activation takes index ``i + 2``).
    [B, H, W, C] -> [B, H', W', layers[-1].features].
    """
    index = start
    for spec in layers:
        x = same_conv(spec.features, spec.kernel, spec.stride, spec.groups, dtype=dtype,
                      kernel_init=kernel_init, name=str(index))(x)
        x = batch_norm(train, dtype=dtype, name=str(index + 1))(x)
        index += 2
        if spec.act:
            x = activation(x)
            index += 1
    return x


class ConvBNStack(nn.Module):
    """A flat PyTorch ``nn.Sequential(Conv2d, BatchNorm2d, [act,] Conv2d, ...)`` as a module;
    see ``conv_bn_stack``."""

    layers: Sequence[ConvSpec]
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    kernel_init: Callable = conv_init
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return conv_bn_stack(x, self.layers, train, activation=self.activation,
                             kernel_init=self.kernel_init, dtype=self.dtype)


class Sequential(nn.Module):
    """A PyTorch ``nn.Sequential`` / ``nn.ModuleList`` of blocks: child i is named ``str(i)``.

    ``blocks`` are factories (e.g. ``functools.partial(SomeBlock, features=64)``) called with
    ``name=``; each block maps ``(x, train)`` to its output.
    """

    blocks: Sequence[Callable[..., nn.Module]]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, make in enumerate(self.blocks):
            x = make(name=str(i))(x, train)
        return x


class Classifier(nn.Module):
    """PyTorch ``nn.Sequential([Dropout(p),] Linear)``: [B, C] -> [B, num_classes].

    The Linear is child ``str(index)`` (0 without dropout, 1 after it). Dropout is applied only
    when ``train`` and ``dropout_rate > 0``, and then needs a ``"dropout"`` rng.
    """

    num_classes: int
    index: int = 0
    dropout_rate: float = 0.0
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = dense(self.num_classes, x.shape[-1], dtype=self.dtype, weight_std=0.01,
                       zero_bias=True, name=str(self.index))(x)
        return classifier_output(logits)


# ---------------------------------------------------------------------------------------------
# CIFAR MobileNetV2 (CRD / mdistiller layout).
# ---------------------------------------------------------------------------------------------

# (expansion, channels at width 1, blocks, stride of the first block); None = the model's T.
_CIFAR_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
                 (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class CRDInvertedResidualConv(nn.Module):
    """CRD's ``InvertedResidual.conv``: 1x1 expand, 3x3 depthwise (stride), 1x1 linear, as one
    flat Sequential; the expansion conv exists even when t = 1 (unlike torchvision).
    [B, H, W, C] -> [B, H / stride, W / stride, features]."""

    features: int
    stride: int
    expand_ratio: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = x.shape[-1] * self.expand_ratio
        return conv_bn_stack(x, (ConvSpec(hidden, 1),
                                 ConvSpec(hidden, 3, self.stride, groups=hidden),
                                 ConvSpec(self.features, 1, act=False)),
                             train, dtype=self.dtype)


class InvertedResidual(nn.Module):
    """Inverted residual block: ``conv`` (a ``body`` module such as ``CRDInvertedResidualConv``)
    plus an identity shortcut when stride is 1 and C == features.

    [B, H, W, C] -> [B, H / stride, W / stride, features].
    """

    features: int
    stride: int
    expand_ratio: int
    body: Callable[..., nn.Module] = CRDInvertedResidualConv
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = self.body(self.features, self.stride, self.expand_ratio, dtype=self.dtype,
                        name="conv")(x, train)
        if self.stride == 1 and x.shape[-1] == self.features:
            return x + out
        return out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 of CRD: NHWC images [B, H, W, C] -> logits [B, num_classes].

    Attributes:
      num_classes: classifier outputs.
      width_mult: channel multiplier (0.5 is the KD literature's "MobileNetV2").
      expansion: the expansion ratio T of all stages but the first.
      dtype: computation dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 100
    width_mult: float = 0.5
    expansion: int = 6
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x)
        channels = int(32 * self.width_mult)
        x = ConvBNStack((ConvSpec(channels, 3, 2),), dtype=self.dtype, name="conv1")(x, train)
        stages = []
        for t, c, n, s in _CIFAR_STAGES:
            out = int(c * self.width_mult)
            blocks = tuple(
                functools.partial(InvertedResidual, features=out, stride=s if j == 0 else 1,
                                  expand_ratio=self.expansion if t is None else t,
                                  dtype=self.dtype)
                for j in range(n))
            stages.append(functools.partial(Sequential, blocks=blocks))
        x = Sequential(tuple(stages), name="blocks")(x, train)
        # CRD: int(1280 * w) when w > 1, else 1280.
        last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
        x = ConvBNStack((ConvSpec(last, 1),), dtype=self.dtype, name="conv2")(x, train)
        x = global_avg_pool(x)
        return Classifier(self.num_classes, dtype=self.dtype, name="classifier")(x, train)


@register("MobileNetV2")
def _mobilenetv2(num_classes: int, **options) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, **options)
