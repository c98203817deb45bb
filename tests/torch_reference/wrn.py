"""PyTorch Wide ResNet (Zagoruyko & Komodakis 2016) with CRD's attribute names, written for the
tests: pre-activation blocks, 1x1 ``convShortcut`` on the pre-activated input when the width
changes, groups ``block1..3`` each holding ``layer = nn.Sequential(...)``."""

from __future__ import annotations

import torch
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return y + (x if self.convShortcut is None else self.convShortcut(pre))


class Group(nn.Module):
    def __init__(self, cin, cout, n, stride):
        super().__init__()
        self.layer = nn.Sequential(*[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth, widen, num_classes, in_channels=3):
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.block1 = Group(w[0], w[1], n, 1)
        self.block2 = Group(w[1], w[2], n, 2)
        self.block3 = Group(w[2], w[3], n, 2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(torch.relu(self.bn1(x)).mean(dim=(2, 3)))


def wrn(name, num_classes, in_channels=3):
    _, depth, widen = name.split("_")
    return WideResNet(int(depth), int(widen), num_classes, in_channels)
