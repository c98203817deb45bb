"""The paper's tables as data: its pairs, the per-pair settings of the released logs, the published
top-1 and the per-method loss of each row (docs/paper.md §3-4, §6, §8).

The config files (configs/*.py) write their solver themselves and read only these per-row numbers;
``cifar_loss`` and ``imagenet_loss`` apply the tables the same way for every method, and a method
without a row (one of your own) gets {}: the config schema's defaults, which are its own.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Paper / official names -> zkd model names.
ALIASES = {
    "R32x4": "resnet32x4", "R8x4": "resnet8x4", "R56": "resnet56", "R20": "resnet20",
    "R110": "resnet110", "R32": "resnet32", "VGG13": "vgg13", "VGG8": "vgg8",
    "WRN-40-2": "wrn_40_2", "WRN-40-1": "wrn_40_1", "WRN-16-2": "wrn_16_2",
    "ShuffleV1": "ShuffleV1", "ShuffleV2": "ShuffleV2", "MN-V2": "MobileNetV2", "R50": "ResNet50",
    "R34": "ResNet34", "R18": "ResNet18", "MN-V1": "MobileNetV1",
}
# mdistiller trains these students at lr 0.01 instead of 0.05.
SMALL_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")

# CIFAR-100 pairs: same architecture family (paper Table 2), then different families (paper Table 1);
# docs/paper.md §CIFAR-100.
CIFAR_PAIRS = (
    ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2"),
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet110", "resnet20"),
    ("resnet32x4", "ShuffleV2"), ("resnet32x4", "wrn_16_2"), ("resnet32x4", "wrn_40_2"),
    ("wrn_40_2", "resnet8x4"), ("wrn_40_2", "MobileNetV2"), ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
)
CIFAR_TEACHERS = tuple(sorted({t for t, _ in CIFAR_PAIRS}))
IMAGENET_PAIRS = (("ResNet34", "ResNet18"), ("ResNet50", "MobileNetV1"))
METHODS = ("kd", "dkd", "mlkd", "ctkd")  # the paper's methods: every one has a row on every pair

# The baselines' CIFAR-100 loss per method (mdistiller's and the release's configs; docs/paper.md §4).
CIFAR_BASELINE = {
    "kd": {"ce_weight": 0.1, "temperature": 4.0, "kd_weight": 0.9},
    "ctkd": {"ce_weight": 0.1, "kd_weight": 0.9},  # CTKD learns its temperature
    "dkd": {"ce_weight": 1.0, "temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0},
    "mlkd": {"ce_weight": 1.0, "temperature": 4.0, "kd_weight": 1.0},
}
# DKD's per-pair beta of the baseline (Zhao et al.); CIFAR_BASELINE's 8 elsewhere.
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
}
# Where a CIFAR-100 baseline row departs from its method's: {(method, teacher, student): loss fields}.
CIFAR_PAIR_BASELINE = {("dkd", *pair): {"dkd_beta": beta} for pair, beta in DKD_BETA.items()}
# MLKD's release trains longer than the other methods: {method: epochs}, {(method, teacher, student): epochs}.
METHOD_EPOCHS = {"mlkd": 480}
PAIR_EPOCHS = {("mlkd", "resnet32x4", "ShuffleV1"): 960, ("mlkd", "resnet32x4", "ShuffleV2"): 960}

# (base temperature, KD weight[, DKD beta]) of the released logs with LS (docs/paper.md §6).
LS_SETTINGS = {
    "kd": {
        ("vgg13", "vgg8"): (3, 9), ("resnet110", "resnet20"): (4, 12), ("resnet32x4", "wrn_16_2"): (3, 9),
        ("resnet32x4", "wrn_40_2"): (3, 9), ("wrn_40_2", "MobileNetV2"): (3, 9),
        ("vgg13", "MobileNetV2"): (3, 9), ("ResNet50", "MobileNetV2"): (3, 1),
    },
    "dkd": {
        ("vgg13", "vgg8"): (2, 15, 2), ("wrn_40_2", "wrn_40_1"): (2, 12, 2), ("wrn_40_2", "wrn_16_2"): (2, 12, 2),
        ("resnet56", "resnet20"): (3, 18, 2), ("resnet110", "resnet32"): (2, 15, 2),
        ("resnet110", "resnet20"): (2, 15, 2), ("resnet32x4", "wrn_16_2"): (2, 9, 2),
        ("resnet32x4", "wrn_40_2"): (2, 9, 8), ("wrn_40_2", "resnet8x4"): (2, 18, 2),
        ("wrn_40_2", "MobileNetV2"): (2, 15, 2), ("vgg13", "MobileNetV2"): (3, 9, 2),
        ("ResNet50", "MobileNetV2"): (2, 15, 2),
    },
    "mlkd": {("vgg13", "vgg8"): (2, 6), ("resnet32x4", "ShuffleV2"): (2, 6), ("vgg13", "MobileNetV2"): (2, 6)},
    "ctkd": {},
}
LS_DEFAULT = (2, 9)  # the authors' default where no log is released
# What LS changes in each method's loss: "T" and "w" take the setting's base temperature and weight;
# "w*" multiplies the baseline's value by w (DKD's alpha and beta absorb the weight; docs/paper.md §6).
LS_FIELDS = {
    "kd": {"temperature": "T", "kd_weight": "w"},
    "ctkd": {"kd_weight": "w"},  # CTKD learns its temperature (docs/paper.md §3)
    "dkd": {"temperature": "T", "dkd_alpha": "w*", "dkd_beta": "w*"},
    "mlkd": {"temperature": "T", "kd_weight": "w"},
}

# Published top-1 (%), (baseline, +LS); docs/paper.md §6.
PAPER_TOP1 = {
    ("kd", "resnet32x4", "resnet8x4"): (73.33, 76.62), ("ctkd", "resnet32x4", "resnet8x4"): (73.39, 76.67),
    ("dkd", "resnet32x4", "resnet8x4"): (76.32, 77.01), ("mlkd", "resnet32x4", "resnet8x4"): (77.08, 78.28),
    ("kd", "vgg13", "vgg8"): (72.98, 74.36), ("kd", "wrn_40_2", "wrn_40_1"): (73.54, 74.37),
    ("kd", "wrn_40_2", "wrn_16_2"): (74.92, 76.11), ("kd", "resnet56", "resnet20"): (70.66, 71.43),
    ("kd", "resnet110", "resnet32"): (73.08, 74.17), ("kd", "resnet110", "resnet20"): (70.67, 71.48),
    ("kd", "resnet32x4", "ShuffleV2"): (74.45, 75.56), ("kd", "resnet32x4", "wrn_16_2"): (74.90, 75.26),
    ("kd", "resnet32x4", "wrn_40_2"): (77.70, 77.92), ("kd", "wrn_40_2", "resnet8x4"): (73.97, 77.11),
    ("kd", "wrn_40_2", "MobileNetV2"): (68.36, 69.23), ("kd", "vgg13", "MobileNetV2"): (67.37, 68.61),
    ("kd", "ResNet50", "MobileNetV2"): (67.35, 69.02),
    # ImageNet, paper Table 3.
    ("kd", "ResNet34", "ResNet18"): (71.03, 71.42), ("kd", "ResNet50", "MobileNetV1"): (70.50, 72.18),
    ("ctkd", "ResNet34", "ResNet18"): (71.38, 71.81), ("ctkd", "ResNet50", "MobileNetV1"): (71.16, 72.92),
    ("dkd", "ResNet34", "ResNet18"): (71.70, 71.88), ("dkd", "ResNet50", "MobileNetV1"): (72.05, 72.85),
    ("mlkd", "ResNet34", "ResNet18"): (71.90, 72.08), ("mlkd", "ResNet50", "MobileNetV1"): (73.01, 73.22),
}

# ImageNet (paper Table 3; docs/paper.md §4, §6). The loss of each (method, teacher, student) baseline.
IMAGENET_BASELINE = {
    # release configs/imagenet/r34_r18/kd.yaml; mdistiller configs/imagenet/r50_mv1/kd.yaml
    ("kd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 0.5},
    ("kd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    # release CTKD/scripts/run_imagenet_distill.sh (-r 1 -a 2, learned T in [1, 21]); the script is for
    # R34->R18 only, zkd uses it for the R50 pair too. Its lambda ramp is 5 epochs, zkd's a fixed 10.
    ("ctkd", "ResNet34", "ResNet18"): {"ce_weight": 1.0, "kd_weight": 2.0},
    ("ctkd", "ResNet50", "MobileNetV1"): {"ce_weight": 1.0, "kd_weight": 2.0},
    # mdistiller configs/imagenet/r34_r18/dkd.yaml, r50_mv1/dkd.yaml
    ("dkd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 0.5},
    ("dkd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 2.0},
    # release configs/imagenet/r34_r18/kd_ours.yaml and r50_mv2/mlkd.yaml (written for MN-V2)
    ("mlkd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    ("mlkd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
}
# Where a row's solver departs from configs/imagenet.py's, as config overrides: CTKD's script
# (batch 256, 120 epochs, lr 0.1, both pairs) and MLKD's kd_ours.yaml (lr 0.1).
IMAGENET_SOLVER_EXCEPTIONS = {
    ("ctkd", "ResNet34", "ResNet18"): {"num_epochs": 120, "batch_size": 256, "optimizer.learning_rate": 0.1},
    ("ctkd", "ResNet50", "MobileNetV1"): {"num_epochs": 120, "batch_size": 256, "optimizer.learning_rate": 0.1},
    ("mlkd", "ResNet34", "ResNet18"): {"optimizer.learning_rate": 0.1},
}
# (base temperature, KD weight) of the +LS rows. Only KD's is published (issue #9: 2, 9); no ImageNet log
# of CTKD, DKD or MLKD with LS is released (DKD's setting is unknown to its authors, issue #31; MLKD's
# code was lost, issue #16), so zkd uses the authors' default LS_DEFAULT for them. CE and the solver
# stay the baseline's; DKD's alpha and beta are multiplied by the weight, as on CIFAR.
IMAGENET_LS_SETTINGS = {(m, t, s): LS_DEFAULT for m in METHODS for t, s in IMAGENET_PAIRS}

# The transformer students of the release's tiny-transformers/ (docs/paper.md §8): zoo "vit".
VIT_STUDENTS = ("deit_tiny", "t2t_vit_7", "pit_tiny", "pvt_tiny")
# (base temperature, KD weight with LS) per student. Where the stored yaml files and the released
# log names disagree (docs/paper.md §8), the log name wins: it names the run behind the published
# number. DeiT: deit-ti_c100_KD_ours_3_10 (yaml versions: 2/10, 3/9); T2T-ViT-7: t2t-7_c100_KD_ours_3_6
# (yaml: 3/9); PiT and PVT: their yaml (LOGIT_TEMP 2, EXTRA_WEIGHT_IN default 9), logs without suffix.
VIT_LS_SETTINGS = {"deit_tiny": (3.0, 10.0), "t2t_vit_7": (3.0, 6.0), "pit_tiny": (2.0, 9.0), "pvt_tiny": (2.0, 9.0)}
# Published top-1 (%), (Base: the student without distillation, KD+LS); release tiny-transformers/README.md.
VIT_PAPER_TOP1 = {"deit_tiny": (65.08, 78.55), "t2t_vit_7": (69.37, 78.43), "pit_tiny": (73.58, 78.76),
                  "pvt_tiny": (69.22, 78.43)}


def canonical(name: str) -> str:
    """zkd model name for a paper alias (R32x4 -> resnet32x4); other names unchanged."""
    return ALIASES.get(name, name)


def with_ls(method: str, loss: dict, setting: tuple) -> dict:
    """A baseline row's ``loss`` fields as the +LS row, for ``setting`` = (base temperature, weight[,
    DKD beta]): the fields ``LS_FIELDS[method]`` names change, the others (CE) stay."""
    temperature, weight, *beta = setting
    if beta:  # the +LS log's own DKD beta, before the weight multiplies it
        loss = {**loss, "dkd_beta": beta[0]}
    values = {"T": temperature, "w": weight}
    changes = {field: weight * loss[field] if how == "w*" else values[how]
               for field, how in LS_FIELDS.get(method, {}).items()}
    return {**loss, **changes}


def cifar_loss(method: str, teacher: str, student: str, logit_stand: bool) -> dict:
    """``config.loss`` fields of the paper's CIFAR-100 row of ``method`` on (teacher, student), with or
    without LS; {} for a method without a row."""
    if method not in CIFAR_BASELINE:
        return {}
    loss = {**CIFAR_BASELINE[method], **CIFAR_PAIR_BASELINE.get((method, teacher, student), {})}
    if logit_stand:
        loss = with_ls(method, loss, LS_SETTINGS[method].get((teacher, student), LS_DEFAULT))
    return loss


def cifar_epochs(method: str, teacher: str, student: str, default: int) -> int:
    """The CIFAR-100 row's epochs: ``default`` unless the method's release trains longer."""
    return PAIR_EPOCHS.get((method, teacher, student), METHOD_EPOCHS.get(method, default))


def imagenet_loss(method: str, teacher: str, student: str, logit_stand: bool) -> dict:
    """``config.loss`` fields of the paper's ImageNet row (Table 3), with or without LS."""
    key = (method, teacher, student)
    loss = dict(IMAGENET_BASELINE[key])
    return with_ls(method, loss, IMAGENET_LS_SETTINGS[key]) if logit_stand else loss


def published_top1(method: str, teacher: str, student: str) -> dict:
    """``config.paper_top1`` fields of a row with published numbers; {} for any other."""
    paper = PAPER_TOP1.get((method, teacher, student))
    return {"baseline": paper[0], "logit_stand": paper[1]} if paper else {}


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the reproduction tables."""

    method: str
    teacher: str
    student: str
    dataset: str = "cifar100"

    @property
    def paper(self) -> Optional[tuple[float, float]]:
        return PAPER_TOP1.get((self.method, self.teacher, self.student))


def paper_rows() -> list[Row]:
    """Every (method, pair) the config files cover: all methods on every CIFAR and ImageNet pair."""
    rows = [Row(m, t, s) for t, s in CIFAR_PAIRS for m in METHODS]
    rows += [Row(m, t, s, "imagenet2012") for t, s in IMAGENET_PAIRS for m in METHODS]
    return rows
