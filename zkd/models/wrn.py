"""Wide ResNets of CRD / mdistiller (Zagoruyko & Komodakis 2016): wrn_16_1, wrn_16_2, wrn_40_1,
wrn_40_2 (``wrn_<depth>_<widen>``).

A 3x3 stem conv (16 channels), three groups of ``n = (depth - 4) / 6`` pre-activation blocks of
widths (16k, 32k, 64k) (the second and third halve the resolution), a final BN + ReLU, global
average pooling and a linear classifier. Pre-activation block: BN-ReLU, 3x3 conv (stride),
BN-ReLU, 3x3 conv. When the width changes, the shortcut is a 1x1 conv (``convShortcut``) applied
to the *pre-activated* input; otherwise it is the raw input. No dropout (CRD uses dropRate 0).

PyTorch names: ``conv1``, ``block1..3.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``,
``fc``. ``[B, H, W, C] -> [B, num_classes]`` float32 logits.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn

from zkd.models import register
from zkd.models.layers import Stage, batch_norm, classifier_output, conv, dense, global_avg_pool


class PreActBlock(nn.Module):
    """``[B, H, W, Cin] -> [B, H/stride, W/stride, features]``."""

    features: int
    stride: int = 1
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool):
        equal_in_out = x.shape[-1] == self.features
        pre = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        out = conv(self.features, 3, self.stride, 1, dtype=self.dtype, name="conv1")(pre)
        out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
        out = conv(self.features, 3, 1, 1, dtype=self.dtype, name="conv2")(out)
        if equal_in_out:
            if self.stride != 1:
                raise ValueError("a WRN block that keeps the width cannot have a stride")
            return x + out
        shortcut = conv(self.features, 1, self.stride, 0, dtype=self.dtype, name="convShortcut")
        return shortcut(pre) + out


class NetworkBlock(nn.Module):
    """CRD's ``NetworkBlock``: its blocks sit in ``self.layer = nn.Sequential(...)``."""

    features: int
    num_blocks: int
    stride: int
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool):
        return Stage(PreActBlock, self.features, self.num_blocks, self.stride, self.dtype,
                     name="layer")(x, train)


class WideResNet(nn.Module):
    """``depth`` in 6n + 4, widen factor ``widen``."""

    depth: int
    widen: int
    num_classes: int = 100
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {self.depth}")
        n = (self.depth - 4) // 6
        x = conv(16, 3, 1, 1, dtype=self.dtype, name="conv1")(x)
        for group, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            x = NetworkBlock(width * self.widen, n, stride, self.dtype, name=f"block{group}")(x, train)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        x = global_avg_pool(x)
        return classifier_output(
            dense(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc", zero_bias=True)(x))


def _factory(depth: int, widen: int):
    def build(num_classes: int, dtype=None) -> WideResNet:
        return WideResNet(depth=depth, widen=widen, num_classes=num_classes, dtype=dtype)
    return build


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register(f"wrn_{_depth}_{_widen}")(_factory(_depth, _widen))
