"""The released KD+LS training step in plain PyTorch (the reference of tests/test_step_torch.py and
the baseline of experiments/bench_train_step.py).

Loss: ``ce_weight * CE(student) + kd_weight * T^2 * KL(softmax(z(teacher) / T) || softmax(z(student) / T))``
with ``z(v) = (v - mean(v)) / (1e-7 + std(v))`` over the classes (std unbiased, torch's default), the
KL summed over classes and averaged over the batch; the teacher runs under ``no_grad``.
"""

import torch
import torch.nn.functional as F


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """The release's Z-score of logits [B, K] along the classes."""
    return (logits - logits.mean(-1, keepdim=True)) / (1e-7 + logits.std(-1, keepdim=True))


def kd_ls_step(teacher, student, optimizer, images, labels, temperature=2.0, kd_weight=9.0, ce_weight=0.1):
    """One SGD step of ``student`` on the KD+LS loss; returns the loss (a float)."""
    with torch.no_grad():
        teacher_logits = teacher(images)
    logits = student(images)
    kl = F.kl_div(F.log_softmax(standardize(logits) / temperature, 1),
                  F.softmax(standardize(teacher_logits) / temperature, 1), reduction="none").sum(1).mean()
    loss = ce_weight * F.cross_entropy(logits, labels) + kd_weight * temperature ** 2 * kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
