"""VGG with BatchNorm, the CIFAR variant of CRD / mdistiller (Simonyan & Zisserman 2015):
vgg8, vgg11, vgg13, vgg16, vgg19.

Five blocks of 3x3 conv (with bias) + BN + ReLU; 2x2 max-pooling after blocks 0, 1, 2 (and after
block 3 only for 64-pixel-high inputs, as in the reference); global average pooling and one
linear classifier on 512 features. Block widths per stage:

    vgg8  (64) (128) (256) (512) (512)        vgg11 (64) (128) (256 x2) (512 x2) (512 x2)
    vgg13 (64 x2) (128 x2) (256 x2) (512 x2) (512 x2)
    vgg16 (64 x2) (128 x2) (256 x3) (512 x3) (512 x3)
    vgg19 (64 x2) (128 x2) (256 x4) (512 x4) (512 x4)

PyTorch names: ``block0..4`` are ``nn.Sequential(conv, bn, relu, conv, bn, ...)`` without the
last ReLU (applied outside), so conv ``k`` of a block is child ``3k`` and its BN ``3k + 1``;
the head is ``classifier``. ``[B, H, W, C] -> [B, num_classes]`` float32 logits.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn

from zkd.models import register
from zkd.models.layers import batch_norm, classifier_output, conv, dense, global_avg_pool

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGGBlock(nn.Module):
    """Conv-BN-ReLU layers, conv ``k`` named ``str(3k)``, its BN ``str(3k + 1)``.
    ``[B, H, W, Cin] -> [B, H, W, widths[-1]]``."""

    widths: Sequence[int]
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool):
        for k, width in enumerate(self.widths):
            x = conv(width, 3, 1, 1, use_bias=True, dtype=self.dtype, name=str(3 * k))(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=str(3 * k + 1))(x))
        return x


def _max_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(nn.Module):
    config: Sequence[Sequence[int]]
    num_classes: int = 100
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool_after_block3 = x.shape[1] == 64
        for i, widths in enumerate(self.config):
            x = VGGBlock(tuple(widths), self.dtype, name=f"block{i}")(x, train)
            if i < 3 or (i == 3 and pool_after_block3):
                x = _max_pool(x)
        x = global_avg_pool(x)
        head = dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="classifier",
                     weight_std=0.01, zero_bias=True)
        return classifier_output(head(x))


def _factory(config):
    def build(num_classes: int, dtype=None) -> VGG:
        return VGG(config=config, num_classes=num_classes, dtype=dtype)
    return build


for _name, _config in CONFIGS.items():
    register(_name)(_factory(_config))
