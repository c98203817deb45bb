"""What a distillation method is: the ``Method`` contract, its hyper-parameters and its inputs.

A method owns everything that makes it itself and nothing else: its numeric hyper-parameters
(``HParams``, whose fields are its sweep axes), its loss terms, how many views of a batch it
sees, whether it needs a teacher, any parameter it learns beside the student, the metrics it
adds and the checks of its own config values. The step (zkd.step), the grid (zkd.grid) and the
build (zkd.engine) read these and nothing method-specific; docs/methods.md has the contract and
a worked example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import flax.struct
import jax

# Short labels of the common hyper-parameters in a sweep's point names ("T2_kd9_ls1").
LABELS = {"temperature": "T", "kd_weight": "kd", "ce_weight": "ce", "dkd_alpha": "alpha", "dkd_beta": "beta"}


def hparam(default: float, label: str = "", *, positive: bool = False):
    """A field of a method's ``HParams``: a float with its default (also the config's default,
    ``config.loss.<field>``), the label of its sweep points ("" : ``LABELS`` or the field name)
    and whether it must be > 0 (else >= 0)."""
    return dataclasses.field(default=float(default), metadata={"label": label, "positive": positive})


@flax.struct.dataclass
class NoHParams:
    """The hyper-parameters of a method that has none."""


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the step hands a method's ``loss_terms``; every array float32 unless noted.

    ``student``: one [B, K] logits array per view (``Method.views``), the student in train mode.
    ``teacher``: the teacher's [B, K] logits per view (eval mode, no gradient), or None for a
    method without a teacher. ``labels``: int32 [B]. ``epoch``: float32 scalar, counted from 1
    (``step // steps_per_epoch + 1``, as the released trainers count it for warm-ups).
    ``params``: the method's own learned parameters (``Method.init_params``), {} if none.
    ``distill``: the [B, K] logits a distillation term should use: ``student[0]``, or the logits
    the student sows under ``config.loss.kd_logits`` (DeiT's distillation head) when the method
    sets ``distils_sown_logits``.
    """

    student: tuple
    teacher: Optional[tuple]
    labels: jax.Array
    epoch: jax.Array
    params: Any
    distill: jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class of a distillation method; subclass it, decorate with ``zkd.methods.register``.

    Instance fields (a frozen dataclass) are the method's static options, read from the config
    fields of the same name under ``config.loss`` (e.g. DKD's ``dkd_warmup_epochs``); they are
    fixed for the compiled step. ``HParams`` (a ``flax.struct.dataclass`` of ``hparam`` fields)
    holds the numeric values, which may be traced: a sweep stacks them and ``jax.vmap``s the step.

    Override ``loss_terms``; the rest has defaults:
      needs_teacher: False for a method without a teacher (plain cross-entropy).
      views: 2 for a method that sees a weak and a strong view of each image (MLKD).
      uses_logit_stand: whether ``config.logit_stand`` changes the loss (then an LS sweep axis).
      distils_sown_logits: whether ``config.loss.kd_logits`` may redirect ``Inputs.distill``.
    """

    HParams: ClassVar[type] = NoHParams
    needs_teacher: ClassVar[bool] = True
    views: ClassVar[int] = 1
    uses_logit_stand: ClassVar[bool] = True
    distils_sown_logits: ClassVar[bool] = False
    name: ClassVar[str] = ""  # set by zkd.methods.register

    def loss_terms(self, hp, logit_stand: bool, x: Inputs) -> dict:
        """The named float32 scalar terms whose sum is the training loss.

        ``hp``: this method's ``HParams`` (Python floats or traced float32 scalars);
        ``logit_stand``: a Python bool (the step handles students that differ in it).
        """
        raise NotImplementedError(f"{type(self).__name__} must define loss_terms(self, hp, logit_stand, x)")

    def init_params(self) -> dict:
        """Parameters the method learns beside the student (optimized with it, stored under
        ``params[name]`` and checkpointed); {} for none."""
        return {}

    def metrics(self, params) -> dict:
        """Extra float32 scalar metrics of a step from the method's parameters (before the update)."""
        return {}

    def check(self, config) -> None:
        """Raise ``zkd.errors.ConfigError`` for a config value this method cannot use."""

    @classmethod
    def from_config(cls, config) -> "Method":
        """The method with its static options read from ``config.loss``."""
        return cls(**{f.name: config.loss[f.name] for f in dataclasses.fields(cls)})


def hparam_fields(method) -> tuple:
    """The ``dataclasses.Field``s of a method's (class or instance) ``HParams``, in order."""
    return dataclasses.fields(method.HParams)


def label(field: dataclasses.Field) -> str:
    return field.metadata.get("label") or LABELS.get(field.name, field.name)
