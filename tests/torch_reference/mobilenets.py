"""PyTorch MobileNets written for the tests, from the papers and torchvision's documented layout.

- ``cifar_mobilenet_v2``: MobileNetV2 (Sandler et al. 2018) as the KD literature runs it on
  CIFAR (width 0.5, stride-2 stem, stage strides 1,1,2,2,1,2,1, an expansion conv in every block,
  1x1 conv to 1280, pooled, ``classifier.0``); attribute names ``conv1``, ``blocks.<s>.<b>.conv.<i>``,
  ``conv2``, ``classifier``.
- ``imagenet_mobilenet_v1``: MobileNetV1 (Howard et al. 2017), width 1.0, ``model.<i>`` and ``fc``.
- ``torchvision_mobilenet_v2``: torchvision's ``features.<i>`` / ``classifier.1`` layout
  (ReLU6, no expansion conv when t = 1, channels rounded to multiples of 8).

All pool globally (``adaptive_avg_pool2d``), which is what the originals' fixed pooling windows do
at their native input sizes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    """[Conv2d (no bias, padding kernel // 2), BatchNorm2d, optional activation]."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


class PooledClassifierNet(nn.Module):
    """Base: ``body`` features -> global average pool -> ``head``."""

    def body(self, x):
        raise NotImplementedError

    def head(self, x):
        raise NotImplementedError

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


# ---------------------------------------------------------------- CIFAR MobileNetV2 (width 0.5)

class ExpandBlock(nn.Module):
    """Inverted residual with the expansion conv always present (CRD's variant)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        mid = cin * t
        self.conv = nn.Sequential(*conv_bn_act(cin, mid, 1), *conv_bn_act(mid, mid, 3, stride, mid),
                                  *conv_bn_act(mid, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class CifarMobileNetV2(PooledClassifierNet):
    # (t, c, n, s); t None means the network's expansion T.
    STAGES = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
              (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]

    def __init__(self, num_classes: int, width: float = 0.5, T: int = 6, in_channels: int = 3):
        super().__init__()
        c = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn_act(in_channels, c, 3, 2))
        stages = []
        for t, ch, n, s in self.STAGES:
            cout = int(ch * width)
            blocks = []
            for i in range(n):
                blocks.append(ExpandBlock(c, cout, s if i == 0 else 1, T if t is None else t))
                c = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        self.conv2 = nn.Sequential(*conv_bn_act(c, 1280, 1))
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def body(self, x):
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)

    def head(self, x):
        return self.classifier(x)


def cifar_mobilenet_v2(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarMobileNetV2(num_classes, in_channels=in_channels)


# ---------------------------------------------------------------- ImageNet MobileNetV1

# Table 1 of Howard et al.: (output channels, stride) of the depthwise-separable layers.
V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
    (1024, 2), (1024, 1)]


class MobileNetV1(PooledClassifierNet):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        seq = [nn.Sequential(*conv_bn_act(in_channels, 32, 3, 2))]
        c = 32
        for cout, s in V1_LAYERS:
            seq.append(nn.Sequential(*conv_bn_act(c, c, 3, s, groups=c), *conv_bn_act(c, cout, 1)))
            c = cout
        self.model = nn.Sequential(*seq)
        self.fc = nn.Linear(1024, num_classes)

    def body(self, x):
        return self.model(x)

    def head(self, x):
        return self.fc(x)


def imagenet_mobilenet_v1(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return MobileNetV1(num_classes, in_channels)


# ---------------------------------------------------------------- torchvision MobileNetV2

def round8(v: float) -> int:
    """Round to a multiple of 8, not going below 90% of ``v`` (torchvision's rule)."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


class TVBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        mid = int(round(cin * t))
        parts = [] if t == 1 else [nn.Sequential(*conv_bn_act(cin, mid, 1, act=nn.ReLU6))]
        parts.append(nn.Sequential(*conv_bn_act(mid, mid, 3, stride, mid, act=nn.ReLU6)))
        parts += conv_bn_act(mid, cout, 1, act=None)
        self.conv = nn.Sequential(*parts)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchvisionMobileNetV2(PooledClassifierNet):
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        c = round8(32)
        feats = [nn.Sequential(*conv_bn_act(in_channels, c, 3, 2, act=nn.ReLU6))]
        for t, ch, n, s in self.SETTING:
            for i in range(n):
                feats.append(TVBlock(c, round8(ch), s if i == 0 else 1, t))
                c = round8(ch)
        feats.append(nn.Sequential(*conv_bn_act(c, 1280, 1, act=nn.ReLU6)))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def body(self, x):
        return self.features(x)

    def head(self, x):
        return self.classifier(x)


def torchvision_mobilenet_v2(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return TorchvisionMobileNetV2(num_classes, in_channels)
