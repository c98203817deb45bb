"""CTKD (Li et al.): KD at a temperature learned adversarially (gradient reversal)."""

from __future__ import annotations

import dataclasses

import flax.struct

from zkd import losses
from zkd.methods.base import Method, hparam
from zkd.methods.registry import register


@register("ctkd")
@dataclasses.dataclass(frozen=True)
class CTKD(Method):
    """loss = ce_weight * CE + kd_weight * kd_loss(z, v, T_learned, LS), with the global
    T_learned = ``ctkd_temperature(p, lambda(epoch))``: p is learned with the student (same
    optimizer and weight decay, as released), its gradient reversed and scaled by lambda."""

    @flax.struct.dataclass
    class HParams:
        kd_weight: float = hparam(1.0)
        ce_weight: float = hparam(1.0)

    distils_sown_logits = True

    def init_params(self):
        return {"p": losses.init_temperature_param()}

    def loss_terms(self, hp, logit_stand, x):
        temperature = losses.ctkd_temperature(x.params["p"], losses.ctkd_lambda(x.epoch))
        return {"ce": hp.ce_weight * losses.cross_entropy(x.student[0], x.labels),
                "kd": hp.kd_weight * losses.kd_loss(x.distill, x.teacher[0], temperature, logit_stand)}

    def metrics(self, params):
        return {"ctkd_temperature": losses.ctkd_temperature(params["p"], 0.0)}
