"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022) as a zkd
method, with logit standardization: the worked example of docs/methods.md.

DIST matches the student's class probabilities to the teacher's by Pearson correlation rather
than KL: across the classes of each example (inter-class relation) and across the examples of
each class (intra-class relation):

    p = softmax(z' / T), q = softmax(v' / T)      z' = z, v' = v; with LS z' = standardize(z), ...
    inter = 1 - mean_i pearson(p[i, :], q[i, :])
    intra = 1 - mean_j pearson(p[:, j], q[:, j])
    loss  = ce_weight * CE(z, y) + T^2 (dist_beta * inter + dist_gamma * intra)

pearson(a, b) = <a - mean a, b - mean b> / (|a - mean a| |b - mean b| + 1e-8), as in the authors'
release (hunto/DIST_KD); their CIFAR-100 setting is T 4, beta 2, gamma 2 (ImageNet: T 1, 1, 1).

Use it from the command line by reference (nothing to register by hand):

    python -m zkd.main --config=configs/fashion_mnist.py:method=kd,teacher_checkpoint=TEACHER \
        --config.method=experiments.methods.dist:DIST --config.loss.dist_beta=2 --config.loss.dist_gamma=2

or from Python after ``import experiments.methods.dist`` (``config.method = "dist"``).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

import zkd.methods
from zkd import losses
from zkd.errors import ConfigError

PEARSON_EPS = 1e-8  # the authors' cosine-similarity epsilon, added to the product of the norms


def pearson_rows(a, b):
    """[N] Pearson correlation of each row of a [N, M] with the same row of b."""
    a = a - jnp.mean(a, axis=1, keepdims=True)
    b = b - jnp.mean(b, axis=1, keepdims=True)
    norms = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.sum(a * b, axis=1) / (norms + PEARSON_EPS)


def dist_terms(student, teacher, temperature, logit_stand: bool):
    """(inter, intra) of DIST on [B, K] logits, both scaled by T^2, float32."""
    z, v = student.astype(jnp.float32), teacher.astype(jnp.float32)
    if logit_stand:  # the z-score of Sun et al. before the temperature, as for KD
        z, v = losses.standardize(z), losses.standardize(v)
    p = jax.nn.softmax(z / temperature, axis=-1)
    q = jax.nn.softmax(v / temperature, axis=-1)
    scale = temperature ** 2
    inter = scale * (1.0 - jnp.mean(pearson_rows(p, q)))
    intra = scale * (1.0 - jnp.mean(pearson_rows(p.T, q.T)))
    return inter, intra


@zkd.methods.register("dist")
@dataclasses.dataclass(frozen=True)
class DIST(zkd.methods.Method):
    """CE plus DIST's inter- and intra-class Pearson terms; LS standardizes both logits first."""

    @flax.struct.dataclass
    class HParams:
        temperature: float = zkd.methods.hparam(4.0, positive=True)
        ce_weight: float = zkd.methods.hparam(1.0)
        dist_beta: float = zkd.methods.hparam(1.0, "beta")
        dist_gamma: float = zkd.methods.hparam(1.0, "gamma")

    distils_sown_logits = True  # config.loss.kd_logits may point it at a distillation head, as KD

    def loss_terms(self, hp, logit_stand, x):
        inter, intra = dist_terms(x.distill, x.teacher[0], hp.temperature, logit_stand)
        return {"ce": hp.ce_weight * losses.cross_entropy(x.student[0], x.labels),
                "dist_inter": hp.dist_beta * inter,
                "dist_intra": hp.dist_gamma * intra}

    def check(self, config):
        if config.batch_size < 2:
            raise ConfigError("DIST's intra-class term correlates the examples of a batch: config.batch_size >= 2")
