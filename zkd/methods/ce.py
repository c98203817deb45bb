"""Cross-entropy alone: teachers and students trained without distillation."""

from __future__ import annotations

import dataclasses

import flax.struct

from zkd import losses
from zkd.methods.base import Method, hparam
from zkd.methods.registry import register


@register("ce")
@dataclasses.dataclass(frozen=True)
class CE(Method):
    """loss = ce_weight * CE(z, y); no teacher, so logit standardization has no say."""

    @flax.struct.dataclass
    class HParams:
        ce_weight: float = hparam(1.0)

    needs_teacher = False
    uses_logit_stand = False

    def loss_terms(self, hp, logit_stand, x):
        return {"ce": hp.ce_weight * losses.cross_entropy(x.student[0], x.labels)}
