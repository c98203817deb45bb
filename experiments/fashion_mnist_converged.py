r"""Logit standardization at a converged budget: a Fashion-MNIST study with sweeps (issue #16, Part A.3).

    python experiments/fashion_mnist_converged.py               # everything (~2 h on a 2-core CPU)
    python experiments/fashion_mnist_converged.py --plan        # the runs, nothing trained
    python experiments/fashion_mnist_converged.py --report_only # rewrite the results from the runs finished

The 600-step study (experiments/fashion_mnist_study.py, results/fashion_mnist.md) trained its
students for 4 short epochs: too short to say whether LS helps once students converge. This one
trains a teacher and its students until their accuracy stops improving, tunes every method the way
the paper's authors advise for a new pair, and runs 3 seeds of every method. To fit a 2-core CPU,
it trains on a 10,000-image slice of the training set and uses zkd's sweeps: all students of one
sweep share one data stream and one teacher forward per batch. The teacher-logit cache does not
pay here: with the crop-and-flip augmentation it holds every image's 162 views (81 crop offsets x
2 flips), 162 teacher forwards per image against the 12 per image that 12 epochs of sweeps need.

- Data: Fashion-MNIST read as the TFDS dataset ``tfds:fashion_mnist`` (docs/data.md: slices,
  normalization computed over the training slice, crop-and-flip augmentation of in-memory sets),
  training on ``--train_split`` (default ``train[:10000]``); settings are chosen on a
  validation slice no run trains on (``--val_split``, default ``train[50000:]``, 10,000 images);
  the final numbers are on the 10,000 test images, which no choice looked at.
- Teacher: resnet20, cross-entropy, ``--teacher_epochs`` epochs (SGD 0.05, x0.1 at 60% / 85%).
- Tuning (one 10-student sweep per method, validation top-1, resnet8 students, seed 0): the
  authors' grid, base temperature {2, 3} x weight {3, 6, 9, 12, 15}. For KD and KD+LS the weight is
  the KD weight (CE 0.1; a Cartesian-product sweep); for DKD and DKD+LS it multiplies DKD's alpha
  and beta together, alpha w and beta 8 w (the released code's "kd-weight" with LS; CE 1), a sweep
  with ``config.sweep.mode="zip"`` over temperature, alpha and beta. The tuning budget is shorter
  (``--tune_epochs``, default 4, same learning-rate shape) than the final runs': a 10-student sweep
  trains at ~650-850 student-images/s here, and 4 grids x 10 students x 12 epochs would take
  ~3 hours alone. Settings chosen on the short budget may not be the best at the full one; the
  final runs' curves show how far each method still moved after epoch 4.
- Final (one sweep per method, seeds 0, 1, 2, test top-1): KD, KD+LS, DKD and DKD+LS at their
  chosen settings, and, as untuned references, DKD at its recipe (T 4, alpha 1, beta 8) and DKD+LS
  at the authors' default weight 9 (base T 2, alpha 9, beta 72). Every DKD run, tuning included,
  has DKD's warm-up, ``--dkd_warmup`` epochs (the recipe's 20 of 240 epochs, scaled up to the
  shortest warm-up that has an effect: the factor is min(epoch / w, 1) with epochs counted from 1,
  so w = 1 is no warm-up).
- Converged: every run's learning rate steps x0.1 at 60% and 85% of its epochs; the results list
  each run's top-1 after every epoch, the epoch of its best top-1, and the change over its last
  third of epochs (at the two lowest learning rates). A run counts as converged when that change
  is within +-0.3 points (the test set's binomial std at 90% is 0.3 points).

Output: ``--results`` (default experiments/results/fashion_mnist_converged.md), with the commands,
the tuning grids, the final table (mean +- sample std over seeds, best and last top-1), the paired
per-seed LS effects and the convergence table, and figures in ``--figures_dir`` (the tuning
curves, test top-1 per epoch). A rewrite keeps the file's hand-written "## Analysis" section.
Every run resumes from its workdir; rerunning the command after an interruption finishes the
study (finished runs are skipped) and rewrites the results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zkd import metrics_io, paths, quickstart, recipes, sweep, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling(name: str):
    """experiments/<name>.py as a module, loaded by its path (experiments/ is a folder of scripts)."""
    spec = importlib.util.spec_from_file_location(f"zkd_experiments_{name}", os.path.join(HERE, f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


logit_stats = _sibling("logit_stats")      # figures: matplotlib on Agg, PNGs written through zkd.paths
results_file = _sibling("results_file")    # the kept hand-written analysis, figure links

GRID_T = (2.0, 3.0)
GRID_W = (3.0, 6.0, 9.0, 12.0, 15.0)
SEEDS = (0, 1, 2)
LABELS = {"kd": "KD", "kd_ls": "KD+LS", "dkd": "DKD", "dkd_ls": "DKD+LS"}
# Untuned reference runs: DKD's recipe, and DKD+LS at the authors' default weight 9 (alpha and beta x 9).
DEFAULTS = {"dkd": {"temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0},
            "dkd_ls": {"temperature": 2.0, "dkd_alpha": 9.0, "dkd_beta": 72.0}}
DKD_BETA_PER_ALPHA = 8.0  # DKD's recipe (alpha 1, beta 8); a weight w multiplies both


def student_config(args, method: str, ls: bool, teacher_dir: str, test_split: str, epochs: int):
    c = recipes.fashion_mnist(method, args.student, args.teacher, ls, epochs=epochs, teacher_checkpoint=teacher_dir)
    c.dataset, c.data_dir = "tfds:fashion_mnist", args.data_dir
    c.data.train_split, c.data.test_split = args.train_split, test_split
    if method == "dkd":
        c.loss.dkd_warmup_epochs = float(args.dkd_warmup)
    return c


def set_setting(config, key: str, temperature: float, weight: float) -> None:
    """Give ``config`` the tuning grid's point (base temperature, weight) of method ``key``: the
    KD weight for KD, alpha = w and beta = 8 w for DKD."""
    config.loss.temperature = temperature
    if key.startswith("dkd"):
        config.loss.dkd_alpha, config.loss.dkd_beta = weight, DKD_BETA_PER_ALPHA * weight
    else:
        config.loss.kd_weight = weight


def plan(args) -> list[tuple[str, str, object]]:
    """(name, kind, config) of every run, in order: the teacher, the tuning sweeps, the final sweeps
    (their settings are filled in after tuning), the untuned DKD / DKD+LS references."""
    root = args.workdir_root
    teacher = recipes.fashion_mnist("ce", args.teacher, epochs=args.teacher_epochs)
    teacher.dataset, teacher.data_dir = "tfds:fashion_mnist", args.data_dir
    teacher.data.train_split, teacher.data.test_split = args.train_split, "test"
    runs = [("teacher", "single", teacher)]
    tdir = paths.join(root, "teacher")
    methods = (("kd", "kd", False), ("kd_ls", "kd", True), ("dkd", "dkd", False), ("dkd_ls", "dkd", True))
    for key, method, ls in methods:
        c = student_config(args, method, ls, tdir, args.val_split, args.tune_epochs)
        if method == "kd":  # the grid as a Cartesian product of two axes
            c.sweep.temperature, c.sweep.kd_weight = GRID_T, GRID_W
        else:  # the same grid, its weight on alpha and beta together: three axes read side by side
            grid = [(t, w) for t in GRID_T for w in GRID_W]
            c.sweep.mode = "zip"
            c.sweep.temperature = tuple(t for t, _ in grid)
            c.sweep.dkd_alpha = tuple(w for _, w in grid)
            c.sweep.dkd_beta = tuple(DKD_BETA_PER_ALPHA * w for _, w in grid)
        runs.append((f"tune_{key}", "sweep", c))
    for key, method, ls in methods:
        c = student_config(args, method, ls, tdir, "test", args.student_epochs)
        c.sweep.seed = SEEDS
        runs.append((f"final_{key}", "sweep", c))
    for key, ls in (("dkd", False), ("dkd_ls", True)):
        c = student_config(args, "dkd", ls, tdir, "test", args.student_epochs)
        for field, value in DEFAULTS[key].items():
            c.loss[field] = value
        c.sweep.seed = SEEDS
        runs.append((f"default_{key}", "sweep", c))
    return runs


def weight_of(values: dict) -> float:
    """The grid weight of a tuning point: its KD weight, or DKD's alpha."""
    return values["kd_weight"] if "kd_weight" in values else values["dkd_alpha"]


def choose(points: list[dict]) -> tuple[float, float]:
    """(temperature, weight) of the tuning point with the best validation top-1 (the first of
    equals in grid order)."""
    best = max(points, key=lambda p: p["best_top1"])
    return best["values"]["temperature"], weight_of(best["values"])


def eval_curve(workdir: str) -> list[float]:
    return [r["top1"] for r in metrics_io.read_metrics(workdir, "eval")]


def convergence(curve: list[float]) -> dict:
    third = max(1, len(curve) // 3)
    return {"best": max(curve), "best_epoch": int(np.argmax(curve)) + 1, "last": curve[-1],
            "last_third_change": curve[-1] - curve[-third - 1], "converged": abs(curve[-1] - curve[-third - 1]) <= 0.3}


def num_students(config) -> int:
    """Students a run trains: its sweep's points (1 for a single run)."""
    return len(sweep.grid_points(config)) if recipes.swept_axes(config) else 1


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
        if name.startswith("final_"):
            set_setting(config, name[len("final_"):], *chosen[name[len("final_"):]])
        print(f"== {name}: {kind}, {num_students(config)} student(s), {config.num_epochs} epochs -> {workdir}",
              flush=True)
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
        # training time over all starts of the run (a resumed or finished run adds only what it trained now)
        out["seconds"][name] = (summary if kind == "single" else result)["train_seconds"]
        out["chosen"] = chosen
        paths.write_text_atomic(paths.join(args.workdir_root, "study.json"), json.dumps(out, indent=1))
    write_results(args, out)
    print(f"results: {args.results}", flush=True)


ANALYSIS_HEADING = "## Analysis"
ANALYSIS_PLACEHOLDER = ANALYSIS_HEADING + "\n\n_To be written by hand from the numbers above._\n"


def kept_analysis(results_path: str) -> str:
    """The hand-written analysis (from its heading to the end) of an existing results file, kept
    when the generated part is rewritten; a placeholder when there is none."""
    return results_file.kept_section(results_path, ANALYSIS_HEADING) or ANALYSIS_PLACEHOLDER


def plot_curves(out: dict, path: str) -> str:
    """Test top-1 per epoch of each tuned method (mean over seeds, the seeds' range shaded) and of
    the untuned DKD references (dashed); the teacher's best as a line."""
    plt = logit_stats.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for prefix, style, note in (("final", "-", "tuned"), ("default", "--", "untuned")):
        for key, label in LABELS.items():
            run = out["runs"].get(f"{prefix}_{key}")
            if not run:
                continue
            curves = np.array([p["curve"] for p in run["points"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            ax.plot(epochs, curves.mean(axis=0), style, marker="o", ms=3, label=f"{label}, {note}")
            if prefix == "final":
                ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), alpha=0.15)
    teacher = out["runs"]["teacher"]["curve"]
    ax.axhline(max(teacher), color="black", ls=":", lw=0.8, label=f"teacher (best {max(teacher):.2f})")
    ax.set_ylim(max(50.0, ax.get_ylim()[0]), None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over 3 seeds")
    ax.legend(loc="lower right", fontsize=8)
    return logit_stats.save_figure(fig, path, "Fashion-MNIST, resnet20 -> resnet8, converged budget")


def plot_tuning(out: dict, path: str, tune_epochs: int) -> str:
    """Validation top-1 of each tuning sweep against its weight, one line per base temperature."""
    plt = logit_stats.pyplot()
    keys = [k for k in LABELS if f"tune_{k}" in out["runs"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.8), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = out["runs"][f"tune_{key}"]["points"]
        for temp in GRID_T:
            row = sorted((weight_of(p["values"]), p["best_top1"]) for p in pts if p["values"]["temperature"] == temp)
            ax.plot([w for w, _ in row], [v for _, v in row], marker="o", label=f"base T {temp:g}")
        ax.set_title(LABELS[key])
        ax.set_xticks(GRID_W, [f"{w:g}" for w in GRID_W])
        ax.set_xlabel("DKD weight w (alpha w, beta 8w)" if key.startswith("dkd") else "KD weight (CE 0.1)",
                      fontsize=8)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"validation top-1 (%), best of {tune_epochs} epochs")
    return logit_stats.save_figure(fig, path, "Tuning on the validation slice (seed 0)")


def write_results(args, out: dict) -> None:
    """``args.results``: the generated report, the figures (in ``args.figures_dir``), and the
    hand-written analysis of the file it replaces."""
    figures = []
    paths.makedirs(args.figures_dir)
    if any(name.startswith("tune_") for name in out["runs"]):
        figures.append(("tuning", plot_tuning(out, paths.join(args.figures_dir, "tuning.png"), args.tune_epochs)))
    if any(name.startswith("final_") for name in out["runs"]):
        figures.append(("test top-1 per epoch", plot_curves(out, paths.join(args.figures_dir, "curves.png"))))
    lines = ["## Figures", ""] + [f"![{title}]({results_file.link(path, args.results)})" for title, path in figures]
    text = report(args, out) + "\n" + "\n".join(lines) + "\n\n" + kept_analysis(args.results)
    paths.write_text_atomic(args.results, text)


def _in_repo(value: str) -> str:
    """A path inside the repository as a path relative to its root (the command as run from there)."""
    root = os.path.dirname(HERE)
    return os.path.relpath(value, root) if os.path.isabs(value) and value.startswith(root + os.sep) else value


def setting_text(key: str, temperature: float, weight: float, warmup: int) -> str:
    if key.startswith("dkd"):
        t = "base T" if key.endswith("_ls") else "T"
        return f"{t} {temperature:g}, α {weight:g}, β {DKD_BETA_PER_ALPHA * weight:g}, CE 1, warm-up {warmup}"
    return f"{'base T' if key.endswith('_ls') else 'T'} {temperature:g}, KD {weight:g}, CE 0.1"


def report(args, out) -> str:
    runs, chosen = out["runs"], out["chosen"]
    lines = ["# Logit standardization at a converged budget: Fashion-MNIST (generated)", "",
             "Generated by `experiments/fashion_mnist_converged.py` (design and decisions: its docstring). Command:", "",
             "```", "python experiments/fashion_mnist_converged.py " + " ".join(
                 f"--{k}={shlex.quote(_in_repo(str(v)))}" for k, v in sorted(vars(args).items())
                 if k not in ("plan", "report_only")), "```", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; training time {sum(out['seconds'].values()) / 60:.1f} min in all "
             f"({', '.join(f'{k} {v / 60:.1f}' for k, v in out['seconds'].items())}; steps only, over all starts).", ""]
    t = runs["teacher"]
    tc = convergence(t["curve"])
    lines += [f"Teacher {args.teacher}: test top-1 best {tc['best']:.2f} (epoch {tc['best_epoch']}), last {tc['last']:.2f} "
              f"after {len(t['curve'])} epochs on `{args.train_split}`.", ""]
    lines += ["## Tuning (validation top-1 on `" + args.val_split + f"`, best over {args.tune_epochs} epochs, seed 0)", ""]
    for key in LABELS:
        if f"tune_{key}" not in runs:
            lines += [f"**{LABELS[key]}**: not tuned yet", ""]
            continue
        pts = runs[f"tune_{key}"]["points"]
        rate = runs[f"tune_{key}"]["images_per_second"]
        weight = "w (α w, β 8w)" if key.startswith("dkd") else "KD weight"
        lines += [f"**{LABELS[key]}** (chosen: {setting_text(key, *chosen[key], args.dkd_warmup)}; the sweep trained "
                  f"{rate:.0f} batch images/s, {rate * len(pts):.0f} student-images/s)", "",
                  f"| base T \\ {weight} | " + " | ".join(f"{w:g}" for w in GRID_W) + " |",
                  "|---|" + "---:|" * len(GRID_W)]
        for temp in GRID_T:
            row = {weight_of(p["values"]): p["best_top1"] for p in pts if p["values"]["temperature"] == temp}
            lines.append(f"| {temp:g} | " + " | ".join(f"{row[w]:.2f}" for w in GRID_W) + " |")
        lines.append("")
    lines += ["## Final: test top-1 over seeds 0, 1, 2 (mean ± sample std)", "",
              "| method | setting | best top-1 | last top-1 | per seed (last) |", "|---|---|---:|---:|---|"]
    # (run, method, label in the final table, label in the convergence table, setting)
    rows_of = [(f"final_{k}", k, LABELS[k], LABELS[k], chosen.get(k)) for k in LABELS] + [
        (f"default_{k}", k, f"{LABELS[k]}, untuned", f"{LABELS[k]} untuned",
         (DEFAULTS[k]["temperature"], DEFAULTS[k]["dkd_alpha"])) for k in DEFAULTS]
    finals, curve_label = {}, {}
    for name, key, label, short, setting in rows_of:
        text = setting_text(key, *setting, args.dkd_warmup) if setting else "(chosen by tuning)"
        if name not in runs:
            lines.append(f"| {label} | {text} | not run yet | | |")
            continue
        pts = sorted(runs[name]["points"], key=lambda p: p["values"]["seed"])
        finals[name], curve_label[name] = pts, short
        per_seed = ", ".join(f"{p['last_top1']:.2f}" for p in pts)
        lines.append(f"| {label} | {text} | {mean_std([p['best_top1'] for p in pts])} | "
                     f"{mean_std([p['last_top1'] for p in pts])} | {per_seed} |")
    lines += ["", "Paired LS effect (same seed, same data order; last top-1, points):", ""]
    for prefix, base, note in (("final", "kd", "each at its tuned setting"), ("final", "dkd", "each at its tuned setting"),
                               ("default", "dkd", "both untuned")):
        a, b = finals.get(f"{prefix}_{base}"), finals.get(f"{prefix}_{base}_ls")
        if a is None or b is None:
            continue
        diffs = [y["last_top1"] - x["last_top1"] for x, y in zip(a, b)]
        lines.append(f"- {LABELS[base + '_ls']} - {LABELS[base]}, {note}: "
                     f"{', '.join(f'{d:+.2f}' for d in diffs)} (mean {np.mean(diffs):+.2f})")
    lines += ["", "## Convergence (top-1 after each epoch)", "",
              "| run | epochs | best (epoch) | last | change over the last third | converged (±0.3) |", "|---|---:|---|---:|---:|---|"]
    rows = [("teacher", t["curve"])] + [(f"{curve_label[k]} seed {p['values']['seed']}", p["curve"])
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
    p.add_argument("--figures_dir", default=os.path.join(HERE, "results", "fashion_mnist_converged"))
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
        write_results(args, out)
        print(f"results (runs finished so far: {', '.join(out['runs'])}): {args.results}")
        return
    run_study(args)


if __name__ == "__main__":
    sys.exit(main())
