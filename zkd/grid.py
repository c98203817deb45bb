"""A run's students: the grid points of ``config.sweep`` (or the one point of a single run).

A sweep trains several students in one run, from the non-empty axes of ``config.sweep`` (the
method's numeric hyper-parameters, ``logit_stand`` when LS changes its loss, and ``seed``:
``zkd.methods.axes``; an axis the method does not have is refused) and ``config.sweep.mode``:

- "product" (default): every point of the axes' Cartesian product (the authors' tuning grid,
  e.g. temperature (2, 3) x kd_weight (3, 6, 9, 12, 15): 10 students);
- "zip": the axes are read side by side, point i takes every axis's i-th value (all axes the
  same length), e.g. KD against KD+LS at each one's own setting: temperature (4, 2),
  kd_weight (0.9, 9), logit_stand (0, 1): 2 students.

Each point is the single run whose config is ``point.config`` (the sweep's data order,
``data_seed``, is shared). A single run is the grid of one point, named "" (``single_point``).
zkd.train trains both.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections
import numpy as np

from zkd import methods, recipes
from zkd.errors import ConfigError

RUN_AXES = {"logit_stand": "ls", "seed": "seed"}  # axes that are config fields, not the method's (with labels)
SETTINGS = ("mode", "vectorize")  # config.sweep fields that are not axes
MODES = ("product", "zip")


def swept_axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The non-empty axes of ``config.sweep``, {} for a single run: the method's axes in its
    order (``zkd.methods.axes``; this order names the points), then any other."""
    sweep = config.get("sweep")
    if sweep is None:
        return {}
    names = [k for k in sweep.keys() if k not in SETTINGS]
    try:
        order = list(methods.axes(methods.get(config.method)))
    except ConfigError:  # an unknown method is named when the run is built
        order = []
    names = [a for a in order if a in names] + [a for a in names if a not in order]
    return {axis: tuple(sweep[axis]) for axis in names if len(sweep[axis])}


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One student: ``values`` of the swept axes, and the equivalent single-run config."""

    name: str
    values: dict
    config: ml_collections.ConfigDict


def single_point(config: ml_collections.ConfigDict) -> list[GridPoint]:
    """A single run as a grid of one point (refused when ``config.sweep`` sets an axis)."""
    if swept_axes(config):
        raise ConfigError(f"config.sweep sets {', '.join(swept_axes(config))}: a grid trains with "
                          "zkd.sweep.train_sweep (the zkd command chooses it); clear config.sweep for one run")
    return [GridPoint("", {}, config)]


def checked_value(axis: str, value: Any, positive: bool = False):
    """``value`` of sweep axis ``axis`` as its type (bool, int or float); ConfigError if invalid.
    ``positive``: the method's field must be > 0 (else >= 0)."""
    if axis == "logit_stand":
        if value not in (0, 1, True, False):
            raise ConfigError(f"config.sweep.logit_stand values must be 0/1 or booleans, got {value!r}")
        return bool(value)
    if axis == "seed":
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ConfigError(f"config.sweep.seed values must be integers >= 0, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ConfigError(f"config.sweep.{axis} values must be finite numbers, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config.sweep.{axis} values must be > 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"config.sweep.{axis} values must be >= 0, got {value!r}")
    return float(value)


def fmt(value) -> str:
    return str(int(value)) if isinstance(value, bool) else f"{value:g}"


def grid_points(config: ml_collections.ConfigDict) -> list[GridPoint]:
    """The students of ``config.sweep``: its axes' Cartesian product ("product", the last axis
    varies fastest) or the axes read side by side ("zip"), in axis order.

    Raises ConfigError for an axis the method ignores, a bad value, a repeated value (product),
    axes of different lengths or a repeated point (zip), or an unknown mode.
    """
    axes = swept_axes(config)
    if not axes:
        raise ConfigError("config.sweep has no non-empty axis: nothing to sweep (train a single run)")
    mode = config.sweep.mode
    if mode not in MODES:
        raise ConfigError(f"config.sweep.mode={mode!r}; valid: {', '.join(MODES)} (product: every combination "
                          "of the axes; zip: the axes side by side, one student per position)")
    method = methods.get(config.method)
    allowed = methods.axes(method)
    fields = {f.name: f for f in methods.hparam_fields(method)}
    labels = {**{name: methods.label(f) for name, f in fields.items()}, **RUN_AXES}
    checked = {}
    for axis, values in axes.items():
        if axis not in allowed:
            raise ConfigError(
                f"config.sweep.{axis} has no effect on method {config.method!r}; it sweeps {', '.join(allowed)}")
        positive = axis in fields and fields[axis].metadata.get("positive", False)
        checked[axis] = [checked_value(axis, v, positive) for v in values]
        if mode == "product" and len(set(checked[axis])) != len(checked[axis]):
            raise ConfigError(f"config.sweep.{axis}={values!r} repeats a value")
    if mode == "zip":
        lengths = {axis: len(v) for axis, v in checked.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                "config.sweep.mode='zip' reads the axes side by side, so they need the same length; got "
                + ", ".join(f"{axis}: {n}" for axis, n in lengths.items())
                + " (give every swept axis one value per student, or use mode='product')")
        combos = list(zip(*checked.values()))
        repeated = sorted({c for c in combos if combos.count(c) > 1})
        if repeated:
            raise ConfigError(f"config.sweep.mode='zip' gives the same student twice: "
                              f"{dict(zip(checked, repeated[0]))}; every position must differ in some axis")
    else:
        combos = list(itertools.product(*checked.values()))
    seed_of_data = recipes.data_seed(config)
    points = []
    for combo in combos:
        values = dict(zip(axes, combo))
        c = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
        for axis in axes:
            c.sweep[axis] = ()
        c.data_seed = seed_of_data
        for axis, v in values.items():
            if axis in RUN_AXES:
                c[axis] = v
            else:
                c.loss[axis] = v
        name = "_".join(f"{labels[axis]}{fmt(v)}" for axis, v in values.items())
        points.append(GridPoint(name, values, recipes.finalize(c)))
    return points


def points_of(config: ml_collections.ConfigDict) -> list[GridPoint]:
    """The grid of ``config.sweep``, or the single run's one point."""
    return grid_points(config) if swept_axes(config) else single_point(config)


def ranking_table(points: list[GridPoint], summaries: list[dict]) -> str:
    """Markdown: the grid points ranked by best test top-1 (ties: last top-1)."""
    axes = list(points[0].values)
    order = sorted(range(len(points)), key=lambda i: (-summaries[i]["best_top1"], -summaries[i]["last_top1"]))
    head = ["rank", *axes, "best top-1", "best epoch", "last top-1", "agreement", "point"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, i in enumerate(order, 1):
        s = summaries[i]
        cells = [str(rank), *(fmt(points[i].values[a]) for a in axes), f"{s['best_top1']:.2f}", str(s["best_epoch"]),
                 f"{s['last_top1']:.2f}", f"{s['agreement']:.2f}", points[i].name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
