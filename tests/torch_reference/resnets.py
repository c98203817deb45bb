"""PyTorch ResNet-family references: CIFAR ResNets (CRD naming), CIFAR ResNet18/50 (CRD's
``resnetv2`` naming: ``shortcut``, ``linear``), torchvision-layout ImageNet ResNets, WRN, VGG-BN.

Written from the papers and torchvision's documented layout; module attribute names follow the
checkpoints the zoo must load. All use global average pooling so any input size works.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv3x3(cin, cout, stride=1, bias=False):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def _projection(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, shortcut_name):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_name = shortcut_name
        proj = _projection(cin, planes, stride) if stride != 1 or cin != planes else None
        setattr(self, shortcut_name, proj)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        proj = getattr(self, self.shortcut_name)
        return torch.relu(y + (x if proj is None else proj(x)))


class Bottle(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, shortcut_name):
        super().__init__()
        out = 4 * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut_name = shortcut_name
        proj = _projection(cin, out, stride) if stride != 1 or cin != out else None
        setattr(self, shortcut_name, proj)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        proj = getattr(self, self.shortcut_name)
        return torch.relu(y + (x if proj is None else proj(x)))


def _stage(block, cin, planes, blocks, stride, shortcut_name):
    layers = []
    for i in range(blocks):
        layers.append(block(cin, planes, stride if i == 0 else 1, shortcut_name))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet, depth 6n+2, widths (stem, s1, s2, s3)."""

    def __init__(self, depth, widths, num_classes, in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        self.layer1, cin = _stage(Basic, cin, widths[1], n, 1, "downsample")
        self.layer2, cin = _stage(Basic, cin, widths[2], n, 2, "downsample")
        self.layer3, cin = _stage(Basic, cin, widths[3], n, 2, "downsample")
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


CIFAR_RESNETS = {
    "resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)), "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)), "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def cifar_resnet(name, num_classes, in_channels=3):
    depth, widths = CIFAR_RESNETS[name]
    return CifarResNet(depth, widths, num_classes, in_channels)


class FourStageResNet(nn.Module):
    """Four-stage ResNet (64, 128, 256, 512). ``imagenet=True``: torchvision layout (7x7/2 stem,
    3x3/2 max-pool, ``downsample``, ``fc``); else CRD's CIFAR variant (3x3/1 stem, no max-pool,
    ``shortcut``, ``linear``)."""

    def __init__(self, block, blocks, num_classes, imagenet, in_channels=3):
        super().__init__()
        self.imagenet = imagenet
        if imagenet:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        name = "downsample" if imagenet else "shortcut"
        cin = 64
        self.layer1, cin = _stage(block, cin, 64, blocks[0], 1, name)
        self.layer2, cin = _stage(block, cin, 128, blocks[1], 2, name)
        self.layer3, cin = _stage(block, cin, 256, blocks[2], 2, name)
        self.layer4, cin = _stage(block, cin, 512, blocks[3], 2, name)
        head = nn.Linear(cin, num_classes)
        if imagenet:
            self.fc = head
        else:
            self.linear = head

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if self.imagenet:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=(2, 3))
        return self.fc(x) if self.imagenet else self.linear(x)


FOUR_STAGE = {
    "ResNet18": (Basic, (2, 2, 2, 2)),
    "ResNet34": (Basic, (3, 4, 6, 3)),
    "ResNet50": (Bottle, (3, 4, 6, 3)),
}


def four_stage_resnet(name, num_classes, imagenet, in_channels=3):
    block, blocks = FOUR_STAGE[name]
    return FourStageResNet(block, blocks, num_classes, imagenet, in_channels)
