r"""Train a CIFAR-100 teacher from scratch (cross-entropy, 240 epochs, SGD 0.05, x0.1 at 150/180/210).

    python -m zkd.main --config=configs/cifar100_teacher.py:model=resnet32x4

Then distil from it by naming the run's workdir as the teacher checkpoint:
``--config.teacher.checkpoint=workdirs/cifar100/ce/resnet32x4/seed0``.
Reference accuracies of mdistiller's teachers (their ckpt_epoch_240): resnet32x4 79.42,
resnet56 72.34, resnet110 74.31, wrn_40_2 75.61, vgg13 74.64, ResNet50 79.34.
Teachers: resnet32x4, resnet56, resnet110, wrn_40_2, vgg13, ResNet50 (any zkd CIFAR model works).
"""

from zkd import paper
from zkd.config_helpers import base_config_for, parse_arg, shrink_for_local_run
from zkd.config_schema import finalize


def get_config(arg=None):
    a = parse_arg(arg, model="resnet32x4", seed=0, runlocal=False)
    config = cifar_teacher(a.model, a.seed)
    if a.runlocal:
        shrink_for_local_run(config)
    return finalize(config)


def cifar_teacher(model, seed=0):
    """Train a CIFAR-100 teacher from scratch with cross-entropy (also ``zkd.recipes.cifar_teacher``)."""
    c = base_config_for("ce", model, seed=seed)
    c.dataset = "cifar100"
    c.student.zoo = "cifar"
    c.loss.ce_weight = 1.0

    # The students' solver (configs/cifar100.py): SGD, x0.1 at epochs 150, 180 and 210.
    c.num_epochs = 240
    c.batch_size, c.eval_batch_size = 64, 500
    c.optimizer.name, c.optimizer.schedule = "sgd", "piecewise"
    c.optimizer.learning_rate = 0.01 if c.student.name in paper.SMALL_LR_STUDENTS else 0.05
    c.optimizer.momentum, c.optimizer.weight_decay = 0.9, 5e-4
    c.optimizer.lr_milestones, c.optimizer.lr_decay = (150, 180, 210), 0.1
    return c
