"""Independent PyTorch re-statement of the released loss code (docs/paper.md §1-3), for tests.

Written from the description of the release: the same operations in the same order
(torch.std, softmax then log, the -1000 target trick, np.percentile masks), so that zkd's
numbers can be compared with what the released code computes for the same logits.
"""

import numpy as np
import torch
import torch.nn.functional as F


def normalize(logit):
    mean = logit.mean(dim=-1, keepdim=True)
    stdv = logit.std(dim=-1, keepdim=True)
    return (logit - mean) / (1e-7 + stdv)


def kd(student, teacher, temperature, logit_stand, reduce=True):
    s = normalize(student) if logit_stand else student
    t = normalize(teacher) if logit_stand else teacher
    log_pred_student = F.log_softmax(s / temperature, dim=1)
    pred_teacher = F.softmax(t / temperature, dim=1)
    loss = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1)
    if reduce:
        loss = loss.mean()
    return loss * temperature**2


def dkd(student, teacher, target, alpha, beta, temperature, logit_stand):
    s = normalize(student) if logit_stand else student
    t = normalize(teacher) if logit_stand else teacher
    gt = torch.zeros_like(s).scatter_(1, target.unsqueeze(1), 1).bool()
    other = ~gt
    p_s = F.softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)

    def binary(p):
        return torch.cat([(p * gt).sum(1, keepdims=True), (p * other).sum(1, keepdims=True)], 1)

    b_s, b_t = binary(p_s), binary(p_t)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / target.shape[0]
    p_t2 = F.softmax(t / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(s / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def _cc(student, teacher, temperature):
    _, num_classes = teacher.shape
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / num_classes


def _bc(student, teacher, temperature):
    batch, _ = teacher.shape
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / batch


def mlkd_released(sw, ss, tw, ts, temperature, kd_weight, logit_stand):
    """The release's MLKD terms (no CE), quirks (a)-(c) included."""
    p_tw = F.softmax(tw, dim=1)
    confidence, _ = p_tw.max(dim=1)
    mask = confidence.le(float(np.percentile(confidence.numpy().flatten(), 50))).bool()
    class_conf = p_tw.sum(dim=0)
    class_mask = class_conf.le(float(np.percentile(class_conf.numpy().flatten(), 50))).bool()
    temps = (temperature, 3.0, 5.0, 2.0, 6.0)
    w = kd_weight
    kd_weak = sum(w * (kd(sw, tw, T, logit_stand) * mask).mean() for T in temps)
    kd_strong = (
        sum(w * kd(ss, ts, T, logit_stand) for T in temps[:3])
        + w * kd(sw, tw, 2.0, logit_stand)
        + w * kd(sw, tw, 6.0, logit_stand)
    )
    cc_weak = sum(w * (_cc(sw, tw, T) * class_mask).mean() for T in temps)
    bc_weak = sum(w * (_bc(sw, tw, T) * mask).mean() for T in temps)
    return {"kd_weak": kd_weak, "kd_strong": kd_strong, "cc_weak": cc_weak, "bc_weak": bc_weak}


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.lambda_ * grad, None


def ctkd_temperature(p, lambda_):
    return 1.0 + 20.0 * torch.sigmoid(GradientReversal.apply(p, lambda_))


def ctkd_lambda(epoch, num_loops=10, max_value=0.0, min_value=-1.0):
    import math

    i = min(max(epoch, 0), num_loops)
    value = (math.cos(i * math.pi / num_loops) + 1.0) * 0.5
    return value * (max_value - min_value) + min_value
