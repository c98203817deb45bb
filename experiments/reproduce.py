"""Reproduce any subset of the paper's tables (CIFAR-100 Tables 1-2, ImageNet Table 3) and tabulate
zkd's best / last top-1 (mean ± std over seeds) next to the published numbers.

    python experiments/reproduce.py --rows kd:resnet32x4:resnet8x4 --ls both --seeds 0,1,2,3 \
        --data_dir ~/tensorflow_datasets --teachers_dir cifar_teachers --workdir_root workdirs/reproduce
    python experiments/reproduce.py --rows table1 --ls 1 --seeds 0 ...     # every Table 1 row, LS only
    python experiments/reproduce.py --rows 'dkd:*:*,kd:R56:R20' --list      # what would run, and the teachers
    python experiments/reproduce.py --rows table3 --teachers_dir torchvision_weights ...   # ImageNet

Rows: comma-separated ``method:teacher:student`` (paper aliases such as R32x4, WRN-40-2, MN-V2 or zkd
names; ``*`` matches any), or ``table1`` (CIFAR pairs of different architectures, the paper's
Table 1), ``table2`` (same-family CIFAR pairs, its Table 2), ``table3`` (ImageNet), ``all``. Methods: kd, dkd, mlkd, ctkd, on every pair.
``--ls``: 0 (baseline), 1 (+LS) or both. Each (row, LS, seed) uses the paper's recipe
(``zkd.recipes.cifar_distillation`` / ``imagenet_distillation``: per-pair temperature, weight
and DKD beta of the released logs) and runs in ``WORKDIR_ROOT/<dataset>/<method>[_ls]/<teacher>-<student>/seed<N>``.

Teachers (``--teachers_dir``), first match wins: ``<name>/`` (a ``python -m zkd.convert`` output or a
zkd teacher run), ``<name>_vanilla/ckpt_epoch_240.pth`` (mdistiller's ``cifar_teachers.tar``),
``<name>.pth``, and for ImageNet torchvision's ``<name lowercased>-<hash>.pth`` (e.g.
``resnet34-b627a593.pth``). All are checked before any training starts.

Resuming: a run whose ``summary.json`` covers all its epochs is skipped; any other run restarts
from its latest checkpoint (``zkd.train.train_and_evaluate`` resumes), so rerunning the same
command after an interruption finishes the table. ``--runlocal`` shrinks every run to a few tiny
steps (checks the pipeline, not a result); ``--override k=v,...`` sets config fields of every run
(``num_epochs=1,student.name=resnet8,optimizer.lr_milestones=1;2``); the workdir names stay those
of the paper's rows.

Output: ``--table`` (default ``WORKDIR_ROOT/results.md``) and ``results.json`` beside it, with
each row's paper number, the zkd setting (the released log's setting for +LS rows) and the
numbers reported elsewhere in docs/paper.md §6. Std over seeds is the sample std (ddof=1).

``--teachers_dir``, ``--workdir_root`` and ``--table`` may be local or in a bucket
(``gs://bucket/dir``, through ``zkd.paths``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zkd import paths, recipes  # noqa: E402

# The paper's numbering: Table 1 = different architectures, Table 2 = the same family (docs/paper.md).
TABLES = {"table1": recipes.CIFAR_PAIRS[7:], "table2": recipes.CIFAR_PAIRS[:7], "table3": recipes.IMAGENET_PAIRS}
# Numbers reported outside the paper's tables (docs/paper.md §6): (method, teacher, student, ls) -> (top-1, source).
OTHER_REPORTED = {("kd", "ResNet34", "ResNet18", True): (71.23, "independent rerun")}


class RowError(ValueError):
    """A --rows entry that matches no row of the paper."""


# ----------------------------------------------------------------------------- selection


def table_of(row: recipes.Row) -> str:
    for name, pairs in TABLES.items():
        if (row.teacher, row.student) in pairs:
            return name
    return ""


def select_rows(spec: str) -> list[recipes.Row]:
    """The paper's rows named by ``spec`` (see the module docstring), in the paper's order."""
    rows = recipes.paper_rows()
    chosen: list[recipes.Row] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item == "all":
            matched = rows
        elif item in TABLES:
            matched = [r for r in rows if table_of(r) == item]
        else:
            parts = item.split(":")
            if len(parts) != 3:
                raise RowError(f"row {item!r} must be method:teacher:student (or table1/table2/table3/all)")
            method, teacher, student = (p if p == "*" else recipes.canonical(p) for p in parts)
            matched = [r for r in rows if fnmatch.fnmatchcase(r.method, method)
                       and fnmatch.fnmatchcase(r.teacher, teacher) and fnmatch.fnmatchcase(r.student, student)]
            if not matched:
                raise RowError(f"row {item!r} is not in the paper's tables; pairs: "
                               + ", ".join(f"{t}:{s}" for t, s in recipes.CIFAR_PAIRS + recipes.IMAGENET_PAIRS))
        chosen += [r for r in matched if r not in chosen]
    return sorted(chosen, key=rows.index)


def find_teacher(teachers_dir: str, name: str, dataset: str) -> tuple[Optional[str], list[str]]:
    """(path of the teacher checkpoint or None, the candidates tried)."""
    d = os.path.expanduser(teachers_dir)
    candidates = [paths.join(d, name), paths.join(d, f"{name}_vanilla", "ckpt_epoch_240.pth"),
                  paths.join(d, f"{name}.pth")]
    if dataset == "imagenet2012" and paths.isdir(d):
        candidates += sorted(paths.join(d, n) for n in paths.listdir(d) if fnmatch.fnmatch(n, f"{name.lower()}-*.pth"))
    for path in candidates:
        if paths.isfile(path) or (paths.isdir(path) and any(
                paths.exists(paths.join(path, f)) for f in ("metadata.json", "config.json"))):
            return path, candidates
    return None, candidates


# ----------------------------------------------------------------------------- configs


def _convert(text: str, like):
    if isinstance(like, bool):
        if text.lower() not in ("1", "0", "true", "false"):
            raise ValueError(f"expected 1/0/true/false, got {text!r}")
        return text.lower() in ("1", "true")
    if isinstance(like, (tuple, list)):
        kind = type(like[0]) if like else int
        return tuple(_convert(t, kind()) for t in filter(None, text.split(";")))
    return type(like)(text)


def parse_overrides(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        if "=" not in item:
            raise ValueError(f"--override {item!r} must look like field=value")
        out.append(tuple(item.split("=", 1)))
    return out


def apply_overrides(config, overrides: list[tuple[str, str]]):
    """Set ``a.b=value`` fields, converting to the field's type; unknown fields fail."""
    for key, text in overrides:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ValueError(f"--override: config has no field {key!r}")
        node[leaf] = _convert(text, node[leaf])
    return config


def make_config(row: recipes.Row, ls: bool, seed: int, teacher_checkpoint: str, data_dir: str,
                runlocal: bool = False, overrides=()):
    """(run name, locked config) of one run: the paper's recipe, then runlocal, then overrides."""
    if row.dataset == "imagenet2012":
        c = recipes.imagenet_distillation(row.teacher, row.student, ls, seed, teacher_checkpoint, row.method)
    else:
        c = recipes.cifar_distillation(row.method, row.teacher, row.student, ls, seed, teacher_checkpoint)
    name = recipes.run_name(c)
    c.data_dir = data_dir
    if runlocal:
        recipes.shrink_for_local_run(c)
        c.progress_bar = False
    apply_overrides(c, list(overrides))
    return name, recipes.finalize(c)


def setting(config) -> str:
    """The loss setting of a run, as the released logs name it."""
    l = config.loss
    if config.method == "kd":
        return f"T {l.temperature:g}, KD {l.kd_weight:g}, CE {l.ce_weight:g}"
    if config.method == "dkd":
        return f"T {l.temperature:g}, α {l.dkd_alpha:g}, β {l.dkd_beta:g}, CE {l.ce_weight:g}"
    if config.method == "mlkd":
        return f"T {l.temperature:g}, KD {l.kd_weight:g}"
    return f"T learned, KD {l.kd_weight:g}, CE {l.ce_weight:g}"


def read_summary(workdir: str) -> Optional[dict]:
    path = paths.join(workdir, "summary.json")
    if not paths.exists(path):
        return None
    return json.loads(paths.read_text(path))


def is_finished(workdir: str, num_epochs: int) -> bool:
    summary = read_summary(workdir)
    return summary is not None and summary.get("epochs", 0) >= num_epochs


# ----------------------------------------------------------------------------- table


def mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def format_table(entries: list[dict]) -> str:
    lines = [
        "| table | method | teacher → student | LS | zkd setting | seeds done | zkd best top-1 | zkd last top-1 "
        "| paper | zkd best − paper | reported elsewhere |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        best, last = e["best_top1"], e["last_top1"]
        paper = e["paper"]
        delta = f"{np.mean(best) - paper:+.2f}" if (best and paper is not None) else ""
        other = f"{e['other'][0]:.2f} ({e['other'][1]})" if e["other"] else ""
        lines.append(
            f"| {e['table']} | {e['method'].upper()} | {e['teacher']} → {e['student']} | {'yes' if e['ls'] else 'no'} "
            f"| {e['setting']} | {len(best)}/{len(e['seeds'])} | {mean_std(best)} | {mean_std(last)} "
            f"| {'' if paper is None else f'{paper:.2f}'} | {delta} | {other} |")
    return "\n".join(lines)


def collect(plan: list[dict]) -> list[dict]:
    """One entry per (row, LS): the finished seeds' summaries next to the published numbers."""
    entries: dict[tuple, dict] = {}
    for run in plan:
        row, ls = run["row"], run["ls"]
        key = (row, ls)
        if key not in entries:
            paper = row.paper
            entries[key] = {
                "table": table_of(row), "method": row.method, "teacher": row.teacher, "student": row.student,
                "dataset": row.dataset, "ls": ls, "setting": setting(run["config"]), "seeds": [], "runs": [],
                "best_top1": [], "last_top1": [], "paper": None if paper is None else paper[int(ls)],
                "other": OTHER_REPORTED.get((row.method, row.teacher, row.student, ls)),
            }
        e = entries[key]
        e["seeds"].append(run["seed"])
        summary = read_summary(run["workdir"])
        if summary is not None and summary.get("epochs", 0) >= run["config"].num_epochs:
            e["runs"].append({"seed": run["seed"], "workdir": run["workdir"], **summary})
            e["best_top1"].append(summary["best_top1"])
            e["last_top1"].append(summary["last_top1"])
    return list(entries.values())


# ----------------------------------------------------------------------------- main


def make_plan(rows, ls_values, seeds, teachers_dir, data_dir, workdir_root, runlocal=False, overrides=()):
    """Every (row, LS, seed) run with its config and workdir; fails first on a missing teacher."""
    missing = []
    plan = []
    for row in rows:
        ckpt, tried = find_teacher(teachers_dir, row.teacher, row.dataset)
        if ckpt is None:
            missing.append(f"{row.teacher} (tried {', '.join(tried)})")
            continue
        for ls in ls_values:
            for seed in seeds:
                name, config = make_config(row, ls, seed, ckpt, data_dir, runlocal, overrides)
                plan.append({"row": row, "ls": ls, "seed": seed, "config": config,
                             "workdir": paths.join(workdir_root, name), "teacher_checkpoint": ckpt})
    if missing:
        raise FileNotFoundError("teacher checkpoints not found in --teachers_dir: " + "; ".join(sorted(set(missing))))
    return plan


def write_outputs(plan, table_path: str) -> str:
    entries = collect(plan)
    table = format_table(entries)
    paths.makedirs(os.path.dirname(paths.absolute(table_path)))
    paths.write_text_atomic(table_path, table + "\n")
    paths.write_text_atomic(os.path.splitext(table_path)[0] + ".json",
                            json.dumps([{k: v for k, v in e.items()} for e in entries], indent=2))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="kd:resnet32x4:resnet8x4", help="see the module docstring")
    parser.add_argument("--ls", default="both", choices=("0", "1", "both"))
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2,3 (the paper: 4 runs)")
    parser.add_argument("--data_dir", default="", help="TFDS data dir ('' = TFDS's default)")
    parser.add_argument("--teachers_dir", default="cifar_teachers")
    parser.add_argument("--workdir_root", default="workdirs/reproduce")
    parser.add_argument("--table", default="", help="markdown output (default WORKDIR_ROOT/results.md)")
    parser.add_argument("--runlocal", action="store_true", help="a few tiny steps per run (not a result)")
    parser.add_argument("--override", default="", help="field=value,... applied to every run's config")
    parser.add_argument("--list", action="store_true", help="print the runs and their state; train nothing")
    parser.add_argument("--keep_going", action="store_true", help="on a failed run, go on with the others")
    args = parser.parse_args(argv)

    rows = select_rows(args.rows)
    ls_values = {"0": [False], "1": [True], "both": [False, True]}[args.ls]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plan = make_plan(rows, ls_values, seeds, args.teachers_dir, args.data_dir, args.workdir_root, args.runlocal,
                     parse_overrides(args.override))
    table_path = args.table or paths.join(args.workdir_root, "results.md")
    if args.list:
        for run in plan:
            state = "done" if is_finished(run["workdir"], run["config"].num_epochs) else (
                "resume" if paths.exists(paths.join(run["workdir"], "config.json")) else "new")
            print(f"{state:6} {run['workdir']}  teacher {run['teacher_checkpoint']}")
        return plan

    from absl import logging

    from zkd import train

    logging.set_verbosity(logging.ERROR)
    failures = []
    for i, run in enumerate(plan):
        if is_finished(run["workdir"], run["config"].num_epochs):
            print(f"[{i + 1}/{len(plan)}] done already: {run['workdir']}", flush=True)
            continue
        print(f"[{i + 1}/{len(plan)}] {run['workdir']}", flush=True)
        try:
            train.train_and_evaluate(run["config"], run["workdir"])
        except Exception as err:  # noqa: BLE001 -- reported, and re-raised unless --keep_going
            if not args.keep_going:
                write_outputs(plan, table_path)
                raise
            failures.append(f"{run['workdir']}: {type(err).__name__}: {err}")
        write_outputs(plan, table_path)
    table = write_outputs(plan, table_path)
    print("\n" + table + f"\n\n{table_path}", flush=True)
    for failure in failures:
        print("FAILED", failure, flush=True)
    return table


if __name__ == "__main__":
    main()
