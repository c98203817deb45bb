"""Hyper-parameter sweeps: N students trained in one run, at the cost of one teacher.

The released code answers "which temperature and KD weight for my pair?" with one full run per
grid point, the teacher's forward pass included each time. Here a grid is one run:

    zkd --config=configs/cifar100.py:method=kd,teacher=resnet32x4,student=resnet8x4,ls=1 \\
        --config.sweep.temperature="(2, 3)" --config.sweep.kd_weight="(3, 6, 9, 12, 15)"

Every non-empty axis of ``config.sweep`` is swept over its Cartesian product, or, with
``config.sweep.mode = "zip"``, read side by side (student i takes each axis's i-th value: KD and
KD+LS at their own settings, say; zkd.grid). The
run is the trainer's one loop (``zkd.train.fit``) with one student per grid point: one compiled
step runs the teacher once on the batch (or takes its logits from ``config.teacher.logit_cache``)
and then every student's update, each with its own settings (``zkd.step.make_run_step``;
``config.sweep.vectorize`` = "unroll", the default, or "vmap"). Each grid point is the single
run whose config is ``point.config`` and follows that run's trajectory (tests/test_sweep.py);
a grid of one point is that single run. Every option of a single run works in a sweep
(device-resident data, the logit cache, MLKD, CTKD, bfloat16). The workdir layout is in
zkd.train's docstring.
"""

from __future__ import annotations


import jax
import ml_collections

from zkd import engine, grid, paths, recipes, train
from zkd.grid import GridPoint, grid_points, ranking_table  # noqa: F401  (the sweep's public names)
from zkd.workdir import write_json


def train_sweep(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False, *,
                dataset=None, teacher=None) -> dict:
    """Train every grid point of ``config.sweep`` at once; returns the ranking as
    ``{"run", "students", "epochs", "train_seconds", "images_per_second", "points": [...], "table"}``
    and writes it to ``sweep.json`` / ``sweep.md``. Resumes like a single run. ``dataset`` and
    ``teacher``: as for ``zkd.train.train_and_evaluate``."""
    config, info = engine.with_dataset(config, dataset)
    points = grid.grid_points(config)
    out = train.fit(config, workdir, points, allow_config_change,
                    run=engine.build(config, points, teacher=teacher, info=info), sweep=True)
    summaries, meta = out["students"], out["meta"]
    table = grid.ranking_table(points, summaries)
    result = {"run": recipes.run_name(config), "students": len(points), "epochs": meta["epoch"],
              "train_seconds": meta["train_seconds"],
              "images_per_second": meta["train_images"] / max(meta["train_seconds"], 1e-9),
              "points": [{"name": p.name, "values": p.values, "workdir": d, **s}
                         for p, d, s in zip(points, out["dirs"], summaries)]}
    if jax.process_index() == 0:
        write_json(paths.join(workdir, "sweep.json"), result)
        paths.write_text_atomic(paths.join(workdir, "sweep.md"),
                                f"# {result['run']}: {len(points)} students, {meta['epoch']} epochs\n\n{table}")
    result["table"] = table
    return result
