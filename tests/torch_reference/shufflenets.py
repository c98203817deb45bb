"""PyTorch CIFAR ShuffleNets written for the tests, from the papers, with the KD literature's
(CRD) attribute names.

- ShuffleNet V1 (Zhang et al. 2018), groups 3: stage widths 240/480/960 with 4/8/4 units; a unit
  is grouped 1x1 -> channel shuffle -> 3x3 depthwise -> grouped 1x1; stride-2 units concatenate
  a 3x3 average pool of their input (Fig. 2c), others add it (Fig. 2b). The first pointwise conv
  after the 24-channel stem is ungrouped (Sec. 3.3).
- ShuffleNet V2 (Ma et al. 2018), 1x: widths 116/232/464, 3/7/3 basic units after a
  down-sampling unit per stage (Fig. 3c, 3d), then a 1x1 conv to 1024.

Both use a 1x1 stride-1 stem to 24 channels (CIFAR adaptation) and pool globally.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle of an NCHW tensor (Zhang et al., Sec. 3.1): regroup channels as
    (groups, C / groups), transpose, flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def pool_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    return linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class V1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.stride == 1:
            return F.relu(y + x)
        pooled = F.avg_pool2d(x, 3, 2, 1)  # count_include_pad=True, PyTorch's default
        return F.relu(torch.cat([y, pooled], 1))


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(240, 480, 960),
                 units=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for k, (width, n) in enumerate(zip(widths, units), start=1):
            # The stride-2 unit concatenates its c pooled input channels.
            stage = [V1Unit(c, width - c, 2, groups)] + [V1Unit(width, width, 1, groups)
                                                         for _ in range(n - 1)]
            setattr(self, f"layer{k}", nn.Sequential(*stage))
            c = width
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return pool_linear(x, self.linear)


class V2Basic(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.conv1 = nn.Conv2d(h, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.conv2 = nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.conv3 = nn.Conv2d(h, h, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(h)

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        work = F.relu(self.bn1(self.conv1(work)))
        work = self.bn2(self.conv2(work))
        work = F.relu(self.bn3(self.conv3(work)))
        return shuffle(torch.cat([keep, work], 1), 2)


class V2Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        h = cout // 2
        # left branch: depthwise stride 2, pointwise
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, h, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        # right branch: pointwise, depthwise stride 2, pointwise
        self.conv3 = nn.Conv2d(cin, h, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(h)
        self.conv4 = nn.Conv2d(h, h, 3, 2, 1, groups=h, bias=False)
        self.bn4 = nn.BatchNorm2d(h)
        self.conv5 = nn.Conv2d(h, h, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(h)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(116, 232, 464, 1024),
                 units=(3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        c = 24
        for k, (width, n) in enumerate(zip(widths, units), start=1):
            setattr(self, f"layer{k}",
                    nn.Sequential(V2Down(c, width), *[V2Basic(width) for _ in range(n)]))
            c = width
        self.conv2 = nn.Conv2d(c, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return pool_linear(x, self.linear)


def shuffle_v1(num_classes: int, in_channels: int = 3) -> nn.Module:
    return ShuffleNetV1(num_classes, in_channels)


def shuffle_v2(num_classes: int, in_channels: int = 3) -> nn.Module:
    return ShuffleNetV2(num_classes, in_channels)
