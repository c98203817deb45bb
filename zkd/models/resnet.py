"""Four-stage ResNets (He et al. 2016): CRD's CIFAR ResNet18 / ResNet50 registered here, and the
torchvision-layout ImageNet variants (``zkd.models.imagenet_resnet``) built from the same module.

Stages of widths (64, 128, 256, 512) x expansion, the last three halving the resolution, global
average pooling and a linear classifier. Two stems:

- CIFAR (``imagenet=False``): 3x3 stride-1 conv, no max-pool; projection shortcuts are called
  ``shortcut`` and the head ``linear`` (CRD's ``resnetv2``).
- ImageNet (``imagenet=True``): 7x7 stride-2 conv + 3x3 stride-2 max-pool; ``downsample`` and
  ``fc`` (torchvision).

PyTorch names: ``conv1``, ``bn1``, ``layer1..4.<i>.{conv1,bn1,conv2,bn2[,conv3,bn3],<shortcut>.0,
<shortcut>.1}``, ``linear`` / ``fc``. ``[B, H, W, C] -> [B, num_classes]`` float32 logits.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn

from zkd.models import register
from zkd.models.layers import (BasicBlock, Bottleneck, Stage, batch_norm, classifier_output,
                               conv, dense, global_avg_pool)

STAGES = {
    "ResNet18": (BasicBlock, (2, 2, 2, 2)),
    "ResNet34": (BasicBlock, (3, 4, 6, 3)),
    "ResNet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    block: Any
    num_blocks: Sequence[int]
    num_classes: int = 100
    imagenet: bool = False
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.imagenet:
            x = conv(64, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
        else:
            x = conv(64, 3, 1, 1, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        if self.imagenet:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        shortcut_name = "downsample" if self.imagenet else "shortcut"
        for stage, (planes, blocks, stride) in enumerate(
                zip((64, 128, 256, 512), self.num_blocks, (1, 2, 2, 2)), start=1):
            x = Stage(self.block, planes, blocks, stride, self.dtype,
                      (("shortcut_name", shortcut_name),), name=f"layer{stage}")(x, train)
        x = global_avg_pool(x)
        head = dense(self.num_classes, x.shape[-1], dtype=self.dtype,
                     name="fc" if self.imagenet else "linear")
        return classifier_output(head(x))


def resnet_factory(name: str, imagenet: bool):
    block, num_blocks = STAGES[name]

    def build(num_classes: int, dtype=None) -> ResNet:
        return ResNet(block=block, num_blocks=num_blocks, num_classes=num_classes,
                      imagenet=imagenet, dtype=dtype)
    return build


for _name in ("ResNet18", "ResNet50"):
    register(_name, zoo="cifar")(resnet_factory(_name, imagenet=False))
