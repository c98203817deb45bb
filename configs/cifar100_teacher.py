r"""Train a CIFAR-100 teacher from scratch (cross-entropy, 240 epochs, SGD 0.05, x0.1 at 150/180/210).

    python -m zkd.main --config=configs/cifar100_teacher.py:model=resnet32x4

Then distil from it by naming the run's workdir as the teacher checkpoint:
``--config.teacher.checkpoint=workdirs/cifar100/ce/resnet32x4/seed0``.
Reference accuracies of mdistiller's teachers (their ckpt_epoch_240): resnet32x4 79.42,
resnet56 72.34, resnet110 74.31, wrn_40_2 75.61, vgg13 74.64, ResNet50 79.34.
Teachers: resnet32x4, resnet56, resnet110, wrn_40_2, vgg13, ResNet50 (any zkd CIFAR model works).
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(arg, model="resnet32x4", seed=0, runlocal=False)
    config = recipes.cifar_teacher(a.model, a.seed)
    if a.runlocal:
        recipes.shrink_for_local_run(config)
    return recipes.finalize(config)
