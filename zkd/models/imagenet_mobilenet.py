"""ImageNet "MobileNetV1" (CRD / mdistiller layout) and "MobileNetV2" (torchvision layout).

MobileNetV1 (Howard et al., 2017, width 1.0), the student of the paper's ResNet50 -> MobileNetV1
row: ``model`` is a Sequential of a 3x3 stride-2 conv to 32 channels and 13 depthwise-separable
blocks (3x3 depthwise, BN, ReLU, 1x1 pointwise, BN, ReLU) with widths
64, 128, 128, 256, 256, 512 (x6), 1024, 1024 and strides 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1;
then global average pooling (CRD's ``AvgPool2d(7)`` at 224x224) and ``fc``.
4,231,976 parameters at 1000 classes.

MobileNetV2 (Sandler et al., 2018) with torchvision's module names: ``features.0`` is a 3x3
stride-2 Conv-BN-ReLU6 to 32 channels, ``features.1``-``features.17`` inverted residuals
(t, c, n, s) = (1, 16, 1, 1) (6, 24, 2, 2) (6, 32, 3, 2) (6, 64, 4, 2) (6, 96, 3, 1)
(6, 160, 3, 2) (6, 320, 1, 1), ``features.18`` a 1x1 Conv-BN-ReLU6 to 1280, global average
pooling and ``classifier`` = (Dropout, Linear). A t = 1 block has no expansion conv.
3,504,872 parameters at 1000 classes.

Both take any input of at least 1x1 pixels (224 for ImageNet; 64 or 96 in tests).
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax

from zkd.models import register
from zkd.models.layers import Dtype, classifier_output, dense, global_avg_pool
from zkd.models.mobilenet import (TORCH_DEFAULT_CONV_INIT, Classifier, ConvBNStack, ConvSpec,
                                  InvertedResidual, Sequential, check_images, conv_bn_stack)

# (output channels, stride) of MobileNetV1's depthwise-separable blocks.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """ImageNet MobileNetV1: NHWC images [B, H, W, C] -> logits [B, num_classes].

    Keeps PyTorch's default initialization, as the CRD / mdistiller model does.

    Attributes:
      num_classes: classifier outputs.
      dtype: computation dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 1000
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x)
        stack = functools.partial(ConvBNStack, kernel_init=TORCH_DEFAULT_CONV_INIT,
                                  dtype=self.dtype)
        blocks = [functools.partial(stack, layers=(ConvSpec(32, 3, 2),))]
        channels = 32
        for features, stride in _V1_BLOCKS:
            blocks.append(functools.partial(
                stack, layers=(ConvSpec(channels, 3, stride, groups=channels),
                               ConvSpec(features, 1))))
            channels = features
        x = Sequential(tuple(blocks), name="model")(x, train)
        x = global_avg_pool(x)
        logits = dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)
        return classifier_output(logits)


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, at least 90% of
    ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class TVInvertedResidualConv(nn.Module):
    """torchvision ``InvertedResidual.conv``: [expand Conv-BN-ReLU6,] depthwise Conv-BN-ReLU6,
    1x1 Conv, BN. [B, H, W, C] -> [B, H / stride, W / stride, features]."""

    features: int
    stride: int
    expand_ratio: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = int(round(x.shape[-1] * self.expand_ratio))
        stack = functools.partial(ConvBNStack, activation=nn.relu6, dtype=self.dtype)
        index = 0
        if self.expand_ratio != 1:
            x = stack((ConvSpec(hidden, 1),), name="0")(x, train)
            index = 1
        x = stack((ConvSpec(hidden, 3, self.stride, groups=hidden),), name=str(index))(x, train)
        return conv_bn_stack(x, (ConvSpec(self.features, 1, act=False),), train,
                             dtype=self.dtype, start=index + 1)


# torchvision's inverted residual setting: (expansion t, channels c, blocks n, first stride s).
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 in torchvision's layout: [B, H, W, C] -> logits [B, num_classes].

    Attributes:
      num_classes: classifier outputs.
      width_mult: channel multiplier (channels rounded to multiples of 8, as torchvision).
      dropout_rate: dropout before the classifier in training. torchvision trains with 0.2;
        the default 0.0 keeps ``apply(..., train=True)`` free of a "dropout" rng like every
        other zkd model. Set it to 0.2 (and pass ``rngs={"dropout": key}``) for torchvision's
        recipe; it has no effect in evaluation.
      dtype: computation dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout_rate: float = 0.0
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x)
        dt = self.dtype
        stack = functools.partial(ConvBNStack, activation=nn.relu6, dtype=dt)
        blocks = [functools.partial(stack, layers=(ConvSpec(make_divisible(32 * self.width_mult),
                                                            3, 2),))]
        for t, c, n, s in _V2_STAGES:
            features = make_divisible(c * self.width_mult)
            blocks += [functools.partial(InvertedResidual, features=features,
                                         stride=s if j == 0 else 1, expand_ratio=t,
                                         body=TVInvertedResidualConv, dtype=dt)
                       for j in range(n)]
        last = make_divisible(1280 * max(1.0, self.width_mult))
        blocks.append(functools.partial(stack, layers=(ConvSpec(last, 1),)))
        x = Sequential(tuple(blocks), name="features")(x, train)
        x = global_avg_pool(x)
        return Classifier(self.num_classes, index=1, dropout_rate=self.dropout_rate, dtype=dt,
                          name="classifier")(x, train)


@register("MobileNetV1", zoo="imagenet")
def _mobilenet_v1(num_classes: int, **options) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, **options)


@register("MobileNetV2", zoo="imagenet")
def _mobilenet_v2(num_classes: int, **options) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, **options)
