"""The README's main job: on Fashion-MNIST, train a teacher, distil a student with KD and with
KD+LS, and print a table of teacher, KD and KD+LS accuracies.

    python -m zkd.quickstart [--workdir workdirs/quickstart] [--data_dir ~/tensorflow_datasets]

Data: an already prepared TFDS ``fashion_mnist`` in ``--data_dir``; otherwise the IDX files of
Debian's ``dataset-fashion-mnist`` package (``--source``), prepared offline; otherwise a TFDS
download. Runs resume from their workdirs, so an interrupted quickstart continues where it
stopped. Defaults: resnet20 teacher (4 epochs), resnet8 students (3 epochs), 150 steps of 128
images per epoch, exact evaluation on all 10,000 test images after every epoch. The KD and KD+LS
students train as one sweep of two students (``config.sweep.mode="zip"``, each at its own paper
setting): one data stream and one teacher forward per batch serve both, so the students cost
less than two runs; each student still takes exactly its own single run's steps (to float32
roundoff, tests/test_sweep.py).
"""

from __future__ import annotations

import json
import os

import ml_collections

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/quickstart", "Parent directory of the three runs.")
_DATA_DIR = flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"), "TFDS data directory.")
_SOURCE = flags.DEFINE_string("source", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX .gz files.")
_TEACHER = flags.DEFINE_string("teacher", "resnet20", "Teacher architecture.")
_STUDENT = flags.DEFINE_string("student", "resnet8", "Student architecture.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 4, "Teacher epochs.")
_STUDENT_EPOCHS = flags.DEFINE_integer("student_epochs", 3, "Student epochs.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 150, "Steps per epoch (-1: a full pass, 468).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of all three runs.")

DEBIAN_HINT = "apt-get install dataset-fashion-mnist"


def ensure_fashion_mnist(data_dir: str, source: str) -> str:
    """Make ``fashion_mnist`` readable through TFDS in ``data_dir``; say how it got there."""
    import tensorflow_datasets as tfds

    from zkd.data import DataNotFoundError
    from zkd.data import prepare as prepare_lib

    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    if builder.is_prepared():
        return f"already prepared in {data_dir}"
    if os.path.isdir(source):
        prepare_lib.prepare("fashion_mnist", source, data_dir)
        return f"prepared offline from {source} into {data_dir}"
    try:
        builder.download_and_prepare()
    except Exception as err:  # no network, blocked host, ...
        raise DataNotFoundError(
            f"Fashion-MNIST is not prepared in {data_dir}, its IDX files are not in {source}, and the "
            f"TFDS download failed ({type(err).__name__}: {err}). Install the files with "
            f"`{DEBIAN_HINT}` (or put the four *-ubyte.gz files in a folder and pass --source), then rerun."
        ) from err
    return f"downloaded through TFDS into {data_dir}"


def student_sweep(student: str, teacher: str, student_epochs: int, seed: int, teacher_dir: str,
                  train_steps: int):
    """The KD and KD+LS students as one zip sweep (zkd.grid): each at its own paper setting (KD:
    T 4, KD 0.9; KD+LS: base T 2, KD 9; CE 0.1), both on one data stream and one teacher forward
    per batch. Returns ``(config, [(label, point)])``."""
    from zkd import grid, recipes

    kd, ls = (recipes.fashion_mnist("kd", student, teacher, flag, student_epochs, seed, teacher_dir, train_steps)
              for flag in (False, True))
    c = ml_collections.ConfigDict(kd.to_dict())
    c.sweep.mode = "zip"
    c.sweep.temperature = (kd.loss.temperature, ls.loss.temperature)
    c.sweep.kd_weight = (kd.loss.kd_weight, ls.loss.kd_weight)
    c.sweep.logit_stand = (False, True)
    return c, list(zip(("KD", "KD+LS"), grid.grid_points(c)))


def run_all(workdir: str, data_dir: str, teacher: str, student: str, teacher_epochs: int,
            student_epochs: int, train_steps: int, seed: int) -> list[dict]:
    """Train the teacher, then the KD and KD+LS students (one sweep); returns their summaries (rows)."""
    from zkd import recipes, sweep, train

    def finalize(c):
        c.data_dir = data_dir
        return recipes.finalize(c)

    def setting(config):
        loss = config.loss
        return "CE" if config.method == "ce" else f"T={loss.temperature:g}, KD {loss.kd_weight:g}, CE {loss.ce_weight:g}"

    teacher_dir = os.path.join(workdir, f"teacher_{teacher}")
    config = finalize(recipes.fashion_mnist("ce", teacher, epochs=teacher_epochs, seed=seed, train_steps=train_steps))
    print(f"\n== teacher: {teacher} ({teacher_dir}) ==", flush=True)
    summary = train.train_and_evaluate(config, teacher_dir)
    rows = [{**summary, "run": "teacher", "run_name": summary["run"], "model": teacher, "setting": setting(config),
             "workdir": teacher_dir}]

    config, points = student_sweep(student, teacher, student_epochs, seed, teacher_dir, train_steps)
    students_dir = os.path.join(workdir, f"students_{student}")
    print(f"\n== KD and KD+LS: {student}, one sweep of 2 students sharing the teacher ({students_dir}) ==",
          flush=True)
    result = sweep.train_sweep(finalize(config), students_dir)
    for (label, point), s in zip(points, result["points"]):
        rows.append({**s, "run": label, "run_name": s["run"], "model": student, "setting": setting(point.config),
                     "epochs": result["epochs"], "images_per_second": result["images_per_second"]})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| run | model | setting | best top-1 (%) | last top-1 (%) | agreement w/ teacher (%) | epochs | img/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agreement = "" if r["run"] == "teacher" else f"{r['agreement']:.2f}"
        lines.append(
            f"| {r['run']} | {r['model']} | {r['setting']} | {r['best_top1']:.2f} | {r['last_top1']:.2f} | "
            f"{agreement} | {r['epochs']} | {r['images_per_second']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)  # orbax / TFDS chatter; zkd prints its own progress
    print("Fashion-MNIST:", ensure_fashion_mnist(_DATA_DIR.value, _SOURCE.value), flush=True)
    rows = run_all(_WORKDIR.value, _DATA_DIR.value, _TEACHER.value, _STUDENT.value, _TEACHER_EPOCHS.value,
                   _STUDENT_EPOCHS.value, _TRAIN_STEPS.value, _SEED.value)
    table = format_table(rows) + (
        "\n\nKD and KD+LS trained as one sweep: their img/s counts each batch once (both students learn from it).")
    print("\n" + table, flush=True)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
