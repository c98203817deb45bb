"""PyTorch VGG-BN, CIFAR variant as used by CRD, written for the tests: five blocks of
conv(bias)-BN-ReLU, each an ``nn.Sequential`` without its last ReLU (applied in forward),
max-pool after blocks 0-2 (and 3 for 64-pixel inputs), global average pool, ``classifier``."""

from __future__ import annotations

import torch
from torch import nn

CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths, cin):
    layers = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, config, num_classes, in_channels=3):
        super().__init__()
        cins = [in_channels] + [c[-1] for c in config[:-1]]
        for i, (widths, cin) in enumerate(zip(config, cins)):
            setattr(self, f"block{i}", _block(widths, cin))
        self.classifier = nn.Linear(config[-1][-1], num_classes)

    def forward(self, x):
        pool3 = x.shape[2] == 64
        for i in range(5):
            x = torch.relu(getattr(self, f"block{i}")(x))
            if i < 3 or (i == 3 and pool3):
                x = nn.functional.max_pool2d(x, 2, 2)
        return self.classifier(x.mean(dim=(2, 3)))


def vgg(name, num_classes, in_channels=3):
    return VGG(CONFIGS[name], num_classes, in_channels)
