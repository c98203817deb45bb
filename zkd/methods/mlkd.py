"""MLKD (Jin et al.): multi-level KD on a weak and a strong view of each image."""

from __future__ import annotations

import dataclasses

import flax.struct

from zkd import losses
from zkd.errors import ConfigError
from zkd.methods.base import Method, hparam
from zkd.methods.registry import register

MODES = ("released", "paper")


@register("mlkd")
@dataclasses.dataclass(frozen=True)
class MLKD(Method):
    """loss = ce_weight * (CE(z_weak) + CE(z_strong)) + the instance, batch and class terms of
    ``zkd.losses.mlkd_loss`` over several temperatures. Two forward passes of the student, one
    per view, as released. ``mlkd_mode``: "released" (the code) or "paper" (the equations)."""

    mlkd_mode: str = "released"

    @flax.struct.dataclass
    class HParams:
        temperature: float = hparam(4.0, positive=True)
        kd_weight: float = hparam(1.0)
        ce_weight: float = hparam(1.0)

    views = 2

    def loss_terms(self, hp, logit_stand, x):
        (zw, zs), (vw, vs) = x.student, x.teacher
        terms = {"ce": hp.ce_weight * (losses.cross_entropy(zw, x.labels) + losses.cross_entropy(zs, x.labels))}
        mlkd = losses.mlkd_loss(zw, zs, vw, vs, hp.temperature, hp.kd_weight, logit_stand, mode=self.mlkd_mode)
        terms.update({f"mlkd_{name}": value for name, value in mlkd.items()})
        return terms

    def check(self, config):
        if self.mlkd_mode not in MODES:
            raise ConfigError(f"config.loss.mlkd_mode={self.mlkd_mode!r}; valid: {', '.join(MODES)}")
