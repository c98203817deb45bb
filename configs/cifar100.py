r"""CIFAR-100 distillation, every row of the paper's Tables 1 and 2 (docs/paper.md §6).

    python -m zkd.main --config=configs/cifar100.py:method=kd,teacher=resnet32x4,student=resnet8x4,ls=1 \
        --config.teacher.checkpoint=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth

Arguments (after ':'): method = kd | dkd | mlkd | ctkd (the paper's), or a method of your own (a
registered name or package.module:Class: this solver, its own default loss); teacher, student = zkd
names or the paper's aliases (R32x4, R8x4, VGG13, WRN-40-2, MN-V2, ...); ls = 0/1; seed;
teacher_checkpoint; runlocal = 1 for a few tiny steps. Per-pair temperatures, weights and DKD betas
come from the released logs (zkd.paper.LS_SETTINGS). The teacher checkpoint may be an official
mdistiller ``.pth``, a directory written by ``python -m zkd.convert``, or the workdir of a zkd
teacher run.

Expected top-1 (paper, best epoch, mean of 4 runs), e.g. resnet32x4 -> resnet8x4:
KD 73.33 -> 76.62 with LS; CTKD 73.39 -> 76.67; DKD 76.32 -> 77.01; MLKD 77.08 -> 78.28.
The config's ``paper_top1`` carries the row's published numbers.
"""

from zkd import paper
from zkd.config_helpers import base_config_for, parse_arg, shrink_for_local_run
from zkd.config_schema import finalize


def get_config(arg=None):
    a = parse_arg(
        arg, method="kd", teacher="resnet32x4", student="resnet8x4", ls=False, seed=0,
        teacher_checkpoint="", runlocal=False,
    )
    config = cifar_distillation(a.method, a.teacher, a.student, a.ls, a.seed, a.teacher_checkpoint)
    if a.runlocal:
        shrink_for_local_run(config)
    return finalize(config)


def cifar_distillation(method, teacher, student, logit_stand, seed=0, teacher_checkpoint=""):
    """The paper's CIFAR-100 recipe for ``method`` on (teacher, student), with or without LS
    (also ``zkd.recipes.cifar_distillation``)."""
    c = base_config_for(method, student, teacher, logit_stand, seed, teacher_checkpoint)
    teacher, student = c.teacher.name, c.student.name  # the paper's aliases resolved
    c.dataset = "cifar100"
    c.student.zoo = c.teacher.zoo = "cifar"

    # mdistiller's solver: SGD, x0.1 at epochs 150, 180 and 210.
    c.num_epochs = paper.cifar_epochs(method, teacher, student, default=240)  # MLKD's release: 480 or 960
    c.batch_size, c.eval_batch_size = 64, 500
    c.optimizer.name, c.optimizer.schedule = "sgd", "piecewise"
    c.optimizer.learning_rate = 0.01 if student in paper.SMALL_LR_STUDENTS else 0.05
    c.optimizer.momentum, c.optimizer.weight_decay = 0.9, 5e-4
    c.optimizer.lr_milestones, c.optimizer.lr_decay = (150, 180, 210), 0.1

    # The row's loss (zkd.paper.CIFAR_BASELINE, with LS the pair's LS_SETTINGS) and published top-1.
    c.loss.update(paper.cifar_loss(method, teacher, student, logit_stand))
    c.paper_top1.update(paper.published_top1(method, teacher, student))
    return c
