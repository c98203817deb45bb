"""The train state: the student (params, BatchNorm statistics, optimizer state) and a frozen teacher.

``params`` is a dict with the student's parameters under ``"student"`` and any parameter the
method learns beside it under the method's name (``zkd.methods.Method.init_params``: CTKD's
global temperature under ``"ctkd"``), so one optimizer (with the same weight decay, as
released) trains them together.

The teacher's variables ride along in ``teacher_variables`` so the compiled step can use them,
but they are never seen by the optimizer, never updated, and never checkpointed: they are
reloaded from the config on every start (``checkpointable`` drops them).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from zkd import losses


class TrainState(train_state.TrainState):
    """``step``, ``params``, ``opt_state`` (from Flax) + ``batch_stats`` and ``teacher_variables``.

    ``apply_fn`` is the student's ``apply``; ``teacher_apply_fn`` the teacher's (None without a
    teacher, e.g. teacher training).
    """

    batch_stats: Any = None
    teacher_variables: Any = None
    teacher_apply_fn: Optional[Any] = flax.struct.field(pytree_node=False, default=None)


def create_train_state(
    rng: jax.Array,
    student_model,
    input_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    teacher_model=None,
    teacher_variables=None,
    ctkd: bool = False,
    method_params: Optional[dict] = None,
) -> TrainState:
    """Initialise the student from ``rng`` and attach the frozen teacher.

    Args:
      rng: PRNG key for the student's initialisation.
      student_model: a Linen module from ``zkd.models.build``.
      input_shape: one example's (H, W, C).
      tx: the optimizer (``zkd.optim.torch_sgd``).
      teacher_model, teacher_variables: the teacher and its ``{"params", "batch_stats"}``.
      ctkd: add CTKD's learnable global temperature parameter (initialised to 1.0); the same as
        ``method_params={"ctkd": zkd.methods.CTKD().init_params()}``.
      method_params: ``{method name: its learned parameters}`` beside the student's.
    """
    variables = student_model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = {"student": variables["params"], **(method_params or {})}
    if ctkd:
        params["ctkd"] = {"p": losses.init_temperature_param()}
    return TrainState.create(
        apply_fn=student_model.apply,
        params=params,
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        teacher_variables=teacher_variables,
        teacher_apply_fn=None if teacher_model is None else teacher_model.apply,
    )


@flax.struct.dataclass
class RunState:
    """What the compiled step of a run carries: N >= 1 students, their keys, and the teacher.

    ``students``: a tuple of N ``TrainState`` (no teacher inside; a single run is N = 1).
    ``keys``: a tuple of N PRNG keys, one per student (from its seed); the step folds in the
    step number, so a resumed run draws the same randomness (``zkd.step.make_run_step``).
    ``teacher_variables`` / ``teacher_apply_fn``: the frozen teacher, shared by every student,
    never updated and never checkpointed (None without a teacher).
    """

    students: tuple
    keys: tuple
    teacher_variables: Any = None
    teacher_apply_fn: Optional[Any] = flax.struct.field(pytree_node=False, default=None)

    @property
    def step(self) -> jax.Array:
        """The step counter (every student takes every step, so they agree)."""
        return self.students[0].step


def checkpointable(state: TrainState) -> dict:
    """What a checkpoint holds: everything the student needs to resume, never the teacher."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }


def restore_checkpointable(state: TrainState, saved: dict) -> TrainState:
    """``state`` with the student's part replaced by a restored ``checkpointable`` dict."""
    return state.replace(
        step=saved["step"],
        params=saved["params"],
        batch_stats=saved["batch_stats"],
        opt_state=saved["opt_state"],
    )
