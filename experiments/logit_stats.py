"""Logit statistics of a teacher and its students: the paper's Fig. 3 and Fig. 5 analyses.

    python experiments/logit_stats.py --dataset fashion_mnist --data_dir ~/tensorflow_datasets \
        --teacher workdirs/fm/teacher --student KD=workdirs/fm/kd --student KD+LS=workdirs/fm/kd_ls \
        --out_dir experiments/results/logit_stats

Every path (the models, ``--out_dir``) may be local or in a bucket (``gs://bucket/dir``, through
``zkd.paths``); the test split is read from ``--data_dir`` by TFDS.

Each model is a zkd run's workdir (its best checkpoint; the architecture comes from its
``config.json``), a directory written by ``python -m zkd.convert`` (architecture from its
``metadata.json``) or a PyTorch ``.pth`` (name the architecture: ``--teacher_model`` for the
teacher, ``LABEL=PATH@MODEL`` for a student). ``--student`` repeats; ``LABEL=`` is optional.

On the test split (every example, or the first ``--max_examples``) it computes, for the raw and
the Z-score standardized logits (``zkd.losses.standardize``, ddof=1):
- Fig. 5: the distributions of each sample's logit mean and logit std (over classes), teacher and
  students overlaid -> ``logit_distributions.png``;
- Fig. 3: the class x class matrix of mean logits (row c: the mean logit vector of the test images
  whose true class is c) of teacher minus student, as heatmaps with the mean and max of its
  absolute value -> ``class_mean_logit_diff.png``;
- top-1 accuracy of each model and the top-1 agreement of each student with the teacher;
and writes every number to ``logit_stats.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from zkd import data, losses, paths  # noqa: E402
from zkd.teacher import load_teacher  # noqa: E402


class ModelSpecError(ValueError):
    """A model argument that does not say which architecture to build."""


# ----------------------------------------------------------------------------- loading


def parse_spec(spec: str, default_label: str = "") -> tuple[str, str, str]:
    """``[LABEL=]PATH[@MODEL]`` -> (label, path, model or "")."""
    label, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, _, model = rest.partition("@")
    label = label or default_label or os.path.basename(os.path.normpath(path))
    return label, path, model


def architecture(path: str, model: str = "") -> tuple[str, str]:
    """(model name, zoo) of a zkd workdir, a converted checkpoint dir, or a .pth with ``model``."""
    path = os.path.expanduser(path)
    config_json, metadata_json = paths.join(path, "config.json"), paths.join(path, "metadata.json")
    if paths.isdir(path) and paths.exists(config_json):
        student = json.loads(paths.read_text(config_json))["student"]
        found = (student["name"], student.get("zoo", "cifar"))
    elif paths.isdir(path) and paths.exists(metadata_json):
        meta = json.loads(paths.read_text(metadata_json))
        found = (meta["model"], meta.get("zoo", "cifar"))
    elif model:
        found = (model, "cifar")
    else:
        raise ModelSpecError(
            f"{path!r} is neither a zkd run (config.json) nor a converted checkpoint (metadata.json): "
            "name its architecture (--teacher_model NAME, or LABEL=PATH@NAME for a student)")
    if model and model != found[0]:
        raise ModelSpecError(f"{path} holds {found[0]!r}, not {model!r}")
    return found


def load_model(path: str, model: str, num_classes: int, image_shape, zoo: str = ""):
    """(Linen module, variables) of a workdir / converted dir / .pth, checked against the dataset."""
    name, found_zoo = architecture(path, model)
    spec = ml_collections.ConfigDict({"name": name, "zoo": zoo or found_zoo, "checkpoint": path})
    return load_teacher(spec, num_classes, tuple(image_shape))


def test_logits(models: dict, dataset: str, data_dir: str | None, batch_size: int = 500,
                max_examples: int = -1) -> tuple[dict, np.ndarray]:
    """Eval-mode logits of every ``{label: (module, variables)}`` on the test split, and the labels."""
    applies = {k: jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)) for k, (m, _) in models.items()}
    out = {k: [] for k in models}
    labels = []
    count = 0
    for batch in data.eval_batches(dataset, data_dir=data_dir, split="test", global_batch_size=batch_size,
                                   process_index=0, process_count=1):
        mask = np.asarray(batch["mask"], bool)
        for k, (_, variables) in models.items():
            out[k].append(np.asarray(applies[k](variables, batch["image"]), np.float32)[mask])
        labels.append(np.asarray(batch["label"])[mask])
        count += int(mask.sum())
        if 0 < max_examples <= count:
            break
    n = count if max_examples <= 0 else min(count, max_examples)
    return {k: np.concatenate(v)[:n] for k, v in out.items()}, np.concatenate(labels)[:n]


# ----------------------------------------------------------------------------- analysis


def class_mean_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K]: row c is the mean logit vector of the examples of true class c (NaN if none)."""
    sums = np.zeros((num_classes, logits.shape[1]), np.float64)
    np.add.at(sums, labels, logits.astype(np.float64))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def _summary(x: np.ndarray) -> dict:
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "median": float(np.median(x)),
            "min": float(np.min(x)), "max": float(np.max(x))}


def per_sample(logits: np.ndarray) -> dict:
    """Each sample's logit mean and std (ddof=1, as the paper's Fig. 5 and the released code)."""
    return {"mean": logits.mean(axis=1), "std": logits.std(axis=1, ddof=1)}


def analyse(logits: dict, labels: np.ndarray, num_classes: int, teacher: str = "teacher") -> dict:
    """Every number of the Fig. 3 / Fig. 5 analyses; ``logits[teacher]`` is the teacher's."""
    views = {"raw": logits, "standardized": {k: np.asarray(losses.standardize(v)) for k, v in logits.items()}}
    result = {"num_examples": int(len(labels)), "num_classes": num_classes, "teacher": teacher, "models": {},
              "students": {}}
    for name, raw in logits.items():
        entry = {"top1": float(100.0 * np.mean(raw.argmax(1) == labels))}
        for view, by_model in views.items():
            stats = per_sample(by_model[name])
            entry[view] = {"logit_mean": _summary(stats["mean"]), "logit_std": _summary(stats["std"])}
        result["models"][name] = entry
    teacher_pred = logits[teacher].argmax(1)
    for name in logits:
        if name == teacher:
            continue
        entry = {"agreement": float(100.0 * np.mean(logits[name].argmax(1) == teacher_pred))}
        for view, by_model in views.items():
            diff = class_mean_logits(by_model[teacher], labels, num_classes) - class_mean_logits(
                by_model[name], labels, num_classes)
            entry[view] = {"class_mean_diff_mean_abs": float(np.nanmean(np.abs(diff))),
                           "class_mean_diff_max_abs": float(np.nanmax(np.abs(diff)))}
        result["students"][name] = entry
    return result


# ----------------------------------------------------------------------------- figures


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, title: str = "") -> str:
    """Title, lay out, write ``path`` (PNG; local or ``gs://``) and close ``fig``; returns ``path``."""
    plt = pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()  # matplotlib writes local files only: the bytes go through zkd.paths
    fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or None, dpi=100)
    plt.close(fig)
    with paths.open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def plot_distributions(logits: dict, path: str, title: str = "") -> str:
    """Fig. 5: histograms of the per-sample logit mean and std, raw and standardized."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, view in enumerate(("raw", "standardized")):
        by_model = {k: (np.asarray(losses.standardize(v)) if view == "standardized" else v) for k, v in logits.items()}
        stats = {k: per_sample(v) for k, v in by_model.items()}
        for col, key in enumerate(("mean", "std")):
            ax = axes[row, col]
            values = np.concatenate([s[key] for s in stats.values()])
            lo, hi = float(values.min()), float(values.max())
            span = max(hi - lo, 1e-3)
            bins = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 41)
            for name, s in stats.items():
                ax.hist(s[key], bins=bins, alpha=0.5, label=f"{name} (mean {np.mean(s[key]):.3f})")
            ax.set_title(f"{view} logits: per-sample {key} over classes")
            ax.set_xlabel(f"logit {key}")
            ax.set_ylabel("test images")
            ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def plot_class_mean_diff(logits: dict, labels: np.ndarray, num_classes: int, path: str, teacher: str = "teacher",
                         title: str = "") -> str:
    """Fig. 3: heatmaps of teacher minus student class-mean logits (raw | standardized), one row per student."""
    plt = pyplot()
    students = [k for k in logits if k != teacher]
    fig, axes = plt.subplots(len(students), 2, figsize=(10, 4.4 * len(students)), squeeze=False)
    for row, name in enumerate(students):
        for col, view in enumerate(("raw", "standardized")):
            f = (lambda v: np.asarray(losses.standardize(v))) if view == "standardized" else (lambda v: v)
            diff = (class_mean_logits(f(logits[teacher]), labels, num_classes)
                    - class_mean_logits(f(logits[name]), labels, num_classes))
            bound = float(np.nanmax(np.abs(diff))) or 1.0
            ax = axes[row, col]
            image = ax.imshow(diff, cmap="coolwarm", vmin=-bound, vmax=bound)
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_title(f"{view}: {teacher} - {name}\nmean |diff| {np.nanmean(np.abs(diff)):.3f}, "
                         f"max {bound:.3f}", fontsize=9)
            ax.set_xlabel("logit of class")
            ax.set_ylabel("true class")
    return save_figure(fig, path, title)


def run(teacher: str, students: list[str], dataset: str, data_dir: str | None, out_dir: str,
        teacher_model: str = "", batch_size: int = 500, max_examples: int = -1, title: str = "",
        return_logits: bool = False) -> dict:
    """Load, compute logits, analyse, plot; returns the JSON dict (also written to ``out_dir``),
    plus ``"logits"`` ({label: [N, K]}) and ``"labels"`` when ``return_logits``."""
    info = data.get_info(dataset)
    t_label, t_path, t_model = parse_spec(teacher, "teacher")
    models = {t_label: load_model(t_path, t_model or teacher_model, info.num_classes, info.image_shape)}
    for i, spec in enumerate(students):
        label, path, model = parse_spec(spec)
        if label in models:
            label = f"{label}_{i}"
        models[label] = load_model(path, model, info.num_classes, info.image_shape)
    logits, labels = test_logits(models, dataset, data_dir, batch_size, max_examples)
    result = analyse(logits, labels, info.num_classes, teacher=t_label)
    result["dataset"] = dataset
    result["sources"] = {t_label: t_path, **{parse_spec(s)[0]: parse_spec(s)[1] for s in students}}
    paths.makedirs(out_dir)
    result["figures"] = {
        "distributions": plot_distributions(logits, paths.join(out_dir, "logit_distributions.png"), title),
        "class_mean_diff": plot_class_mean_diff(logits, labels, info.num_classes,
                                                paths.join(out_dir, "class_mean_logit_diff.png"), t_label, title),
    }
    paths.write_text_atomic(paths.join(out_dir, "logit_stats.json"), json.dumps(result, indent=2))
    if return_logits:
        result = {**result, "logits": logits, "labels": labels}
    return result


def format_result(result: dict) -> str:
    """A markdown table of the headline numbers."""
    lines = ["| model | top-1 (%) | agreement (%) | mean logit std raw | mean logit std standardized | "
             "class-mean diff raw: mean / max | standardized: mean / max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in result["models"].items():
        s = result["students"].get(name)
        agree = f"{s['agreement']:.2f}" if s else ""
        raw = f"{s['raw']['class_mean_diff_mean_abs']:.3f} / {s['raw']['class_mean_diff_max_abs']:.3f}" if s else ""
        std = (f"{s['standardized']['class_mean_diff_mean_abs']:.3f} / "
               f"{s['standardized']['class_mean_diff_max_abs']:.3f}") if s else ""
        lines.append(f"| {name} | {m['top1']:.2f} | {agree} | {m['raw']['logit_std']['mean']:.3f} | "
                     f"{m['standardized']['logit_std']['mean']:.3f} | {raw} | {std} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="[LABEL=]PATH[@MODEL] of the teacher")
    parser.add_argument("--teacher_model", default="", help="the teacher's architecture, for a .pth")
    parser.add_argument("--student", action="append", required=True, help="[LABEL=]PATH[@MODEL]; repeat")
    parser.add_argument("--dataset", default="fashion_mnist", help=f"one of {sorted(data.DATASETS)}")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default TFDS's)")
    parser.add_argument("--out_dir", default="logit_stats",
                        help="where the PNGs and logit_stats.json go (local or gs://)")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--max_examples", type=int, default=-1, help="-1: the whole test split")
    args = parser.parse_args(argv)
    result = run(args.teacher, args.student, args.dataset, args.data_dir, args.out_dir, args.teacher_model,
                 args.batch_size, args.max_examples)
    print(format_result(result))
    print(f"{result['num_examples']} test images; figures and logit_stats.json in {args.out_dir}")
    return result


if __name__ == "__main__":
    main()
