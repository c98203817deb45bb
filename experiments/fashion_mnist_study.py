r"""Does logit standardization help on real data we have offline? A Fashion-MNIST study with zkd's trainer.

    python experiments/fashion_mnist_study.py --plan            # the runs and a time estimate; trains nothing
    python experiments/fashion_mnist_study.py --measure         # measure img/s of each kind of step here
    python experiments/fashion_mnist_study.py                   # the whole study (~90 min, 2-core CPU)
    python experiments/fashion_mnist_study.py --methods kd,kd_ls,dkd,dkd_ls,mlkd,mlkd_ls,ctkd,ctkd_ls  # + extras

Design (docs/paper.md §3, §6). One resnet20 teacher trained by zkd (cross-entropy); resnet8 students
distilled from it with KD, KD+LS, DKD and DKD+LS (MLKD, CTKD with and without LS when asked for:
``--methods``), 3 seeds each, best and last test top-1 reported as mean ± sample std over seeds;
and the paper's Table 4 ablation, plain KD vs KD+LS at KD weights 0.9, 3, 9, 18 (both at base
temperature 2, CE 0.1, as in the paper's ablation; 3 seeds). The KD+LS run at weight 9 is the
main table's KD+LS run (same config, same workdir: run once). Settings of the main rows are the
paper's CIFAR-100 ones (``zkd.recipes.fashion_mnist``): KD T 4 / KD 0.9 / CE 0.1; KD+LS base
T 2 / KD 9 / CE 0.1; DKD T 4, alpha 1, beta 8, CE 1; DKD+LS T 2, alpha 9, beta 72.

Why these sizes. The budget is ~90 minutes of a 2-core CPU for 1 teacher + 12 main student runs +
7 new ablation settings x 3 seeds = 34 runs. Measured here (``--measure``, batch 128, 28x28x1,
compile excluded) a resnet20 CE step runs at ~350-450 img/s and a resnet8 KD or DKD step with a
resnet20 teacher at ~800-850 img/s; evaluation of the 10,000 test images, done after every
epoch, costs a few seconds, and each run start (compile, teacher evaluation) ~15 s. So:
- teacher resnet20: 6 epochs x 234 steps x 128 images (~3 passes over the 60k training images,
  ~7 min); resnet20 is the quickstart's teacher and reaches ~87% in 4 short epochs;
- students resnet8 (a third of resnet20's parameters, the paper's R56->R20-like gap is too small
  to fit): 4 epochs x 150 steps x 128 (~1.3 passes, ~75 s of steps), ~2 min per run with
  evaluation and start-up; 33 student runs ~70 min.
The learning rate steps (x0.1) after 60% and 85% of the epochs, as the CIFAR recipe's 150/180 of
240. DKD's warm-up (20 of 240 epochs) cannot be shorter than one epoch (``min(epoch/w, 1)`` with
epochs counted from 1), so it is off here (``dkd_warmup_epochs`` 1). CTKD's temperature schedule
(lambda over 10 epochs) does not complete in 4 epochs; MLKD doubles the step cost (two views):
they are left out by default for that reason.

Output: ``--results`` (default experiments/results/fashion_mnist.md) with the tables, the paired
per-seed LS effects, the logit statistics of the seed-0 KD and KD+LS students (Fig. 3 / Fig. 5 of
the paper, through experiments/logit_stats.py), plots in ``--figures_dir`` and the exact commands.
Every run resumes from its workdir; finished runs are skipped; rerunning the command finishes an
interrupted study and rewrites the results. ``--workdir_root``, ``--results`` and ``--figures_dir``
may be local or in a bucket (``gs://bucket/dir``, through ``zkd.paths``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zkd import paths, recipes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _sibling(name: str):
    """experiments/<name>.py as a module, loaded by its path: experiments/ is a folder of scripts,
    not an installed package, and this file may itself be loaded by path (tests/test_experiments.py)."""
    spec = importlib.util.spec_from_file_location(f"zkd_experiments_{name}", os.path.join(HERE, f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


logit_stats = _sibling("logit_stats")
reproduce = _sibling("reproduce")
results_file = _sibling("results_file")

METHOD_LABELS = {"kd": "KD", "kd_ls": "KD+LS", "dkd": "DKD", "dkd_ls": "DKD+LS", "mlkd": "MLKD",
                 "mlkd_ls": "MLKD+LS", "ctkd": "CTKD", "ctkd_ls": "CTKD+LS"}
DEFAULT_RESULTS = os.path.join(HERE, "results", "fashion_mnist.md")
DEFAULT_FIGURES = os.path.join(HERE, "results", "fashion_mnist")
# Assumed throughput for --plan (img/s at batch 128 on the 2-core CPU; --measure gives this machine's).
ASSUMED_IMG_S = {"ce": 380.0, "kd": 800.0, "dkd": 800.0, "ctkd": 780.0, "mlkd": 380.0, "eval": 4000.0}
START_SECONDS = 15.0  # compile + teacher evaluation, per run start


# ----------------------------------------------------------------------------- the runs


def split_method(key: str) -> tuple[str, bool]:
    base = key[:-3] if key.endswith("_ls") else key
    if base not in recipes.METHODS:
        raise ValueError(f"unknown method {key!r}; valid: {', '.join(METHOD_LABELS)}")
    return base, key.endswith("_ls")


def plan_runs(args) -> list[dict]:
    """Every run of the study: {"group", "label", "seed", "config", "workdir", ...}, teacher first;
    runs with identical configs share one entry (the first), later ones point at it."""
    root = args.workdir_root

    def finalize(c):
        c.data_dir = args.data_dir
        c.progress_bar = False
        return recipes.finalize(c)

    teacher_dir = paths.join(root, f"teacher_{args.teacher}")
    runs = [{"group": "teacher", "label": "teacher", "key": "teacher", "seed": args.teacher_seed,
             "workdir": teacher_dir,
             "config": finalize(recipes.fashion_mnist("ce", args.teacher, epochs=args.teacher_epochs,
                                                      seed=args.teacher_seed, train_steps=args.teacher_steps))}]

    def student(method, ls, seed, temperature=-1.0, kd_weight=-1.0):
        c = recipes.fashion_mnist(method, args.student, args.teacher, ls, args.student_epochs, seed, teacher_dir,
                                  args.train_steps, temperature, kd_weight)
        c.loss.dkd_warmup_epochs = 1.0
        return finalize(c)

    for key in args.methods:
        method, ls = split_method(key)
        for seed in args.seeds:
            runs.append({"group": "main", "label": METHOD_LABELS[key], "key": key, "seed": seed,
                         "workdir": paths.join(root, key, f"seed{seed}"), "config": student(method, ls, seed)})
    for weight in args.ablation_weights:
        for ls in (False, True):
            key = f"ablation_{'kd_ls' if ls else 'kd'}_w{weight:g}"
            for seed in args.ablation_seeds:
                runs.append({"group": "ablation", "label": "KD+LS" if ls else "KD", "key": key, "seed": seed,
                             "weight": weight, "ls": ls, "workdir": paths.join(root, key, f"seed{seed}"),
                             "config": student("kd", ls, seed, temperature=2.0, kd_weight=weight)})
    by_config: dict[str, str] = {}
    for run in runs:
        text = run["config"].to_json(sort_keys=True)
        run["workdir"] = by_config.setdefault(text, run["workdir"])
    return runs


def unique_runs(runs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for run in runs:
        if run["workdir"] not in seen:
            seen.add(run["workdir"])
            out.append(run)
    return out


def estimate_seconds(run: dict, img_s: dict) -> float:
    c = run["config"]
    steps = c.steps_per_epoch if c.steps_per_epoch > 0 else 60_000 // c.batch_size
    train_images = c.num_epochs * steps * c.batch_size
    evals = c.num_epochs + (0 if c.method == "ce" else 1)
    return START_SECONDS + train_images / img_s[c.method] + evals * 10_000 / img_s["eval"]


def read_summary(workdir: str):
    path = paths.join(workdir, "summary.json")
    if paths.exists(path):
        return json.loads(paths.read_text(path))
    return None


def is_finished(run: dict) -> bool:
    summary = read_summary(run["workdir"])
    return summary is not None and summary["epochs"] >= run["config"].num_epochs


# ----------------------------------------------------------------------------- throughput


def measure(teacher: str, student: str, batch: int = 128, steps: int = 8) -> dict:
    """img/s of one train step of each kind on this machine (synthetic 28x28x1 batch, randomly
    initialised teacher, compile excluded), and of the student's evaluation step: the compiled
    steps ``zkd.engine.build`` makes for the study's configs (one device)."""
    import jax
    import jax.numpy as jnp

    from zkd import data, engine, models, parallel

    info = data.get_info("fashion_mnist")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, *info.image_shape)).astype(np.float32)
    labels = rng.integers(0, info.num_classes, batch).astype(np.int32)
    t_model = models.build(teacher, info.num_classes)
    t_vars = t_model.init(jax.random.key(1), jnp.zeros((1, *info.image_shape)), train=False)

    def timed(step, state, batch_data, size):
        """(images/s of ``step(state, batch) -> (state, out)``, last state); the state is donated,
        so each call takes the last one's."""
        state, out = step(state, batch_data)
        jax.block_until_ready(out)
        start = time.perf_counter()
        for _ in range(steps):
            state, out = step(state, batch_data)
        jax.block_until_ready(out)
        return size * steps / (time.perf_counter() - start), state

    out = {}
    for method in ("ce", "kd", "dkd", "ctkd"):
        c = recipes.fashion_mnist(method, teacher if method == "ce" else student, teacher, method != "ce")
        c.num_devices = 1
        run = engine.build(c, teacher=(t_model, jax.tree.map(jnp.copy, t_vars)), info=info)
        train_batch = parallel.global_batch({"image": images, "label": labels}, run.mesh)
        out[method], state = timed(run.train_step, run.state, train_batch, batch)
        if method == "kd":  # the student's evaluation step on one eval batch (the recipe's 1000 images)
            n = c.eval_batch_size
            eval_batch = parallel.global_batch({"image": np.resize(images, (n, *info.image_shape)),
                                                "label": np.resize(labels, n), "mask": np.ones(n, bool)}, run.mesh)
            out["eval"], _ = timed(lambda v, b: (v, run.eval_step(v, b)), run.student_variables(state), eval_batch, n)
    out["mlkd"] = out["kd"] / 2.0  # two views per image: about twice the KD step (not measured)
    return out


# ----------------------------------------------------------------------------- results


def _mean_std(values) -> str:
    values = list(values)
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _setting(config) -> str:
    return "CE" if config.method == "ce" else reproduce.setting(config)


def _evals(workdir: str) -> list[dict]:
    from zkd import metrics_io

    return metrics_io.read_metrics(workdir, "eval")


def _epoch_logit_std(workdir: str) -> list[dict]:
    """Per epoch, the mean per-sample logit std over its training steps: ``{"epoch", "student",
    "teacher"}``, from the train records (each the mean over the steps since the previous one)."""
    from zkd import metrics_io

    epochs, sums, steps, previous = [], {}, 0, 0
    for r in metrics_io.read_metrics(workdir):
        if r["kind"] == "train":
            n, previous = r["step"] - previous, r["step"]
            for who in ("student", "teacher"):
                sums[who] = sums.get(who, 0.0) + n * r.get(f"logit_std_{who}", float("nan"))
            steps += n
        elif r["kind"] == "eval" and steps:
            epochs.append({"epoch": r["epoch"], **{who: v / steps for who, v in sums.items()}})
            sums, steps = {}, 0
    return epochs


def _paired(runs_a: list[dict], runs_b: list[dict], field: str = "best_top1") -> list[float]:
    """Per-seed differences b - a over the seeds both have finished."""
    a = {r["seed"]: read_summary(r["workdir"]) for r in runs_a}
    b = {r["seed"]: read_summary(r["workdir"]) for r in runs_b}
    return [b[s][field] - a[s][field] for s in sorted(set(a) & set(b)) if a[s] and b[s]]


def standardized_max_probability(num_classes: int, temperature: float) -> float:
    """The largest probability softmax(Z(x)/tau) can give one class (x one-hot: the extreme case)."""
    from zkd import losses

    z = np.asarray(losses.standardize(np.eye(num_classes, dtype=np.float32)[:1]))[0] / temperature
    p = np.exp(z - z.max())
    return float(p[0] / p.sum())


def teacher_target_probabilities(teacher_logits: np.ndarray, temperature_kd: float, temperature_ls: float) -> dict:
    """Mean max-probability of the teacher's soft targets: plain KD at T vs standardized at base tau."""
    from zkd import losses

    def max_prob(z):
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return float(np.mean(p.max(axis=1) / p.sum(axis=1)))

    return {"kd": max_prob(teacher_logits / temperature_kd),
            "ls": max_prob(np.asarray(losses.standardize(teacher_logits)) / temperature_ls),
            "raw": max_prob(teacher_logits)}


def plot_curves(runs: list[dict], path: str) -> str:
    """Test top-1 per epoch (mean over seeds) for each main method; teacher as a line."""
    plt = logit_stats.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if run["group"] == "main":
            groups.setdefault(run["label"], []).append(run)
    for label, members in groups.items():
        curves = [[e["top1"] for e in _evals(r["workdir"])] for r in members if is_finished(r)]
        if curves:
            n = min(map(len, curves))
            ax.plot(range(1, n + 1), np.mean([c[:n] for c in curves], axis=0), marker="o", label=label)
    teacher = read_summary(runs[0]["workdir"])
    if teacher:
        ax.axhline(teacher["best_top1"], color="black", ls="--", lw=0.8, label="teacher (best)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.legend()
    return logit_stats.save_figure(fig, path)


def plot_ablation(runs: list[dict], weights: list[float], path: str) -> str:
    plt = logit_stats.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for ls in (False, True):
        means, stds, xs = [], [], []
        for w in weights:
            vals = [read_summary(r["workdir"])["best_top1"] for r in runs
                    if r["group"] == "ablation" and r["ls"] == ls and r["weight"] == w and is_finished(r)]
            if vals:
                xs.append(w)
                means.append(np.mean(vals))
                stds.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label="KD+LS (Z-score)" if ls else "plain KD")
    ax.set_xscale("log")
    ax.set_xticks(weights, [f"{w:g}" for w in weights])
    ax.set_xlabel("KD weight (base temperature 2, CE 0.1)")
    ax.set_ylabel("best test top-1 (%)")
    ax.legend()
    return logit_stats.save_figure(fig, path)


def plot_logit_std(runs: list[dict], path: str) -> str:
    """Per-epoch mean per-sample logit std (training batches) of student and teacher, KD vs KD+LS (seed 0)."""
    plt = logit_stats.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    teacher_drawn = False
    for run in runs:
        if run["group"] != "main" or run["seed"] != runs[1]["seed"] or not is_finished(run):
            continue
        stds = _epoch_logit_std(run["workdir"])
        epochs = [e["epoch"] for e in stds]
        if stds:
            ax.plot(epochs, [e["student"] for e in stds], marker="o", label=f"student, {run['label']}")
            if not teacher_drawn:
                ax.plot(epochs, [e["teacher"] for e in stds], "k--", label="teacher")
                teacher_drawn = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean per-sample logit std (train batches)")
    ax.legend()
    return logit_stats.save_figure(fig, path)


ANALYSIS_PLACEHOLDER = "_To be written from the numbers above once the full study has run._"


def _kept_analysis(results_path: str) -> str:
    """The hand-written analysis of an existing results file (kept when the tables are rewritten)."""
    section = results_file.kept_section(results_path)
    analysis = section.partition("\n")[2].strip() if section else ""
    return analysis or ANALYSIS_PLACEHOLDER


def write_results(runs: list[dict], args, command: str, stats: dict | None) -> str:
    paths.makedirs(args.figures_dir)
    rel = lambda p: results_file.link(p, args.results)  # noqa: E731
    teacher_run = runs[0]
    t = read_summary(teacher_run["workdir"])
    c0 = teacher_run["config"]
    student_cfg = next((r["config"] for r in runs if r["group"] != "teacher"), None)
    lines = ["# Fashion-MNIST: does logit standardization help? (zkd's trainer, real data)", "",
             "Generated by `experiments/fashion_mnist_study.py`; every number below is read from the runs' "
             "`summary.json` / `metrics.jsonl` / the logit statistics, none typed in.", "", "## Commands", "",
             "```bash", command, "```", "", "## Set-up", ""]
    lines.append(f"- Teacher {args.teacher}: cross-entropy, {c0.num_epochs} epochs x {c0.steps_per_epoch} steps x "
                 f"{c0.batch_size} images, SGD lr {c0.optimizer.learning_rate:g} (x0.1 at epochs "
                 f"{', '.join(map(str, c0.optimizer.lr_milestones))}), weight decay {c0.optimizer.weight_decay:g}.")
    if student_cfg is not None:
        s = student_cfg
        lines.append(f"- Students {args.student}: {s.num_epochs} epochs x {s.steps_per_epoch} steps x {s.batch_size} "
                     f"images, the same SGD (x0.1 at epochs {', '.join(map(str, s.optimizer.lr_milestones))}); "
                     f"seeds {','.join(map(str, args.seeds))} (ablation: {','.join(map(str, args.ablation_seeds))}).")
    lines.append("- Test top-1 on all 10,000 test images after every epoch; best = best epoch, last = final epoch; "
                 "mean ± sample std (ddof=1) over seeds.")
    lines += ["", "## Teacher", "", "| model | best top-1 (%) | last top-1 (%) | epochs | img/s | train minutes |",
              "|---|---:|---:|---:|---:|---:|"]
    if t:
        lines.append(f"| {args.teacher} | {t['best_top1']:.2f} | {t['last_top1']:.2f} | {t['epochs']} | "
                     f"{t['images_per_second']:.0f} | {t['train_seconds'] / 60:.1f} |")
    lines += ["", "## Students", "",
              "| method | setting | seeds done | best top-1 (%) | last top-1 (%) | agreement w/ teacher (%) | "
              "student logit std, last epoch | img/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if run["group"] == "main":
            groups.setdefault(run["key"], []).append(run)
    for key, members in groups.items():
        done = [read_summary(r["workdir"]) for r in members if is_finished(r)]
        stds = [(_epoch_logit_std(r["workdir"]) or [{"student": float("nan")}])[-1]["student"] for r in members
                if is_finished(r)]
        lines.append(
            f"| {METHOD_LABELS[key]} | {_setting(members[0]['config'])} | {len(done)}/{len(members)} | "
            f"{_mean_std(d['best_top1'] for d in done)} | {_mean_std(d['last_top1'] for d in done)} | "
            f"{_mean_std(d['agreement'] for d in done)} | {_mean_std(stds)} | "
            f"{_mean_std(d['images_per_second'] for d in done)} |")
    lines += ["", "### Effect of LS, paired by seed (with LS minus without)", "",
              "| method | seeds | Δ best top-1 | Δ last top-1 |", "|---|---:|---:|---:|"]
    for key in groups:
        if key.endswith("_ls") and key[:-3] in groups:
            best = _paired(groups[key[:-3]], groups[key], "best_top1")
            last = _paired(groups[key[:-3]], groups[key], "last_top1")
            lines.append(f"| {METHOD_LABELS[key[:-3]]} → {METHOD_LABELS[key]} | {len(best)} | "
                         f"{_mean_std(best).replace('±', '±') if best else '—'} | {_mean_std(last)} |")
    if args.ablation_weights:
        lines += ["", "## Ablation (the paper's Table 4): KD weight, plain KD vs KD+LS", "",
                  "Both at base temperature 2 and CE 0.1 (as the paper's ablation); best / last top-1 (%).", "",
                  "| KD weight | plain KD best | plain KD last | KD+LS best | KD+LS last |", "|---:|---:|---:|---:|---:|"]
        for w in args.ablation_weights:
            cells = []
            for ls in (False, True):
                done = [read_summary(r["workdir"]) for r in runs
                        if r["group"] == "ablation" and r["ls"] == ls and r["weight"] == w and is_finished(r)]
                cells += [_mean_std(d["best_top1"] for d in done), _mean_std(d["last_top1"] for d in done)]
            lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
        lines += ["", f"![ablation]({rel(plot_ablation(runs, args.ablation_weights, paths.join(args.figures_dir, 'ablation.png')))})"]
    lines += ["", "## Curves", "",
              f"![test top-1 per epoch]({rel(plot_curves(runs, paths.join(args.figures_dir, 'curves.png')))})", "",
              f"![logit std]({rel(plot_logit_std(runs, paths.join(args.figures_dir, 'logit_std.png')))})"]
    if stats:
        lines += ["", "## Logit statistics (paper Fig. 3 / Fig. 5), seed-0 students on the test set", "",
                  logit_stats.format_result(stats), "",
                  f"![distributions]({rel(stats['figures']['distributions'])})", "",
                  f"![class-mean logit difference]({rel(stats['figures']['class_mean_diff'])})"]
    k = 10
    facts = stats.get("soft_targets") if stats else None
    lines += ["", "## Facts for the analysis (computed)", "",
              f"- {k} classes: a Z-scored logit vector is bounded by (K-1)/sqrt(K) = {(k - 1) / math.sqrt(k):.3f} "
              f"(CIFAR-100: {99 / math.sqrt(100):.2f}); at base temperature 2 the largest probability a standardized teacher "
              f"can give one class is {standardized_max_probability(k, 2.0):.3f} (CIFAR-100: "
              f"{standardized_max_probability(100, 2.0):.3f}), so the KD+LS targets are much softer with few classes."]
    if facts:
        lines.append(f"- The teacher's mean top probability on the test set: raw {facts['raw']:.3f}, plain KD at T 4 "
                     f"{facts['kd']:.3f}, standardized at base T 2 {facts['ls']:.3f}.")
    lines += ["", "## Analysis", "", _kept_analysis(args.results), ""]
    paths.makedirs(os.path.dirname(paths.absolute(args.results)))
    text = "\n".join(lines)
    paths.write_text_atomic(args.results, text)
    return text


def logit_statistics(runs: list[dict], args) -> dict | None:
    """Fig. 3 / Fig. 5 of the seed-0 KD and KD+LS students against the teacher (None if not run yet)."""
    first_seed = args.seeds[0] if args.seeds else None
    chosen = {r["label"]: r["workdir"] for r in runs
              if r["group"] == "main" and r["key"] in ("kd", "kd_ls") and r["seed"] == first_seed and is_finished(r)}
    if not chosen or not is_finished(runs[0]):
        return None
    out_dir = paths.join(args.figures_dir, "logit_stats")
    stats = logit_stats.run(runs[0]["workdir"], [f"{k}={v}" for k, v in chosen.items()], "fashion_mnist",
                            args.data_dir or None, out_dir, batch_size=1000, max_examples=args.stats_examples,
                            title=f"{args.teacher} teacher, {args.student} students (Fashion-MNIST test)",
                            return_logits=True)
    teacher_logits = stats.pop("logits")[stats["teacher"]]
    stats.pop("labels")
    stats["soft_targets"] = teacher_target_probabilities(teacher_logits, 4.0, 2.0)
    paths.write_text_atomic(paths.join(out_dir, "logit_stats.json"), json.dumps(stats, indent=2))
    return stats


# ----------------------------------------------------------------------------- main


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
    p.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="IDX files, prepared offline if needed")
    p.add_argument("--workdir_root", default="workdirs/fashion_mnist_study")
    p.add_argument("--results", default=DEFAULT_RESULTS)
    p.add_argument("--figures_dir", default=DEFAULT_FIGURES)
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher_epochs", type=int, default=6)
    p.add_argument("--teacher_steps", type=int, default=234)
    p.add_argument("--teacher_seed", type=int, default=0)
    p.add_argument("--student_epochs", type=int, default=4)
    p.add_argument("--train_steps", type=int, default=150, help="student steps per epoch")
    p.add_argument("--methods", default="kd,kd_ls,dkd,dkd_ls", help=f"of {','.join(METHOD_LABELS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ablation_weights", default="0.9,3,9,18", help="'' for no ablation")
    p.add_argument("--ablation_seeds", default="0,1,2")
    p.add_argument("--stats_examples", type=int, default=-1, help="test images for the logit statistics (-1: all)")
    p.add_argument("--plan", action="store_true", help="list the runs and a time estimate; train nothing")
    p.add_argument("--measure", action="store_true", help="measure img/s of each step kind here; train nothing")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.methods:
        split_method(m)
    args.seeds, args.ablation_seeds = _ints(args.seeds), _ints(args.ablation_seeds)
    args.ablation_weights = _floats(args.ablation_weights)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.measure:
        img_s = measure(args.teacher, args.student)
        print(json.dumps({k: round(v) for k, v in img_s.items()}, indent=2))
        return img_s
    runs = plan_runs(args)
    todo = unique_runs(runs)
    if args.plan:
        total = 0.0
        for run in todo:
            seconds = 0.0 if is_finished(run) else estimate_seconds(run, ASSUMED_IMG_S)
            total += seconds
            print(f"{'done' if is_finished(run) else f'{seconds / 60:5.1f} min'}  {run['workdir']}")
        print(f"{len(todo)} runs ({len(runs)} table entries); about {total / 60:.0f} minutes left at "
              f"{ASSUMED_IMG_S} img/s")
        return todo
    from absl import logging

    from zkd import quickstart, train

    logging.set_verbosity(logging.ERROR)
    if args.source:
        print("Fashion-MNIST:", quickstart.ensure_fashion_mnist(args.data_dir, args.source), flush=True)
    start = time.time()
    for i, run in enumerate(todo):
        if is_finished(run):
            continue
        print(f"\n== [{i + 1}/{len(todo)}] {run['label']} seed {run['seed']}: {run['workdir']} "
              f"({(time.time() - start) / 60:.1f} min so far) ==", flush=True)
        train.train_and_evaluate(run["config"], run["workdir"])
    stats = logit_statistics(runs, args)
    command = "python experiments/fashion_mnist_study.py " + " ".join(shlex.quote(a) for a in argv)
    text = write_results(runs, args, command.strip(), stats)
    print(text, flush=True)
    print(f"\n{args.results}; {(time.time() - start) / 60:.1f} minutes", flush=True)
    return text


if __name__ == "__main__":
    main()
