"""ImageNet ResNet18 / ResNet34 / ResNet50 in torchvision's layout (7x7/2 stem, 3x3/2 max-pool,
``downsample`` shortcuts, ``fc`` head; ResNet50's stride sits on the 3x3 conv, "v1.5"), so
torchvision's pretrained state dicts load by name. Parameter counts at 1000 classes equal
torchvision's: 11,689,512 / 21,797,672 / 25,557,032. The module is ``zkd.models.resnet.ResNet``.
``[B, H, W, C] -> [B, num_classes]`` float32 logits.
"""

from zkd.models import register
from zkd.models.resnet import resnet_factory

for _name in ("ResNet18", "ResNet34", "ResNet50"):
    register(_name, zoo="imagenet")(resnet_factory(_name, imagenet=True))
