"""A whole CIFAR-shaped distillation run on synthetic data of CIFAR-100's size, timed end to end.

    python experiments/synthetic_run.py [--teacher resnet32x4] [--student resnet8x4] [--epochs 240]
        [--batch 64] [--steps_per_dispatch 1] [--dtype float32] [--workdir DIR]

What #16 Part B asks of an accelerator: the paper's 240-epoch schedule (zkd.recipes.cifar_distillation,
KD+LS) on 50,000 random uint8 training images and 10,000 test images held in memory
(``zkd.data.synthetic``), device-resident (``config.device_resident_data``: gathered and augmented
inside the step), with everything a real run does: exact evaluation of every epoch, a checkpoint
at every epoch end, metrics.jsonl. The teacher is randomly initialised (nothing to learn from
random images): the run measures time, not accuracy. TensorBoard event files are off unless
--tensorboard (they need TensorFlow's writer), so the run needs no TensorFlow call: on a machine
without TensorFlow only zkd.data's import of it must be satisfied.

Prints the wall time from the start of training to the summary (compilation, evaluation and
checkpoints included), the epochs' step time within it (the loop's own timing; the first epoch's
includes compiling the step), and img/s.
"""

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

from zkd import data, engine, models, recipes, train


def config_for(args) -> ml_collections.ConfigDict:
    c = recipes.cifar_distillation("kd", args.teacher, args.student, True)
    c.num_epochs, c.batch_size, c.dtype = args.epochs, args.batch, args.dtype
    c.device_resident_data, c.steps_per_dispatch = True, args.steps_per_dispatch
    c.tensorboard, c.progress_bar = args.tensorboard, False
    c.steps_per_epoch = args.steps_per_epoch
    c.num_devices = args.num_devices
    return recipes.finalize(c)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps_per_dispatch", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--train_size", type=int, default=50_000)
    parser.add_argument("--test_size", type=int, default=10_000)
    parser.add_argument("--steps_per_epoch", type=int, default=-1, help="-1: a full pass (train_size // batch)")
    parser.add_argument("--num_devices", type=int, default=1)
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    parser.add_argument("--workdir", default="", help="default: a new temporary directory")
    args = parser.parse_args(argv)

    info = data.synthetic("cifar100", args.train_size, args.test_size)
    config = config_for(args)
    teacher = models.build(args.teacher, 100, dtype=engine.DTYPES[args.dtype])
    variables = teacher.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
    workdir = args.workdir or tempfile.mkdtemp(prefix="zkd-synthetic-")
    steps = engine.steps_per_epoch_of(config, info)
    print(f"{args.teacher} -> {args.student}, {args.epochs} epochs of {steps} steps ({args.train_size} synthetic "
          f"training images, {args.test_size} test images), batch "
          f"{args.batch}, {args.dtype}, {args.steps_per_dispatch} step(s) per dispatch, on "
          f"{jax.devices()[0].device_kind} x{jax.device_count()}; workdir {workdir}", flush=True)
    start = time.perf_counter()
    summary = train.train_and_evaluate(config, workdir, dataset=info, teacher=(teacher, variables))
    wall = time.perf_counter() - start
    images = summary["images_per_second"] * summary["train_seconds"]
    print(f"end to end {wall:.1f} s = {wall / 60:.2f} min (epochs' step time {summary['train_seconds']:.1f} s, "
          f"{100 * summary['train_seconds'] / wall:.0f}%, the first epoch's including the step's compilation; the "
          f"rest: start-up, evaluation, checkpoints); "
          f"{images / wall:.0f} img/s end to end, {summary['images_per_second']:.0f} img/s in the steps; "
          f"{summary['epochs']} epochs, checkpoints in {os.path.join(workdir, 'checkpoints')}", flush=True)
    return {"wall_seconds": wall, **summary, "workdir": workdir}


if __name__ == "__main__":
    main()
