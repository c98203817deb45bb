"""The config schema: every field a run reads, its default and what it means; and what the run
derives from a config (its name, its data seed, its sweep axes).

Config files (configs/*.py) start from ``base_config()`` and set the fields of their recipe;
``finalize`` locks the result, so a misspelled field fails. The defaults are CIFAR-100's
(docs/paper.md §4); nothing else in zkd holds a default of a config field.
"""

from __future__ import annotations

import ml_collections

from zkd import methods


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with its default. ``config.loss`` and ``config.sweep`` hold the fields
    of every method registered when this is called (zkd/methods/), so a method of your own must be
    registered (its module imported) before its config is built."""
    c = ml_collections.ConfigDict()
    # A zkd.methods name (ce | kd | dkd | mlkd | ctkd, or a method you registered) or
    # "package.module:Class" (docs/methods.md).
    c.method = "ce"
    c.logit_stand = False            # standardize the logits before the distillation terms (the paper's LS)
    # A key of zkd.data.DATASETS, or "tfds:NAME" for any TFDS dataset prepared in data_dir
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
    # With device-resident data: steps compiled into one program (lax.scan) per dispatch; a k that
    # divides log_every_steps, steps_per_epoch (and checkpoint_every_steps) keeps every dispatch
    # whole, else single steps fill in at those boundaries (zkd.train).
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
    # warmup_factor * learning_rate, then cosine to min_lr at num_epochs); zkd.optim.make_optimizer.
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
    # The row's published top-1 (%), printed beside the run's; -1: none (zkd.paper sets them).
    c.paper_top1 = ml_collections.ConfigDict({"baseline": -1.0, "logit_stand": -1.0})
    return c


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock the config: assigning a field that does not exist now raises. The models' ``options``
    stay open: they are keyword arguments of a factory (``config.student.options.depth = 3`` in
    Python or a config file; from the command line only the options the config file defines)."""
    config.lock()
    for role in ("student", "teacher"):
        if role in config and "options" in config[role]:
            config[role].options.unlock()
    return config


def swept_axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The non-empty axes of ``config.sweep``, {} for a single run (``zkd.grid.swept_axes``)."""
    from zkd import grid

    return grid.swept_axes(config)


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data order and augmentation: ``config.data_seed``, or ``config.seed`` when -1."""
    seed = config.data_seed
    return int(config.seed if seed < 0 else seed)


def run_name(c: ml_collections.ConfigDict) -> str:
    """A workdir name that encodes dataset, method, teacher, student, LS and seed."""
    method_class = methods.get(c.method)
    name = method_class.name.replace(":", "_")  # "package.module:Class" stays one path component
    method = name + ("_ls" if c.logit_stand else "")
    models = f"{c.teacher.name}-{c.student.name}" if method_class.needs_teacher else c.student.name
    dataset = c.dataset.replace(":", "_").replace("/", "_")  # "tfds:name/config" stays one path component
    axes = swept_axes(c)
    if axes:
        zipped = "_zip" if c.sweep.mode == "zip" else ""
        return f"{dataset}/sweep_{name}/{models}/{'-'.join(axes)}{zipped}"
    return f"{dataset}/{method}/{models}/seed{c.seed}"
