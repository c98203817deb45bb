"""CIFAR "ShuffleV1" and "ShuffleV2": the ShuffleNets of the KD literature (CRD / mdistiller).

Both start with a 1x1 conv to 24 channels at full resolution (no stride, no max pool), have three
stages that each halve the resolution, and end with global average pooling and ``linear``.

ShuffleV1 (Zhang et al., 2018; groups 3, stage widths 240/480/960, 4/8/4 units): each unit is
grouped 1x1 conv -> channel shuffle -> 3x3 depthwise -> grouped 1x1 conv, with an identity
shortcut added, or, in a stage's first unit (stride 2), a 3x3 average-pooled shortcut
concatenated. The first unit of the network keeps its first 1x1 conv ungrouped (24 inputs).
949,258 parameters at 100 classes.

ShuffleV2 (Ma et al., 2018; "net_size 1": widths 116/232/464, 3/7/3 basic units, 1x1 conv to
1024 before pooling): a stage is a down-sampling unit (two stride-2 branches concatenated) then
basic units (channel split in halves, one half through 1x1 -> 3x3 depthwise -> 1x1, concatenated
with the other half), each followed by a channel shuffle with 2 groups. 1,355,528 parameters at
100 classes.

Names mirror the PyTorch modules (``conv1``, ``bn1``, ``layer1.0.conv2``, ``linear``, ...).
Channel shuffles reproduce PyTorch's NCHW ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` on the
channel axis of NHWC arrays. Any input of at least 1x1 pixels and any channel count works.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zkd.models import register
from zkd.models.layers import Dtype, batch_norm, classifier_output, dense, global_avg_pool
from zkd.models.mobilenet import TORCH_DEFAULT_CONV_INIT, Sequential, check_images, same_conv

# ShuffleV1 keeps the first 1x1 conv of a unit ungrouped when its input is the 24-channel stem.
_STEM_CHANNELS = 24


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """[..., C] -> [..., C] with channel ``i * (C // groups) + j`` moved to ``j * groups + i``.

    The NHWC equivalent of PyTorch's ``x.view(N, g, C // g, H, W).permute(0, 2, 1, 3, 4)``.
    """
    *lead, c = x.shape
    if c % groups:
        raise ValueError(f"cannot shuffle {c} channels into {groups} groups")
    return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def _conv(features, kernel, stride=1, groups=1, *, dtype, name):
    """The ShuffleNets keep PyTorch's default conv init."""
    return same_conv(features, kernel, stride, groups, dtype=dtype, name=name,
                     kernel_init=TORCH_DEFAULT_CONV_INIT)


def _pool_and_classify(x: jax.Array, num_classes: int, dtype: Optional[Dtype]) -> jax.Array:
    """Global average pool and ``linear`` (PyTorch's default init): [B, H, W, C] -> float32
    logits [B, num_classes]."""
    x = global_avg_pool(x)
    return classifier_output(dense(num_classes, x.shape[-1], dtype=dtype, name="linear")(x))


def _stem(x: jax.Array, train: bool, dtype: Optional[Dtype]) -> jax.Array:
    """``relu(bn1(conv1(x)))``: 1x1 conv to 24 channels, [B, H, W, C] -> [B, H, W, 24]."""
    x = _conv(_STEM_CHANNELS, 1, dtype=dtype, name="conv1")(x)
    return nn.relu(batch_norm(train, dtype=dtype, name="bn1")(x))


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit ("Bottleneck" in CRD): [B, H, W, C] -> [B, H/s, W/s, C_out].

    C_out is ``features`` (stride 1, C == features, identity added) or ``features + C``
    (stride 2, average-pooled input concatenated).
    """

    features: int
    stride: int
    groups: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        mid = self.features // 4
        first_groups = 1 if x.shape[-1] == _STEM_CHANNELS else self.groups
        out = _conv(mid, 1, groups=first_groups, dtype=dt, name="conv1")(x)
        out = nn.relu(batch_norm(train, dtype=dt, name="bn1")(out))
        out = channel_shuffle(out, first_groups)
        out = _conv(mid, 3, self.stride, groups=mid, dtype=dt, name="conv2")(out)
        out = nn.relu(batch_norm(train, dtype=dt, name="bn2")(out))
        out = _conv(self.features, 1, groups=self.groups, dtype=dt, name="conv3")(out)
        out = batch_norm(train, dtype=dt, name="bn3")(out)
        if self.stride == 2:
            # PyTorch AvgPool2d(3, 2, padding=1) counts the zero padding in the divisor.
            res = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                              count_include_pad=True)
            return nn.relu(jnp.concatenate([out, res], axis=-1))
        return nn.relu(out + x)


class ShuffleV1(nn.Module):
    """CIFAR ShuffleNet V1 (CRD): NHWC images [B, H, W, C] -> logits [B, num_classes].

    Attributes:
      num_classes: classifier outputs.
      out_planes, num_blocks, groups: the stage widths, units per stage and group count
        (CRD: 240/480/960, 4/8/4, 3).
      dtype: computation dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 100
    out_planes: Sequence[int] = (240, 480, 960)
    num_blocks: Sequence[int] = (4, 8, 4)
    groups: int = 3
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x)
        x = _stem(x, train, self.dtype)
        in_planes = _STEM_CHANNELS
        for stage, (planes, n) in enumerate(zip(self.out_planes, self.num_blocks)):
            # The first unit concatenates its pooled input, so it produces planes - in_planes.
            blocks = tuple(
                functools.partial(ShuffleV1Unit, features=planes - in_planes if i == 0 else planes,
                                  stride=2 if i == 0 else 1, groups=self.groups, dtype=self.dtype)
                for i in range(n))
            x = Sequential(blocks, name=f"layer{stage + 1}")(x, train)
            in_planes = planes
        return _pool_and_classify(x, self.num_classes, self.dtype)


class ShuffleV2Basic(nn.Module):
    """ShuffleNet V2 basic unit: split, transform the second half, concat, shuffle.

    [B, H, W, C] -> [B, H, W, C]; ``conv*`` work on int(C / 2) channels.
    """

    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = _conv(half, 1, dtype=dt, name="conv1")(x2)
        out = nn.relu(batch_norm(train, dtype=dt, name="bn1")(out))
        out = _conv(half, 3, groups=half, dtype=dt, name="conv2")(out)
        out = batch_norm(train, dtype=dt, name="bn2")(out)
        out = _conv(half, 1, dtype=dt, name="conv3")(out)
        out = nn.relu(batch_norm(train, dtype=dt, name="bn3")(out))
        return channel_shuffle(jnp.concatenate([x1, out], axis=-1), 2)


class ShuffleV2Down(nn.Module):
    """ShuffleNet V2 down-sampling unit: [B, H, W, C] -> [B, H/2, W/2, features].

    Left branch: 3x3 depthwise stride 2 (conv1), 1x1 (conv2). Right branch: 1x1 (conv3), 3x3
    depthwise stride 2 (conv4), 1x1 (conv5). Each branch gives features // 2 channels;
    concatenated (left first) and shuffled.
    """

    features: int
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        c, mid = x.shape[-1], self.features // 2

        def conv_bn(y, features, kernel, stride, groups, index, relu):
            y = _conv(features, kernel, stride, groups, dtype=dt, name=f"conv{index}")(y)
            y = batch_norm(train, dtype=dt, name=f"bn{index}")(y)
            return nn.relu(y) if relu else y

        left = conv_bn(x, c, 3, 2, c, 1, relu=False)
        left = conv_bn(left, mid, 1, 1, 1, 2, relu=True)
        right = conv_bn(x, mid, 1, 1, 1, 3, relu=True)
        right = conv_bn(right, mid, 3, 2, mid, 4, relu=False)
        right = conv_bn(right, mid, 1, 1, 1, 5, relu=True)
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


# net_size -> (stage widths + final conv width, basic units per stage), as in CRD.
SHUFFLE_V2_SIZES = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleV2(nn.Module):
    """CIFAR ShuffleNet V2 (CRD): NHWC images [B, H, W, C] -> logits [B, num_classes].

    Attributes:
      num_classes: classifier outputs.
      net_size: a key of ``SHUFFLE_V2_SIZES`` (the KD literature's "ShuffleV2" is 1).
      dtype: computation dtype; parameters and batch statistics stay float32.
    """

    num_classes: int = 100
    net_size: float = 1
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_images(x)
        if self.net_size not in SHUFFLE_V2_SIZES:
            raise ValueError(f"net_size must be one of {sorted(SHUFFLE_V2_SIZES)}, "
                             f"got {self.net_size!r}")
        widths, num_blocks = SHUFFLE_V2_SIZES[self.net_size]
        dt = self.dtype
        x = _stem(x, train, dt)
        for stage, (width, n) in enumerate(zip(widths, num_blocks)):
            blocks = (functools.partial(ShuffleV2Down, features=width, dtype=dt),) + tuple(
                functools.partial(ShuffleV2Basic, dtype=dt) for _ in range(n))
            x = Sequential(blocks, name=f"layer{stage + 1}")(x, train)
        x = _conv(widths[3], 1, dtype=dt, name="conv2")(x)
        x = nn.relu(batch_norm(train, dtype=dt, name="bn2")(x))
        return _pool_and_classify(x, self.num_classes, dt)


@register("ShuffleV1")
def _shuffle_v1(num_classes: int, **options) -> ShuffleV1:
    return ShuffleV1(num_classes=num_classes, **options)


@register("ShuffleV2")
def _shuffle_v2(num_classes: int, **options) -> ShuffleV2:
    return ShuffleV2(num_classes=num_classes, **options)
