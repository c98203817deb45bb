r"""ImageNet KD: ResNet34 -> ResNet18 and ResNet50 -> MobileNetV1 (docs/paper.md §4, §6).

    python -m zkd.main --config=configs/imagenet.py:teacher=ResNet34,student=ResNet18,ls=1 \
        --config.teacher.checkpoint=resnet34-b627a593.pth --config.data_dir=/data/tfds

Batch 512, 100 epochs, SGD lr 0.2 (x0.1 at 30/60/90), weight decay 1e-4. Baseline KD: T 1,
CE 1.0 (R34->R18) or 0.5 (R50->MN-V1), KD 0.5; with LS: T 2, KD 9. The teacher is torchvision's
pretrained weights (a plain state dict .pth, converted on the fly). ImageNet must be prepared
through TFDS's manual-download flow (python -m zkd.data.prepare --dataset imagenet2012 ...).

Expected top-1 (paper): R34->R18 71.03 -> 71.42 with LS; R50->MN-V1 70.50 -> 72.18.
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(
        arg, teacher="ResNet34", student="ResNet18", ls=False, seed=0, teacher_checkpoint="", runlocal=False
    )
    config = recipes.imagenet_distillation(a.teacher, a.student, a.ls, a.seed, a.teacher_checkpoint)
    if a.runlocal:
        recipes.shrink_for_local_run(config)
    return recipes.finalize(config)
