"""Loading the frozen teacher a config names: converted checkpoint, PyTorch file, or zkd run.

``config.teacher.checkpoint`` may be
- a directory written by ``python -m zkd.convert`` (``metadata.json`` + ``variables/``);
- a PyTorch file (``.pth``/``.pt``/``.tar``), official mdistiller teacher or torchvision
  weights, converted on the fly (needs torch);
- the workdir of a zkd teacher run (``config.json`` + ``checkpoints/``): its best checkpoint.
Any of them may be in a bucket (``gs://...``, zkd.paths).
Whatever the source, the variables are checked against the architecture the config names
(tree, shapes, num_classes) before training starts.

The architecture is ``config.teacher.name`` in ``config.teacher.zoo`` (the paper's zoos, or
"user" for your registrations), or your own factory ``config.teacher.factory =
"package.module:function"`` with ``config.teacher.options`` (zkd.models.user; then a
PyTorch file cannot be converted on the fly: convert it yourself and save it with
``zkd.checkpoint.save_variables``).

``config.teacher.ensemble = ("workdirs/t1", "resnet110@workdirs/t2", ...)`` (instead of
``checkpoint``) makes the teacher the mean of two or more teachers' logits: each entry is a
checkpoint as above, of the configured architecture, or ``"NAME@PATH"`` for architecture NAME of
``config.teacher.zoo``. Each member is loaded and checked exactly as a single teacher
(``EnsembleTeacher``, ``ensemble``).

``from_python`` accepts a teacher given in Python (``zkd.engine.build(config, teacher=...)``):
a Linen module or a bare ``apply_fn(variables, x, train=False) -> logits``, with its variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zkd import checkpoint, models, paths
from zkd.errors import ZkdError
from zkd.models import user

_TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".bin")


def _field(config, name: str, default):
    """``config.get(name, default)`` for a ConfigDict or mapping, ``getattr`` for any object with
    attributes (a namespace, a dataclass): the fields added for users' teachers are optional."""
    if hasattr(config, "get"):
        return config.get(name, default)
    return getattr(config, name, default)


class TeacherError(ZkdError, ValueError):
    """The teacher a config names cannot be loaded or does not match the configured model."""


def _check_against_model(variables, model, name, num_classes, input_shape, source, what=None):
    template = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), jnp.zeros((1, *input_shape)))
    want = {c: template[c] for c in ("params", "batch_stats") if c in template}
    got = {c: variables.get(c, {}) for c in want}
    flat_want = {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(want)[0]}
    flat_got = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(got)[0]}
    missing = sorted(set(flat_want) - set(flat_got))
    unexpected = sorted(set(flat_got) - set(flat_want))
    misshaped = [f"{k}: {flat_got[k]} vs {flat_want[k]}" for k in sorted(set(flat_want) & set(flat_got))
                 if tuple(flat_got[k]) != tuple(flat_want[k])]
    if missing or unexpected or misshaped:
        raise TeacherError(
            f"teacher checkpoint {source} does not fit {what or f'config.teacher.name={name!r}'} with "
            f"{num_classes} classes: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"mis-shaped {misshaped[:5]}{'...' if len(misshaped) > 5 else ''}. "
            "Name the architecture and dataset the checkpoint was trained for."
        )
    return {c: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), got[c]) for c in want}


def load_teacher(teacher_config, num_classes: int, input_shape: tuple, dtype=jnp.float32):
    """(Linen module, variables) of the teacher ``teacher_config`` names.

    ``teacher_config``: ``name``, ``zoo``, ``checkpoint``, and optionally ``factory`` /
    ``options`` (your own architecture) and ``ensemble`` (a tuple of checkpoints whose logits
    are averaged, instead of ``checkpoint``). ``input_shape``: one image's (H, W, C) as the
    teacher sees it. Variables: ``{"params", "batch_stats"}`` float32 (an ensemble: see
    ``ensemble``). The module maps [B, H, W, C] to logits [B, num_classes].

    Raises:
      TeacherError: naming the field, the problem and the fix; ModelFactoryError /
        ModelContractError (zkd.models.user) for a factory that cannot build a valid model.
    """
    entries = _field(teacher_config, "ensemble", ()) or ()
    if entries:
        return _load_ensemble(teacher_config, entries, num_classes, input_shape, dtype)
    name, zoo, path = teacher_config.name, teacher_config.zoo, teacher_config.checkpoint
    factory = _field(teacher_config, "factory", "") or ""
    if not name and not factory:
        raise TeacherError("config.teacher.name is empty; name the teacher's architecture")
    arch = {"name": name, "zoo": zoo, "factory": factory, "options": _field(teacher_config, "options", None)}
    model = _build(arch, num_classes, input_shape, dtype)
    if not path:
        raise TeacherError(
            f"config.teacher.checkpoint is empty: point it at a converted checkpoint (python -m "
            f"zkd.convert), a PyTorch .pth of {name or factory}, or the workdir of a zkd run that trained "
            f"{name or factory} (configs/cifar100_teacher.py)"
        )
    return _load_weights(model, arch, path, num_classes, input_shape, field="config.teacher.checkpoint")


def _build(arch: dict, num_classes: int, input_shape: tuple, dtype):
    """The teacher module of ``arch`` (name, zoo, factory, options); a user's model (factory or
    zoo "user") is checked against zkd.models.user.CONTRACT as a teacher."""
    if arch["factory"] or arch["zoo"] == models.USER_ZOO:
        return models.build_model(arch, num_classes, dtype, role="teacher", input_shape=input_shape)
    return models.build_model(arch, num_classes, dtype, role="teacher")


def _load_weights(model, arch: dict, path: str, num_classes: int, input_shape: tuple, field: str):
    """(model, float32 variables) with the weights at ``path`` checked against ``model`` (of
    architecture ``arch``); ``field`` names the config field in errors."""
    name, zoo, factory = arch["name"], arch["zoo"], arch["factory"]
    what = arch.get("label") or (f"config.teacher.factory={factory!r}" if factory else
                                 f"config.teacher.name={name!r}")
    path = os.path.expanduser(path)
    if not paths.exists(path):
        raise TeacherError(f"{field}={path!r} does not exist")
    is_dir = paths.isdir(path)
    if is_dir and paths.exists(paths.join(path, "config.json")):
        variables = _from_zkd_run(path, name, num_classes, factory, what)
    elif is_dir:
        variables, meta = checkpoint.restore_variables(path)
        checks = (("num_classes", num_classes),) if factory else (("model", name), ("num_classes", num_classes))
        for key, want in checks:
            if key in meta and meta[key] != want:
                raise TeacherError(
                    f"teacher checkpoint {path} holds {key}={meta[key]!r}, but the config asks for {want!r}"
                )
    elif path.endswith(_TORCH_SUFFIXES):
        if factory:
            raise TeacherError(
                f"{field}={path!r} is a PyTorch file, which zkd converts on the fly only for a named "
                f"architecture, not {what}: convert it yourself (zkd.convert.state_dict_to_variables("
                "state_dict, template) when your module mirrors the PyTorch names), save it with "
                "zkd.checkpoint.save_variables(directory, variables, metadata) and point "
                f"{field.split('[')[0]} at that directory"
            )
        from zkd import convert

        variables = convert.from_torch_checkpoint(path, name, num_classes, zoo=zoo)
    else:
        raise TeacherError(
            f"{field}={path!r} is neither a directory nor a PyTorch file ({_TORCH_SUFFIXES})"
        )
    return model, _check_against_model(variables, model, name, num_classes, input_shape, path, what)


class EnsembleEntry(NamedTuple):
    """One entry of ``config.teacher.ensemble``: ``name`` ("" = the configured architecture)
    and the checkpoint ``path``."""

    name: str
    path: str


def parse_ensemble_entry(entry: str) -> EnsembleEntry:
    """``"PATH"`` -> ("", PATH); ``"NAME@PATH"`` -> (NAME, PATH). An ``@`` counts as the
    separator only when what precedes it holds no ``/`` (so ``gs://b/x@y`` is a path)."""
    if not isinstance(entry, str) or not entry:
        raise TeacherError(f"config.teacher.ensemble entries are checkpoint paths (str), got {entry!r}")
    head, at, tail = entry.partition("@")
    if at and head and "/" not in head and "\\" not in head:
        if not tail:
            raise TeacherError(f"config.teacher.ensemble entry {entry!r} names no checkpoint after '@'")
        return EnsembleEntry(head, tail)
    return EnsembleEntry("", entry)


def _load_ensemble(teacher_config, entries, num_classes, input_shape, dtype):
    if isinstance(entries, str):
        raise TeacherError(
            f"config.teacher.ensemble={entries!r} is a string; it is a tuple of checkpoints, e.g. "
            f"({entries!r}, 'workdirs/t2')")
    entries = tuple(entries)
    if _field(teacher_config, "checkpoint", ""):
        raise TeacherError(
            "config.teacher.checkpoint and config.teacher.ensemble are both set; set one: "
            "checkpoint for one teacher, ensemble for the mean of several (then checkpoint='')")
    if len(entries) < 2:
        raise TeacherError(
            f"config.teacher.ensemble={entries!r} has one member; an ensemble needs two or more. "
            f"For one teacher use config.teacher.checkpoint={entries[0]!r} (and ensemble=())")
    zoo, factory = teacher_config.zoo, _field(teacher_config, "factory", "") or ""
    members = []
    for i, entry in enumerate(entries):
        name, path = parse_ensemble_entry(entry)
        if name:
            arch = {"name": name, "zoo": zoo, "factory": "", "options": None,
                    "label": f"architecture {name!r} of config.teacher.ensemble[{i}]={entry!r}"}
        else:
            arch = {"name": teacher_config.name, "zoo": zoo, "factory": factory,
                    "options": _field(teacher_config, "options", None)}
            if not arch["name"] and not factory:
                raise TeacherError(
                    f"config.teacher.ensemble[{i}]={entry!r} names no architecture and "
                    "config.teacher.name is empty: write it as 'NAME@PATH' (e.g. "
                    f"'resnet56@{path}') or set config.teacher.name / config.teacher.factory")
        model = _build(arch, num_classes, input_shape, dtype)
        members.append(_load_weights(model, arch, path, num_classes, input_shape,
                                     field=f"config.teacher.ensemble[{i}]"))
    return ensemble(members)


def _as_float32(variables):
    """Floating leaves as float32 jnp arrays (shapes stay shapes); other leaves untouched."""
    def cast(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
        dtype = getattr(x, "dtype", None)
        if dtype is None:
            dtype = np.asarray(x).dtype
        return jnp.asarray(x, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) else x

    return jax.tree.map(cast, variables)


# ----------------------------------------------------------------------------- ensembles


def member_name(i: int) -> str:
    """The submodule name of member ``i`` of an ``EnsembleTeacher`` (its variables' key)."""
    return f"members_{i}"


class EnsembleTeacher(nn.Module):
    """A frozen teacher whose logits are the mean of its members' logits.

    ``members``: a tuple of distinct Linen modules, each mapping [B, H, W, C] to logits
    [B, num_classes]. Member ``i`` is the submodule ``member_name(i)`` ("members_0", ...), so the
    variables are ``{"params": {"members_0": <member 0's params>, ...}, "batch_stats":
    {"members_i": ...}}`` (``batch_stats`` only for the members that have them). Build it with
    ``ensemble``, which also assembles those variables.
    """

    members: tuple

    def __call__(self, x, train: bool = False):
        """float32 [B, num_classes]: the mean over members of their float32 logits."""
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError("EnsembleTeacher members must be distinct module instances "
                             "(zkd.teacher.ensemble clones them)")
        logits = [m(x, train=train).astype(jnp.float32) for m in self.members]
        return jnp.mean(jnp.stack(logits), axis=0)


def ensemble(members: Sequence[tuple[nn.Module, Any]]) -> tuple[EnsembleTeacher, dict]:
    """(EnsembleTeacher, variables) of two or more ``(module, variables)`` teachers.

    The modules are cloned (the same instance may appear twice); floating variables become
    float32. Variables: ``{"params": {member_name(i): members[i]'s params}, "batch_stats":
    {member_name(i): members[i]'s batch_stats, for members that have them}}`` (no
    ``batch_stats`` key when no member has one).
    """
    members = list(members)
    if len(members) < 2:
        raise TeacherError(f"an ensemble needs two or more teachers, got {len(members)}")
    modules, params, batch_stats = [], {}, {}
    for i, member in enumerate(members):
        module, variables = member
        if not isinstance(module, nn.Module):
            raise TeacherError(f"ensemble member {i} is a {type(module).__name__}, not a flax.linen.Module")
        extra = sorted(set(variables) - {"params", "batch_stats"})
        if extra:
            raise TeacherError(f"ensemble member {i} has variable collections {extra}; only "
                               "params and batch_stats are kept")
        modules.append(module.clone(name=None))
        variables = _as_float32(dict(variables))
        if variables.get("params"):
            params[member_name(i)] = variables["params"]
        if variables.get("batch_stats"):
            batch_stats[member_name(i)] = variables["batch_stats"]
    out = {"params": params}
    if batch_stats:
        out["batch_stats"] = batch_stats
    return EnsembleTeacher(members=tuple(modules)), out


# ----------------------------------------------------------------------------- Python teachers


@dataclasses.dataclass(frozen=True)
class ApplyFnTeacher:
    """A teacher given as a bare function: ``apply(variables, x, train=False) -> logits``.

    ``.apply`` is the function itself, so ``RunState.teacher_apply_fn = teacher.apply`` hands
    ``jit`` the user's function, one stable object.
    """

    apply: Callable[..., Any]


def from_python(teacher, num_classes: int, input_shape: tuple):
    """(teacher with ``.apply(variables, x, train=False)``, float32 variables) of a teacher given
    in Python: ``(module, variables)`` with a Linen module, or ``(apply_fn, variables)`` with
    ``apply_fn(variables, x, train=False) -> logits``, wrapped in ``ApplyFnTeacher``.

    ``input_shape``: one image's (H, W, C). The output is checked with ``jax.eval_shape`` on a
    float32 [2, H, W, C] batch: one floating array [2, num_classes]. Floating variables become
    float32 jnp arrays (``jax.ShapeDtypeStruct`` leaves stay shapes); others are left alone.

    Raises:
      TeacherError: not a pair, not a module / callable, or the wrong output (naming it).
    """
    if not isinstance(teacher, (tuple, list)) or len(teacher) != 2:
        raise TeacherError(
            f"teacher= must be a pair (module_or_apply_fn, variables), got {type(teacher).__name__}")
    model, variables = teacher
    if isinstance(model, type):
        raise TeacherError(f"teacher= holds the class {model.__name__}; pass an instance "
                           f"({model.__name__}(...)) or its apply function")
    if isinstance(model, nn.Module):
        obj, what = model, f"the teacher module {type(model).__name__}"
    elif callable(model):
        obj, what = ApplyFnTeacher(model), f"the teacher function {getattr(model, '__name__', repr(model))}"
    else:
        raise TeacherError(
            f"teacher= holds a {type(model).__name__}; give a flax.linen.Module or a function "
            "apply_fn(variables, x, train=False) -> logits [B, num_classes]")
    if not isinstance(variables, dict) and not hasattr(variables, "keys"):
        raise TeacherError(f"teacher= variables must be a dict of collections (e.g. {{'params': ...}}), "
                           f"got {type(variables).__name__}")
    variables = _as_float32(dict(variables))
    x = jax.ShapeDtypeStruct((user.CHECK_BATCH_SIZE, *tuple(input_shape)), jnp.float32)
    call = f"{what}: apply(variables, x float32 {list(x.shape)}, train=False)"
    try:
        out = jax.eval_shape(lambda v, x: obj.apply(v, x, train=False), variables, x)
    except ZkdError:
        raise
    except Exception as err:
        text = str(err).strip()
        raise TeacherError(
            f"{call} failed: {type(err).__name__}: {text.splitlines()[0] if text else ''}. A teacher "
            "maps (variables, images [B, H, W, C], train=False) to logits [B, num_classes]") from err
    want = (user.CHECK_BATCH_SIZE, num_classes)
    if not isinstance(out, jax.ShapeDtypeStruct) or tuple(out.shape) != want \
            or not jnp.issubdtype(out.dtype, jnp.floating):
        seen = (f"a {type(out).__name__}" if not isinstance(out, jax.ShapeDtypeStruct)
                else f"{out.dtype} of shape {tuple(out.shape)}")
        raise TeacherError(
            f"{call} returned {seen}; expected floating logits of shape {want} = [B, num_classes="
            f"{num_classes}] (num_classes is the dataset's)")
    return obj, variables


def _from_zkd_run(workdir: str, name: str, num_classes: int, factory: str = "", what: str = ""):
    run_config = json.loads(paths.read_text(paths.join(workdir, "config.json")))
    student = run_config.get("student", {})
    if factory:
        trained = student.get("factory", "")
        if trained != factory:
            raise TeacherError(
                f"the zkd run in {workdir} trained {trained or student.get('name')!r}, but the "
                f"teacher is {what or f'config.teacher.factory={factory!r}'}")
    else:
        trained = student.get("name")
        if trained != name:
            raise TeacherError(
                f"the zkd run in {workdir} trained {trained!r}, but config.teacher.name is {name!r}"
                if not what or what == f"config.teacher.name={name!r}" else
                f"the zkd run in {workdir} trained {trained!r}, but the teacher is {what}"
            )
    saved = checkpoint.restore_best_student(workdir)
    if saved is None:
        raise TeacherError(f"the zkd run in {workdir} has no complete checkpoint yet")
    return saved
