r"""CIFAR-100 distillation, every row of the paper's Tables 1 and 2 (docs/paper.md §6).

    python -m zkd.main --config=configs/cifar100.py:method=kd,teacher=resnet32x4,student=resnet8x4,ls=1 \
        --config.teacher.checkpoint=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth

Arguments (after ':'): method = kd | dkd | mlkd | ctkd; teacher, student = zkd names or the
paper's aliases (R32x4, R8x4, VGG13, WRN-40-2, MN-V2, ...); ls = 0/1; seed; teacher_checkpoint;
runlocal = 1 for a few tiny steps. Per-pair temperatures, weights and DKD betas come from the
released logs (zkd.recipes.LS_SETTINGS). The teacher checkpoint may be an official mdistiller
``.pth``, a directory written by ``python -m zkd.convert``, or the workdir of a zkd teacher run.

Expected top-1 (paper, best epoch, mean of 4 runs), e.g. resnet32x4 -> resnet8x4:
KD 73.33 -> 76.62 with LS; CTKD 73.39 -> 76.67; DKD 76.32 -> 77.01; MLKD 77.08 -> 78.28.
The config's ``paper_top1`` carries the row's published numbers.
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(
        arg, method="kd", teacher="resnet32x4", student="resnet8x4", ls=False, seed=0,
        teacher_checkpoint="", runlocal=False,
    )
    config = recipes.cifar_distillation(a.method, a.teacher, a.student, a.ls, a.seed, a.teacher_checkpoint)
    if a.runlocal:
        recipes.shrink_for_local_run(config)
    return recipes.finalize(config)
