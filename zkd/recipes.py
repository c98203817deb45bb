"""The paper's recipes and tables as data, and the config builder the config files share.

Everything a config file needs beyond ``ml_collections`` lives here, so ``configs/`` imports
only from zkd: the default config (every field, locked), the argument parser of
``--config configs/x.py:a=1,b=2``, the per-pair settings of the released logs and the
published numbers (docs/paper.md §3-4 and §6).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, Optional

import ml_collections

from zkd import methods

# Paper / official names -> zkd model names.
ALIASES = {
    "R32x4": "resnet32x4", "R8x4": "resnet8x4", "R56": "resnet56", "R20": "resnet20",
    "R110": "resnet110", "R32": "resnet32", "VGG13": "vgg13", "VGG8": "vgg8",
    "WRN-40-2": "wrn_40_2", "WRN-40-1": "wrn_40_1", "WRN-16-2": "wrn_16_2",
    "ShuffleV1": "ShuffleV1", "ShuffleV2": "ShuffleV2", "MN-V2": "MobileNetV2", "R50": "ResNet50",
    "R34": "ResNet34", "R18": "ResNet18", "MN-V1": "MobileNetV1",
}
SMALL_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")  # lr 0.01 instead of 0.05

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
METHODS = ("kd", "dkd", "mlkd", "ctkd")

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
LS_DEFAULT = (2, 9)
# DKD's per-pair beta of the baseline (Zhao et al.); 8 elsewhere.
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("vgg13", "vgg8"): 6.0,
    ("vgg13", "MobileNetV2"): 6.0, ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
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

# ImageNet (paper Table 3; docs/paper.md §4, §6). The solver of every row unless its entry below says
# otherwise; always SGD momentum 0.9, weight decay 1e-4, x0.1 at epochs 30/60/90.
IMAGENET_SOLVER = {"num_epochs": 100, "batch_size": 512, "learning_rate": 0.2}
# The baseline of each (method, teacher, student): its loss fields, and any solver field that differs.
IMAGENET_BASELINE = {
    # release configs/imagenet/r34_r18/kd.yaml; mdistiller configs/imagenet/r50_mv1/kd.yaml
    ("kd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 0.5},
    ("kd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    # release CTKD/scripts/run_imagenet_distill.sh (-r 1 -a 2, learned T in [1, 21]); the script is for
    # R34->R18 only, zkd uses it for the R50 pair too. Its lambda ramp is 5 epochs, zkd's a fixed 10.
    ("ctkd", "ResNet34", "ResNet18"): {"ce_weight": 1.0, "kd_weight": 2.0,
                                       "num_epochs": 120, "batch_size": 256, "learning_rate": 0.1},
    ("ctkd", "ResNet50", "MobileNetV1"): {"ce_weight": 1.0, "kd_weight": 2.0,
                                          "num_epochs": 120, "batch_size": 256, "learning_rate": 0.1},
    # mdistiller configs/imagenet/r34_r18/dkd.yaml, r50_mv1/dkd.yaml (warm-up 1 epoch for every ImageNet row)
    ("dkd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 0.5},
    ("dkd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 2.0},
    # release configs/imagenet/r34_r18/kd_ours.yaml (lr 0.1) and r50_mv2/mlkd.yaml (lr 0.2, written for MN-V2)
    ("mlkd", "ResNet34", "ResNet18"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5, "learning_rate": 0.1},
    ("mlkd", "ResNet50", "MobileNetV1"): {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
}
# (base temperature, KD weight) of the +LS rows. Only KD's is published (issue #9: 2, 9); no ImageNet log
# of CTKD, DKD or MLKD with LS is released (DKD's setting is unknown to its authors, issue #31; MLKD's
# code was lost, issue #16), so zkd uses the authors' default LS_DEFAULT for them. CE and the solver
# stay the baseline's; DKD's alpha and beta are multiplied by the weight, as on CIFAR.
IMAGENET_LS_SETTINGS = {(m, t, s): LS_DEFAULT for m in METHODS for t, s in IMAGENET_PAIRS}


def canonical(name: str) -> str:
    """zkd model name for a paper alias (R32x4 -> resnet32x4); other names unchanged."""
    return ALIASES.get(name, name)


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
    """Parse ``"a=1,b=x"`` (the part after ':' in ``--config file.py:...``) over ``defaults``.

    Values are converted to the type of their default (bool accepts 1/0/true/false). Unknown
    keys fail, naming the valid ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false"):
                raise ValueError(f"config argument {key} must be 1/0/true/false, got {value!r}")
            out[key] = value.lower() in ("1", "true")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with CIFAR-100 defaults (docs/paper.md §4). Config files
    override fields; the returned dict is locked by ``finalize``, so misspelled overrides fail."""
    c = ml_collections.ConfigDict()
    # A zkd.methods name (ce | kd | dkd | mlkd | ctkd, or a method you registered) or
    # "package.module:Class" (docs/methods.md).
    c.method = "ce"
    c.logit_stand = False
    # dataset: a key of zkd.data.DATASETS, or "tfds:NAME" for any TFDS dataset prepared in data_dir
    # (an image folder: python -m zkd.data.prepare --folder; docs/data.md), read with config.data.
    c.dataset = "cifar100"
    c.data_dir = ""                  # TFDS data dir; "" = TFDS's default (~/tensorflow_datasets)
    # "tfds:NAME" only (zkd.data.catalog): the TFDS splits trained on / evaluated ("" test: "test",
    # else "validation"; slices like "train[:90%]" work for in-memory sets), image_size (> 0: resize
    # to it; needed when image sizes differ), mean / std on the [0, 1] scale (empty: computed over
    # the training split once, stored beside the data), the feature names ("": the only one).
    c.data = ml_collections.ConfigDict({
        "train_split": "train", "test_split": "", "image_size": 0, "mean": (), "std": (),
        "image_key": "", "label_key": "",
    })
    c.device_resident_data = False   # in-memory datasets: uint8 images on the devices, augmented in the step
    # with device-resident data: steps compiled into one program (lax.scan) per dispatch; a k that
    # divides log_every_steps, steps_per_epoch (and checkpoint_every_steps) keeps every dispatch
    # whole, else single steps fill in at those boundaries (zkd.train)
    c.steps_per_dispatch = 1
    # student.options: keyword arguments of the model's factory (zoo "vit": img_size, drop_path_rate).
    # student.factory: "package.module:function" building a user's Flax module (zkd.models.user,
    # docs/models.md): function(num_classes=..., **options); name / zoo are then only labels.
    c.student = ml_collections.ConfigDict({"name": "resnet8x4", "zoo": "cifar", "options": {}, "factory": ""})
    # The transformer students (docs/paper.md §8): the student sees the training and test images at
    # student_input_size (0: the dataset's size; training upsampled bicubically, test bilinearly) and
    # the teacher sees the student's view resized bilinearly to teacher_input_size (0: unchanged)
    # inside the step. augmentation: "" (the dataset's) | "random_resized_crop", optionally with
    # "+rand-m9-mstd0.5-inc1" and/or "+re0.25" (timm's RandAugment / random erasing; zkd.data.pipeline).
    c.student_input_size = 0
    c.teacher_input_size = 0
    c.augmentation = ""              # also "crop_flip" (in-memory default, explicit) | "none"
    # teacher.checkpoint: a converted checkpoint dir (python -m zkd.convert), a PyTorch .pth
    # (converted on the fly), or the workdir of a zkd teacher run (its best checkpoint).
    # teacher.logit_cache: a directory built by `python -m zkd.logit_cache` for this teacher and
    # training split; its logits replace the teacher's forward pass in training ("" = off).
    # teacher.factory / options: a user's architecture, as for the student. teacher.ensemble: two or
    # more checkpoints ("PATH" of config.teacher's architecture, or "NAME@PATH"), whose logits are
    # averaged (instead of teacher.checkpoint).
    c.teacher = ml_collections.ConfigDict({"name": "", "zoo": "cifar", "checkpoint": "", "logit_cache": "",
                                           "factory": "", "options": {}, "ensemble": ()})
    # Every registered method's fields with their defaults (each method reads its own; zkd/methods/).
    # kd_logits: "" distils into the student's output; "distill_logits" into the logits the student
    # sows under that name (DeiT's distillation head), CE staying on the output (kd, ctkd).
    c.loss = ml_collections.ConfigDict({**methods.config_fields(), "kd_logits": ""})
    # name: sgd | adamw; schedule: piecewise (lr_milestones, lr_decay) | cosine (warmup_epochs from
    # warmup_factor * learning_rate, then cosine to min_lr at num_epochs); zkd.engine.make_optimizer.
    # b1, b2, eps: AdamW's only; momentum: SGD's only.
    c.optimizer = ml_collections.ConfigDict({
        "name": "sgd", "schedule": "piecewise",
        "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "lr_milestones": (150, 180, 210), "lr_decay": 0.1,
        "warmup_epochs": 0, "warmup_factor": 1e-3, "min_lr": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
    })
    c.num_epochs = 240
    c.batch_size = 64                # global
    c.eval_batch_size = 500          # global
    c.steps_per_epoch = -1           # -1: train_size // batch_size; >0 caps it (tiny runs)
    c.max_eval_batches = -1          # -1: the whole test split (exact); >0 for smoke runs only
    c.seed = 0                       # the student's initialisation and (unless data_seed >= 0) the data order
    c.data_seed = -1                 # the data order and augmentation; -1: seed
    # A hyper-parameter grid trained in one run (zkd.sweep): every non-empty axis is swept, the
    # students share one data stream and one teacher forward per batch. E.g.
    # --config.sweep.temperature="(2, 3)" --config.sweep.kd_weight="(3, 6, 9)" gives 6 students;
    # with --config.sweep.mode=zip the axes are read side by side (zkd.grid):
    # temperature="(4, 2)" kd_weight="(0.9, 9)" logit_stand="(0, 1)" gives KD and KD+LS.
    c.sweep = ml_collections.ConfigDict({
        **{field: () for field in methods.sweep_fields()}, "logit_stand": (), "seed": (),
        "mode": "product",      # product (every combination of the axes) | zip (side by side)
        "vectorize": "unroll",  # how the students' updates are batched: unroll | vmap (zkd.sweep)
    })
    c.dtype = "float32"              # computation dtype: float32 | bfloat16
    c.log_every_steps = 100
    c.checkpoint_every_epochs = 10   # keep a checkpoint every N epochs (latest and best always)
    c.checkpoint_every_steps = 0     # also save every N steps (mid-epoch; 0: off), for long epochs
    c.num_devices = -1               # -1: all devices
    c.progress_bar = True            # when attached to a terminal
    c.tensorboard = True             # event files in <workdir>/tensorboard (TensorFlow's writer); metrics.jsonl always
    c.paper_top1 = ml_collections.ConfigDict({"baseline": -1.0, "logit_stand": -1.0})
    return c


def swept_axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The non-empty axes of ``config.sweep``, {} for a single run (``zkd.grid.swept_axes``)."""
    from zkd import grid

    return grid.swept_axes(config)


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data order and augmentation: ``config.data_seed``, or ``config.seed`` when -1."""
    seed = config.get("data_seed", -1)
    return int(config.seed if seed < 0 else seed)


def unknown_field_message(config: Any, path: str) -> Optional[str]:
    """The one-line error for ``--config.<path>`` when ``path`` is not a field of ``config``.

    Returns None when every component of the dotted ``path`` exists. Otherwise names the first
    missing component, the closest valid name at that level (if any is close) and all valid
    names there, e.g. ``error: unknown config field 'loss.temperatur'; did you mean
    'loss.temperature'? (valid fields under config.loss: ce_weight, ...)``.
    """
    node, parent = config, ""
    for name in path.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return (f"error: config field '{parent[:-1]}' holds a value of type {type(node).__name__}, not a group "
                    f"of fields, so --config.{path} names nothing; set --config.{parent[:-1]}=VALUE instead")
        fields = sorted(str(k) for k in node.keys())
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{parent}{close[0]}'?" if close else ""
            where = f"config.{parent[:-1]}" if parent else "config"
            return (f"error: unknown config field '{parent}{name}'{hint} "
                    f"(valid fields under {where}: {', '.join(fields)})")
        node, parent = node[name], f"{parent}{name}."
    return None


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock the config: assigning a field that does not exist now raises. The models' ``options``
    stay open: they are keyword arguments of a factory (``config.student.options.depth = 3`` in
    Python or a config file; from the command line only the options the config file defines)."""
    config.lock()
    for role in ("student", "teacher"):
        if role in config and "options" in config[role]:
            config[role].options.unlock()
    return config


def _epochs_and_lr(method: str, teacher: str, student: str) -> tuple[int, float]:
    epochs = 240
    if method == "mlkd":
        epochs = 960 if (teacher == "resnet32x4" and student in ("ShuffleV1", "ShuffleV2")) else 480
    lr = 0.01 if student in SMALL_LR_STUDENTS else 0.05
    return epochs, lr


def cifar_distillation(method: str, teacher: str, student: str, logit_stand: bool, seed: int = 0,
                       teacher_checkpoint: str = "") -> ml_collections.ConfigDict:
    """The paper's CIFAR-100 recipe for ``method`` on (teacher, student), with or without LS."""
    teacher, student = canonical(teacher), canonical(student)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    c = base_config()
    c.method, c.logit_stand, c.seed = method, bool(logit_stand), seed
    c.student.name, c.teacher.name, c.teacher.checkpoint = student, teacher, teacher_checkpoint
    c.num_epochs, c.optimizer.learning_rate = _epochs_and_lr(method, teacher, student)
    pair = (teacher, student)
    settings = LS_SETTINGS[method].get(pair, LS_DEFAULT)
    base_temp, weight = settings[:2]
    beta = settings[2] if len(settings) > 2 else DKD_BETA.get(pair, 8.0)
    l = c.loss
    if method == "kd":
        l.ce_weight = 0.1
        l.temperature, l.kd_weight = (base_temp, weight) if logit_stand else (4.0, 0.9)
    elif method == "ctkd":
        l.ce_weight = 0.1
        l.kd_weight = weight if logit_stand else 0.9
    elif method == "dkd":
        l.ce_weight = 1.0
        l.temperature = base_temp if logit_stand else 4.0
        base_beta = DKD_BETA.get(pair, 8.0)
        l.dkd_alpha, l.dkd_beta = (weight * 1.0, weight * beta) if logit_stand else (1.0, base_beta)
    elif method == "mlkd":
        l.ce_weight = 1.0
        l.temperature, l.kd_weight = (base_temp, weight) if logit_stand else (4.0, 1.0)
    paper = PAPER_TOP1.get((method, teacher, student))
    if paper:
        c.paper_top1.baseline, c.paper_top1.logit_stand = paper
    return c


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
VIT_CE_WEIGHT = 0.5
VIT_IMG_SIZE, VIT_TEACHER_IMG_SIZE = 224, 32


def cifar100_vit(student: str, logit_stand: bool, method: str = "kd", seed: int = 0,
                 teacher_checkpoint: str = "", teacher: str = "resnet56") -> ml_collections.ConfigDict:
    """The release's recipe for a transformer student distilled from ResNet-56 on CIFAR-100
    (docs/paper.md §8): images at 224 (random-resized crop + flip, RandAugment
    rand-m9-mstd0.5-inc1, random erasing p 0.25), the teacher at 32, AdamW 5e-4
    with weight decay 0.05, 20 warm-up epochs from 1e-3 x lr, cosine to 5e-6 at 300 epochs, batch
    128 (test 200).

    ``method="kd"``: loss = VIT_CE_WEIGHT * CE + kd_weight * T^2 KL(standardized logits / T), with
    (T, kd_weight) = VIT_LS_SETTINGS[student] with LS; without LS the release's plain soft KD:
    the same T, weight LOGIT_WEIGHT = 1 on raw logits. CE weight 0.5: the released trainer versions
    weight CE by 1 - LOGIT_WEIGHT (= 0 with the yaml's LOGIT_WEIGHT 1) or by 0.5; the released logs'
    CE values (PiT ~2.36) fit 0.5. DeiT distils into its distillation head
    (``loss.kd_logits="distill_logits"``), as the release does. ``method="ce"``: the Base row (the
    release's ``*_base.yaml``, no teacher).
    """
    student = canonical(student)
    if student not in VIT_STUDENTS:
        raise ValueError(f"student must be one of {VIT_STUDENTS}, got {student!r}")
    if method not in ("kd", "ce"):
        raise ValueError(f"method must be kd or ce, got {method!r}")
    c = base_config()
    c.method, c.logit_stand, c.seed = method, bool(logit_stand) and method == "kd", seed
    c.student.name, c.student.zoo = student, "vit"
    c.student.options = ml_collections.ConfigDict({"img_size": VIT_IMG_SIZE})
    c.student_input_size = VIT_IMG_SIZE
    c.augmentation = "random_resized_crop+rand-m9-mstd0.5-inc1+re0.25"  # timm: crop + flip, RandAugment, erasing
    c.num_epochs, c.batch_size, c.eval_batch_size = 300, 128, 200
    o = c.optimizer
    o.name, o.schedule, o.learning_rate, o.weight_decay = "adamw", "cosine", 5e-4, 0.05
    o.warmup_epochs, o.warmup_factor, o.min_lr = 20, 1e-3, 5e-6
    base, ls = VIT_PAPER_TOP1[student]
    if method == "ce":
        c.paper_top1.baseline = base
        return c
    c.teacher.name, c.teacher.zoo, c.teacher.checkpoint = canonical(teacher), "cifar", teacher_checkpoint
    c.teacher_input_size = VIT_TEACHER_IMG_SIZE
    temperature, weight = VIT_LS_SETTINGS[student]
    c.loss.ce_weight, c.loss.temperature = VIT_CE_WEIGHT, temperature
    c.loss.kd_weight = weight if c.logit_stand else 1.0
    c.loss.kd_logits = "distill_logits" if student == "deit_tiny" else ""
    c.paper_top1.logit_stand = ls  # no KD-without-LS number is published: baseline stays -1
    return c


def shrink_vit_for_local_run(c: ml_collections.ConfigDict, image_size: int = 64) -> ml_collections.ConfigDict:
    """``runlocal`` for a transformer student: ``shrink_for_local_run`` at ``image_size`` (every
    student patches 64: DeiT 4x4 tokens, PVT's strides multiply to 32), one warm-up epoch."""
    shrink_for_local_run(c)
    c.student.options.img_size = image_size
    c.student_input_size = image_size
    c.optimizer.warmup_epochs = 1
    return c


def cifar_teacher(model: str, seed: int = 0) -> ml_collections.ConfigDict:
    """Train a CIFAR-100 teacher from scratch with cross-entropy (240 epochs, the same SGD)."""
    model = canonical(model)
    c = base_config()
    c.method, c.seed = "ce", seed
    c.student.name = model
    c.optimizer.learning_rate = 0.01 if model in SMALL_LR_STUDENTS else 0.05
    return c


def imagenet_distillation(teacher: str, student: str, logit_stand: bool, seed: int = 0,
                          teacher_checkpoint: str = "", method: str = "kd") -> ml_collections.ConfigDict:
    """The paper's ImageNet recipe for ``method`` on (teacher, student), with or without LS.

    ``IMAGENET_SOLVER``, ``IMAGENET_BASELINE`` and ``IMAGENET_LS_SETTINGS`` hold the settings and
    their sources (docs/paper.md §4, §6).
    """
    teacher, student = canonical(teacher), canonical(student)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (teacher, student) not in IMAGENET_PAIRS:
        raise ValueError(f"ImageNet pairs are {IMAGENET_PAIRS}, got {(teacher, student)}")
    key = (method, teacher, student)
    settings = {**IMAGENET_SOLVER, **IMAGENET_BASELINE[key]}
    c = base_config()
    c.method, c.logit_stand, c.seed = method, bool(logit_stand), seed
    c.dataset = "imagenet2012"
    c.student.name, c.student.zoo = student, "imagenet"
    c.teacher.name, c.teacher.zoo, c.teacher.checkpoint = teacher, "imagenet", teacher_checkpoint
    c.num_epochs, c.batch_size, c.eval_batch_size = settings.pop("num_epochs"), settings.pop("batch_size"), 500
    c.optimizer.learning_rate, c.optimizer.weight_decay = settings.pop("learning_rate"), 1e-4
    c.optimizer.lr_milestones = (30, 60, 90)
    c.loss.dkd_warmup_epochs = 1.0
    for field, value in settings.items():
        c.loss[field] = value
    if logit_stand:
        base_temp, weight = IMAGENET_LS_SETTINGS[key]
        if method != "ctkd":  # CTKD learns its temperature (docs/paper.md §3)
            c.loss.temperature = float(base_temp)
        if method == "dkd":
            c.loss.dkd_alpha, c.loss.dkd_beta = weight * c.loss.dkd_alpha, weight * c.loss.dkd_beta
        else:
            c.loss.kd_weight = float(weight)
    c.checkpoint_every_epochs = 5
    c.log_every_steps = 500
    paper = PAPER_TOP1.get(key)
    if paper:
        c.paper_top1.baseline, c.paper_top1.logit_stand = paper
    return c


def shrink_for_local_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``runlocal``: a few tiny steps to check a config end to end on a laptop (not a result)."""
    c.num_epochs = 2
    c.batch_size = 16
    c.eval_batch_size = 64
    c.steps_per_epoch = 3
    c.max_eval_batches = 2
    c.log_every_steps = 1
    c.checkpoint_every_epochs = 1
    c.optimizer.lr_milestones = (1,)
    return c


def run_name(c: ml_collections.ConfigDict) -> str:
    """A workdir name that encodes dataset, method, teacher, student, LS and seed."""
    method = c.method + ("_ls" if c.logit_stand else "")
    models = c.student.name if c.method == "ce" else f"{c.teacher.name}-{c.student.name}"
    dataset = c.dataset.replace(":", "_").replace("/", "_")  # "tfds:name/config" stays one path component
    axes = swept_axes(c)
    if axes:
        zipped = "_zip" if c.sweep.get("mode", "product") == "zip" else ""
        return f"{dataset}/sweep_{c.method}/{models}/{'-'.join(axes)}{zipped}"
    return f"{dataset}/{method}/{models}/seed{c.seed}"


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


def fashion_mnist(method: str, model: str, teacher: str = "resnet20", logit_stand: bool = False,
                  epochs: int = 4, seed: int = 0, teacher_checkpoint: str = "", train_steps: int = -1,
                  temperature: float = -1.0, kd_weight: float = -1.0) -> ml_collections.ConfigDict:
    """Fashion-MNIST (28x28x1, 10 classes): the CIFAR recipe of ``method`` on a small budget.

    Batch 128, SGD 0.05 with x0.1 after 60% and 85% of the epochs, weight decay 5e-4.
    ``method="ce"`` trains ``model`` from scratch; otherwise ``model`` is the student.
    ``temperature`` / ``kd_weight`` <= 0 keep the paper's CIFAR defaults (T 4 / KD 0.9 without
    LS, base T 2 / KD 9 with LS). ``train_steps`` > 0 caps the steps per epoch.
    """
    c = _short_budget(method, model, teacher, logit_stand, epochs, seed, teacher_checkpoint, train_steps,
                      temperature, kd_weight)
    c.dataset = "fashion_mnist"
    c.batch_size, c.eval_batch_size = 128, 1000
    return c


def _short_budget(method, model, teacher, logit_stand, epochs, seed, teacher_checkpoint, train_steps,
                  temperature, kd_weight) -> ml_collections.ConfigDict:
    """The CIFAR recipe of ``method`` on ``epochs`` epochs (decays at 60% / 85%), SGD 0.05."""
    if method == "ce":
        c = cifar_teacher(model, seed)
    else:
        c = cifar_distillation(method, teacher, model, logit_stand, seed, teacher_checkpoint)
        if temperature > 0:
            c.loss.temperature = temperature
        if kd_weight > 0:
            c.loss.kd_weight = kd_weight
    c.num_epochs = epochs
    c.optimizer.learning_rate = 0.05
    c.optimizer.lr_milestones = (round(0.6 * epochs), round(0.85 * epochs))
    c.steps_per_epoch = train_steps
    c.log_every_steps = 50
    c.checkpoint_every_epochs = max(1, epochs // 2)
    c.paper_top1.baseline = c.paper_top1.logit_stand = -1.0
    return c


def your_data(dataset: str, method: str, model: str, teacher: str = "resnet20", logit_stand: bool = False,
              epochs: int = 30, seed: int = 0, teacher_checkpoint: str = "", train_steps: int = -1,
              temperature: float = -1.0, kd_weight: float = -1.0, batch_size: int = 64, image_size: int = 0,
              data_dir: str = "", augmentation: str = "", zoo: str = "cifar") -> ml_collections.ConfigDict:
    """A user's dataset ("tfds:NAME", or a built-in name): the CIFAR recipe on ``epochs`` epochs
    (SGD 0.05, x0.1 at 60% and 85%, weight decay 5e-4, batch ``batch_size``), models of ``zoo``.
    ``image_size`` > 0 resizes the images (needed when their sizes differ); see docs/data.md."""
    c = _short_budget(method, model, teacher, logit_stand, epochs, seed, teacher_checkpoint, train_steps,
                      temperature, kd_weight)
    c.dataset, c.data_dir, c.data.image_size = dataset, data_dir, image_size
    c.student.zoo = c.teacher.zoo = zoo
    c.augmentation = augmentation
    c.batch_size, c.eval_batch_size = batch_size, 256
    return c
