"""DKD (Zhao et al.): target and non-target KD weighted apart, ramped in over the first epochs."""

from __future__ import annotations

import dataclasses

import flax.struct

from zkd import losses
from zkd.errors import ConfigError
from zkd.methods.base import Method, hparam
from zkd.methods.registry import register


@register("dkd")
@dataclasses.dataclass(frozen=True)
class DKD(Method):
    """loss = ce_weight * CE + min(epoch / dkd_warmup_epochs, 1) * (alpha TCKD + beta NCKD)
    (``zkd.losses.dkd_loss``); with LS the alpha and beta of the released logs absorb the weight."""

    dkd_warmup_epochs: float = 20.0

    @flax.struct.dataclass
    class HParams:
        temperature: float = hparam(4.0, positive=True)
        ce_weight: float = hparam(1.0)
        dkd_alpha: float = hparam(1.0)
        dkd_beta: float = hparam(8.0)

    def loss_terms(self, hp, logit_stand, x):
        z, v = x.student[0], x.teacher[0]
        warmup = losses.dkd_warmup(x.epoch, self.dkd_warmup_epochs)
        return {"ce": hp.ce_weight * losses.cross_entropy(z, x.labels),
                "dkd": warmup * losses.dkd_loss(z, v, x.labels, hp.dkd_alpha, hp.dkd_beta, hp.temperature,
                                                logit_stand)}

    def check(self, config):
        if not self.dkd_warmup_epochs > 0:
            raise ConfigError(f"config.loss.dkd_warmup_epochs must be > 0, got {self.dkd_warmup_epochs}")
