r"""Logit standardization at a converged budget: a Fashion-MNIST study with sweeps (issue #16, Part A.3).

    python experiments/fashion_mnist_converged.py               # everything (~65 min on a 2-core CPU)
    python experiments/fashion_mnist_converged.py --plan        # the runs, nothing trained

The 600-step study (experiments/fashion_mnist_study.py, results/fashion_mnist.md) trained its
students for 4 short epochs: too short to say whether LS helps once students converge. This one
trains a teacher and its students until their accuracy stops improving, tunes KD and KD+LS the way
the paper's authors advise for a new pair, and runs 3 seeds of every method. To fit a 2-core CPU
(~70 minutes), it trains on a 10,000-image slice of the training set and uses zkd's sweeps: all
students of one sweep share one data stream and one teacher forward per batch.

- Data: Fashion-MNIST read as the TFDS dataset ``tfds:fashion_mnist`` (docs/data.md: slices,
  normalization computed over the training slice, crop-and-flip augmentation of in-memory sets),
  training on ``--train_split`` (default ``train[:10000]``); settings are chosen on a
  validation slice no run trains on (``--val_split``, default ``train[50000:]``, 10,000 images);
  the final numbers are on the 10,000 test images, which no choice looked at.
- Teacher: resnet20, cross-entropy, ``--teacher_epochs`` epochs (SGD 0.05, x0.1 at 60% / 85%).
- Tuning (one sweep per method, validation top-1): KD and KD+LS, each over the authors' grid, base
  temperature {2, 3} x KD weight {3, 6, 9, 12, 15} (CE 0.1), resnet8 students, seed 0, on a shorter
  budget (``--tune_epochs``, default 4, same learning-rate shape) than the final runs: a 10-student
  sweep trains at ~850 student-images/s here, and 2 grids x 10 students x 12 epochs would take
  ~70 minutes alone. Settings chosen on the short budget may not be the best at the full one; the
  final runs' curves show how far each method still moved after epoch 4.
- Final (one sweep per method, seeds 0, 1, 2, test top-1): KD and KD+LS at their chosen setting;
  DKD (T 4, alpha 1, beta 8, CE 1) and DKD+LS (base T 2, alpha 9, beta 72 = the authors' default
  weight 9 on DKD's 1 / 8) with DKD's warm-up, ``--dkd_warmup`` epochs (the recipe's 20 of 240
  epochs, scaled up to the shortest warm-up that has an effect: the factor is min(epoch / w, 1)
  with epochs counted from 1, so w = 1 is no warm-up). DKD is not tuned over the grid: its weight
  multiplies alpha and beta together, which is not one of zkd's sweep axes.
- Converged: every run's learning rate steps x0.1 at 60% and 85% of its epochs; the results list
  each run's top-1 after every epoch, the epoch of its best top-1, and the change over its last
  third of epochs (at the two lowest learning rates). A run counts as converged when that change
  is within +-0.3 points (the test set's binomial std at 90% is 0.3 points).

Output: ``--results`` (default experiments/results/fashion_mnist_converged.md), with the commands,
the tuning grids, the final table (mean +- sample std over seeds, best and last top-1), the paired
per-seed LS effects and the convergence table. Every run resumes from its workdir; rerunning the
command after an interruption finishes the study and rewrites the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zkd import metrics_io, paths, quickstart, recipes, sweep, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GRID_T = (2.0, 3.0)
GRID_W = (3.0, 6.0, 9.0, 12.0, 15.0)
SEEDS = (0, 1, 2)
LABELS = {"kd": "KD", "kd_ls": "KD+LS", "dkd": "DKD", "dkd_ls": "DKD+LS"}


def student_config(args, method: str, ls: bool, teacher_dir: str, test_split: str, epochs: int):
    c = recipes.fashion_mnist(method, args.student, args.teacher, ls, epochs=epochs, teacher_checkpoint=teacher_dir)
    c.dataset, c.data_dir = "tfds:fashion_mnist", args.data_dir
    c.data.train_split, c.data.test_split = args.train_split, test_split
    if method == "dkd":
        c.loss.dkd_warmup_epochs = float(args.dkd_warmup)
    return c


def plan(args) -> list[tuple[str, str, object]]:
    """(name, kind, config) of every run, in order: the teacher, the tuning sweeps, the final sweeps
    (the final KD / KD+LS settings are filled in after tuning)."""
    root = args.workdir_root
    teacher = recipes.fashion_mnist("ce", args.teacher, epochs=args.teacher_epochs)
    teacher.dataset, teacher.data_dir = "tfds:fashion_mnist", args.data_dir
    teacher.data.train_split, teacher.data.test_split = args.train_split, "test"
    runs = [("teacher", "single", teacher)]
    tdir = paths.join(root, "teacher")
    for key, ls in (("kd", False), ("kd_ls", True)):
        c = student_config(args, "kd", ls, tdir, args.val_split, args.tune_epochs)
        c.sweep.temperature, c.sweep.kd_weight = GRID_T, GRID_W
        runs.append((f"tune_{key}", "sweep", c))
    for key, method, ls in (("kd", "kd", False), ("kd_ls", "kd", True), ("dkd", "dkd", False), ("dkd_ls", "dkd", True)):
        c = student_config(args, method, ls, tdir, "test", args.student_epochs)
        c.sweep.seed = SEEDS
        runs.append((f"final_{key}", "sweep", c))
    return runs


def choose(points: list[dict]) -> tuple[float, float]:
    """(temperature, kd_weight) of the tuning point with the best validation top-1 (the first of
    equals in grid order)."""
    best = max(points, key=lambda p: p["best_top1"])
    return best["values"]["temperature"], best["values"]["kd_weight"]


def eval_curve(workdir: str) -> list[float]:
    return [r["top1"] for r in metrics_io.read_metrics(workdir, "eval")]


def convergence(curve: list[float]) -> dict:
    third = max(1, len(curve) // 3)
    return {"best": max(curve), "best_epoch": int(np.argmax(curve)) + 1, "last": curve[-1],
            "last_third_change": curve[-1] - curve[-third - 1], "converged": abs(curve[-1] - curve[-third - 1]) <= 0.3}


def mean_std(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def run_study(args) -> None:
    paths.makedirs(args.workdir_root)
    print(quickstart.ensure_fashion_mnist(args.data_dir, args.source), flush=True)
    runs = plan(args)
    out = {"args": vars(args), "runs": {}, "seconds": {}}
    chosen = {}
    for name, kind, config in runs:
        workdir = paths.join(args.workdir_root, name)
        if name.startswith("final_kd"):
            key = name[len("final_"):]
            config.loss.temperature, config.loss.kd_weight = chosen[key]
        start = time.time()
        print(f"== {name}: {kind}, {len(recipes.swept_axes(config)) and np.prod([len(v) for v in recipes.swept_axes(config).values()]) or 1} "
              f"student(s), {config.num_epochs} epochs -> {workdir}", flush=True)
        if kind == "single":
            summary = train.train_and_evaluate(config, workdir)
            out["runs"][name] = {"summary": summary, "curve": eval_curve(workdir)}
        else:
            result = sweep.train_sweep(config, workdir)
            points = [{"values": p["values"], "best_top1": p["best_top1"], "last_top1": p["last_top1"],
                       "curve": eval_curve(p["workdir"])} for p in result["points"]]
            out["runs"][name] = {"points": points, "images_per_second": result["images_per_second"]}
            if name.startswith("tune_"):
                chosen[name[len("tune_"):]] = choose(points)
        out["seconds"][name] = time.time() - start
        out["chosen"] = chosen
        paths.write_text_atomic(paths.join(args.workdir_root, "study.json"), json.dumps(out, indent=1))
    paths.write_text_atomic(args.results, report(args, out))
    print(f"results: {args.results}", flush=True)


def report(args, out) -> str:
    runs, chosen = out["runs"], out["chosen"]
    lines = ["# Logit standardization at a converged budget: Fashion-MNIST (generated)", "",
             "Generated by `experiments/fashion_mnist_converged.py` (design and decisions: its docstring). Command:", "",
             "```", "python experiments/fashion_mnist_converged.py " + " ".join(
                 f"--{k}={shlex.quote(str(v))}" for k, v in sorted(vars(args).items()) if k not in ("plan", "report_only")), "```", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; total {sum(out['seconds'].values()) / 60:.1f} min "
             f"({', '.join(f'{k} {v / 60:.1f}' for k, v in out['seconds'].items())}).", ""]
    t = runs["teacher"]
    tc = convergence(t["curve"])
    lines += [f"Teacher {args.teacher}: test top-1 best {tc['best']:.2f} (epoch {tc['best_epoch']}), last {tc['last']:.2f} "
              f"after {len(t['curve'])} epochs on `{args.train_split}`.", ""]
    lines += ["## Tuning (validation top-1 on `" + args.val_split + f"`, best over {args.tune_epochs} epochs, seed 0)", ""]
    for key in ("kd", "kd_ls"):
        pts = runs[f"tune_{key}"]["points"]
        rate = runs[f"tune_{key}"]["images_per_second"]
        lines += [f"**{LABELS[key]}** (chosen: T {chosen[key][0]:g}, KD weight {chosen[key][1]:g}; the sweep trained "
                  f"{rate:.0f} batch images/s, {rate * len(pts):.0f} student-images/s)", "",
                  "| base T \\ KD weight | " + " | ".join(f"{w:g}" for w in GRID_W) + " |",
                  "|---|" + "---:|" * len(GRID_W)]
        for temp in GRID_T:
            row = {p["values"]["kd_weight"]: p["best_top1"] for p in pts if p["values"]["temperature"] == temp}
            lines.append(f"| {temp:g} | " + " | ".join(f"{row[w]:.2f}" for w in GRID_W) + " |")
        lines.append("")
    lines += ["## Final: test top-1 over seeds 0, 1, 2 (mean ± sample std)", "",
              "| method | setting | best top-1 | last top-1 | per seed (last) |", "|---|---|---:|---:|---|"]
    settings = {"kd": f"T {chosen['kd'][0]:g}, KD {chosen['kd'][1]:g}, CE 0.1",
                "kd_ls": f"base T {chosen['kd_ls'][0]:g}, KD {chosen['kd_ls'][1]:g}, CE 0.1",
                "dkd": f"T 4, α 1, β 8, CE 1, warm-up {args.dkd_warmup}", "dkd_ls": f"base T 2, α 9, β 72, CE 1, warm-up {args.dkd_warmup}"}
    finals = {}
    for key in ("kd", "kd_ls", "dkd", "dkd_ls"):
        if f"final_{key}" not in runs:
            lines.append(f"| {LABELS[key]} | {settings[key]} | not run yet | | |")
            continue
        pts = sorted(runs[f"final_{key}"]["points"], key=lambda p: p["values"]["seed"])
        finals[key] = pts
        per_seed = ", ".join(f"{p['last_top1']:.2f}" for p in pts)
        lines.append(f"| {LABELS[key]} | {settings[key]} | {mean_std([p['best_top1'] for p in pts])} | "
                     f"{mean_std([p['last_top1'] for p in pts])} | {per_seed} |")
    lines += ["", "Paired LS effect (same seed, same data order; last top-1, points):", ""]
    for base, ls in (("kd", "kd_ls"), ("dkd", "dkd_ls")):
        if base not in finals or ls not in finals:
            continue
        diffs = [b["last_top1"] - a["last_top1"] for a, b in zip(finals[base], finals[ls])]
        lines.append(f"- {LABELS[ls]} - {LABELS[base]}: {', '.join(f'{d:+.2f}' for d in diffs)} "
                     f"(mean {np.mean(diffs):+.2f})")
    lines += ["", "## Convergence (top-1 after each epoch)", "",
              "| run | epochs | best (epoch) | last | change over the last third | converged (±0.3) |", "|---|---:|---|---:|---:|---|"]
    rows = [("teacher", t["curve"])] + [(f"{LABELS[k]} seed {p['values']['seed']}", p["curve"])
                                        for k in finals for p in finals[k]]
    for name, curve in rows:
        c = convergence(curve)
        lines.append(f"| {name} | {len(curve)} | {c['best']:.2f} ({c['best_epoch']}) | {c['last']:.2f} | "
                     f"{c['last_third_change']:+.2f} | {'yes' if c['converged'] else 'no'} |")
    lines += ["", "Curves (test top-1 per epoch):", ""]
    lines += [f"- {name}: {', '.join(f'{v:.1f}' for v in curve)}" for name, curve in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir_root", default="workdirs/fashion_mnist_converged")
    p.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")))
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--results", default=os.path.join(HERE, "results", "fashion_mnist_converged.md"))
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--train_split", default="train[:10000]")
    p.add_argument("--val_split", default="train[50000:]")
    p.add_argument("--teacher_epochs", type=int, default=15)
    p.add_argument("--student_epochs", type=int, default=12)
    p.add_argument("--tune_epochs", type=int, default=4)
    p.add_argument("--dkd_warmup", type=int, default=2)
    p.add_argument("--plan", action="store_true")
    p.add_argument("--report_only", action="store_true",
                   help="rewrite --results from the runs finished so far (study.json); trains nothing")
    args = p.parse_args(argv)
    if args.plan:
        for name, kind, config in plan(args):
            axes = recipes.swept_axes(config)
            print(f"{name:14s} {kind:6s} {config.method:4s} ls={int(config.logit_stand)} epochs {config.num_epochs} "
                  f"test_split {config.data.test_split} {axes or ''}")
        return
    if args.report_only:
        out = json.loads(paths.read_text(paths.join(args.workdir_root, "study.json")))
        paths.write_text_atomic(args.results, report(args, out))
        print(f"results (runs finished so far: {', '.join(out['runs'])}): {args.results}")
        return
    run_study(args)


if __name__ == "__main__":
    sys.exit(main())
