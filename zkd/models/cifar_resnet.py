"""CIFAR ResNets of CRD / mdistiller (He et al. 2016, Sec. 4.2): resnet8 ... resnet110, resnet8x4,
resnet32x4.

A 3x3 stem conv, three stages of ``n = (depth - 2) / 6`` post-activation basic blocks (the
second and third halve the resolution), global average pooling and a linear classifier.
Widths: stem 16 and stages (16, 32, 64); the "x4" variants use stem 32 and stages
(64, 128, 256). Projection shortcuts (1x1 conv + BN, PyTorch name ``downsample``) wherever the
stride or width changes. PyTorch names: ``conv1``, ``bn1``, ``layer1..3.<i>.{conv1,bn1,conv2,
bn2,downsample.0,downsample.1}``, ``fc``.

The reference pools with a fixed 8x8 window, which equals global average pooling on 32x32
inputs; global pooling lets other sizes (28x28 Fashion-MNIST) through.
``[B, H, W, C] -> [B, num_classes]`` float32 logits.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn

from zkd.models import register
from zkd.models.layers import (BasicBlock, Stage, batch_norm, classifier_output, conv,
                               dense, global_avg_pool)


class CifarResNet(nn.Module):
    """``depth`` in 6n + 2; ``widths`` = (stem, stage1, stage2, stage3)."""

    depth: int
    widths: Sequence[int]
    num_classes: int = 100
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        n = (self.depth - 2) // 6
        x = conv(self.widths[0], 3, 1, 1, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for stage, (planes, stride) in enumerate(zip(self.widths[1:], (1, 2, 2)), start=1):
            x = Stage(BasicBlock, planes, n, stride, self.dtype, name=f"layer{stage}")(x, train)
        x = global_avg_pool(x)
        return classifier_output(
            dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
_CONFIGS = {
    "resnet8": (8, _SMALL), "resnet14": (14, _SMALL), "resnet20": (20, _SMALL),
    "resnet32": (32, _SMALL), "resnet44": (44, _SMALL), "resnet56": (56, _SMALL),
    "resnet110": (110, _SMALL), "resnet8x4": (8, _X4), "resnet32x4": (32, _X4),
}


def _factory(depth: int, widths: Sequence[int]):
    def build(num_classes: int, dtype=None) -> CifarResNet:
        return CifarResNet(depth=depth, widths=tuple(widths), num_classes=num_classes, dtype=dtype)
    return build


for _name, (_depth, _widths) in _CONFIGS.items():
    register(_name)(_factory(_depth, _widths))
