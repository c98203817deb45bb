"""KD (Hinton et al.): CE plus the tempered KL divergence to the teacher, with or without LS."""

from __future__ import annotations

import dataclasses

import flax.struct

from zkd import losses
from zkd.methods.base import Method, hparam
from zkd.methods.registry import register


@register("kd")
@dataclasses.dataclass(frozen=True)
class KD(Method):
    """loss = ce_weight * CE(z, y) + kd_weight * T^2 KL(p_v || p_z) at temperature T, on
    standardized logits with LS (``zkd.losses.kd_loss``)."""

    @flax.struct.dataclass
    class HParams:
        temperature: float = hparam(4.0, positive=True)
        kd_weight: float = hparam(1.0)
        ce_weight: float = hparam(1.0)

    distils_sown_logits = True

    def loss_terms(self, hp, logit_stand, x):
        return {"ce": hp.ce_weight * losses.cross_entropy(x.student[0], x.labels),
                "kd": hp.kd_weight * losses.kd_loss(x.distill, x.teacher[0], hp.temperature, logit_stand)}
