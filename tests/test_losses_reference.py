"""zkd.losses against the released code's formulas (PyTorch on CPU) and the paper's toy case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.reference import released_losses as ref
from zkd import losses

RTOL = 2e-4


def _logits(seed, batch, classes, scale=1.0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((batch, classes)) * scale).astype(np.float32)
    # A teacher on another scale and offset, correlated with the student.
    t = (0.5 * s + rng.standard_normal((batch, classes)) * 2.0 * scale + 1.5).astype(np.float32)
    labels = rng.integers(0, classes, size=batch).astype(np.int32)
    return s, t, labels


def _torch(x):
    return torch.from_numpy(np.asarray(x)).double()


# ---------------------------------------------------------------- toy case (docs/paper.md §2)

TEACHER = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
S1 = np.array([[1.0, 2.0, 3.0, 2.8]], np.float32)
S2 = TEACHER / 10


def test_toy_case_plain_kd_prefers_the_wrong_student():
    kl1 = float(losses.kd_loss(S1, TEACHER, 1.0))
    kl2 = float(losses.kd_loss(S2, TEACHER, 1.0))
    assert round(kl1, 4) == 0.1749
    assert round(kl2, 4) == 0.3457
    assert kl1 < kl2


def test_toy_case_standardized_kd_prefers_the_right_student():
    kl1 = float(losses.kd_loss(S1, TEACHER, 1.0, logit_stand=True))
    kl2 = float(losses.kd_loss(S2, TEACHER, 1.0, logit_stand=True))
    assert round(kl1, 4) == 0.0995
    assert abs(kl2) < 1e-6
    assert kl2 < kl1


def test_toy_case_needs_the_unbiased_std():
    # With the population std (paper's Algorithm 1) S1 is not 0.0995: the release used ddof=1.
    kl1 = float(losses.kd_loss(S1, TEACHER, 1.0, logit_stand=True, ddof=0))
    assert round(kl1, 4) != 0.0995


# ---------------------------------------------------------------- standardize


@pytest.mark.parametrize("ddof", [0, 1])
def test_standardize_matches_numpy(ddof):
    x, _, _ = _logits(0, 16, 100, scale=3.0)
    want = (x - x.mean(-1, keepdims=True)) / (1e-7 + x.astype(np.float64).std(-1, ddof=ddof, keepdims=True))
    np.testing.assert_allclose(losses.standardize(x, ddof=ddof), want, rtol=1e-5, atol=1e-6)


def test_standardize_matches_released_normalize():
    x, _, _ = _logits(1, 8, 10, scale=5.0)
    want = ref.normalize(_torch(x)).numpy()
    np.testing.assert_allclose(losses.standardize(x), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- KD / DKD / MLKD vs the release

CASES = [(0, 64, 100, 1.0), (1, 32, 10, 4.0), (2, 8, 1000, 0.5), (3, 5, 2, 2.0)]


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("seed,batch,classes,scale", CASES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_matches_release(seed, batch, classes, scale, temperature, logit_stand):
    s, t, _ = _logits(seed, batch, classes, scale)
    want = ref.kd(_torch(s), _torch(t), temperature, logit_stand).item()
    got = losses.kd_loss(s, t, temperature, logit_stand=logit_stand)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=RTOL)


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("seed,batch,classes,scale", CASES)
@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (9.0, 18.0, 2.0), (1.0, 2.0, 3.0)])
def test_dkd_matches_release(seed, batch, classes, scale, alpha, beta, temperature, logit_stand):
    s, t, y = _logits(seed, batch, classes, scale)
    want = ref.dkd(_torch(s), _torch(t), torch.from_numpy(y).long(), alpha, beta, temperature, logit_stand).item()
    got = losses.dkd_loss(s, t, y, alpha, beta, temperature, logit_stand=logit_stand)
    np.testing.assert_allclose(float(got), want, rtol=RTOL)


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("seed,batch,classes,scale", [(0, 64, 100, 1.0), (1, 16, 10, 3.0), (2, 7, 20, 1.0)])
@pytest.mark.parametrize("temperature,kd_weight", [(4.0, 1.0), (2.0, 9.0)])
def test_mlkd_matches_release(seed, batch, classes, scale, temperature, kd_weight, logit_stand):
    sw, tw, _ = _logits(seed, batch, classes, scale)
    ss, ts, _ = _logits(seed + 100, batch, classes, scale)
    want = ref.mlkd_released(*map(_torch, (sw, ss, tw, ts)), temperature, kd_weight, logit_stand)
    got = losses.mlkd_loss(sw, ss, tw, ts, temperature, kd_weight, logit_stand=logit_stand)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(float(got[name]), want[name].item(), rtol=RTOL, err_msg=name)


def _np_softmax(x, t):
    z = x / t - (x / t).max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_kd(s, t, temp):
    p_t, p_s = _np_softmax(t, temp), _np_softmax(s, temp)
    return (p_t * (np.log(p_t) - np.log(p_s))).sum(-1) * temp**2


def test_mlkd_paper_mode_matches_numpy_formulas():
    sw, tw, _ = _logits(5, 12, 10, 2.0)
    ss, ts, _ = _logits(6, 12, 10, 2.0)
    sw, tw, ss, ts = (x.astype(np.float64) for x in (sw, tw, ss, ts))
    p = _np_softmax(tw, 1.0)
    conf = p.max(-1)
    mask = (conf <= np.median(conf)).astype(np.float64)
    cconf = p.sum(0)
    cmask = (cconf <= np.median(cconf)).astype(np.float64)
    temps, w, B, C = (4.0, 3.0, 5.0, 2.0, 6.0), 2.0, 12, 10

    def grams(s, t, temp):
        ps, pt = _np_softmax(s, temp), _np_softmax(t, temp)
        bsq = (pt @ pt.T - ps @ ps.T) ** 2
        csq = (pt.T @ pt - ps.T @ ps) ** 2
        return (bsq * mask[None]).sum() / B, (csq * cmask[None]).sum() / C

    want = {
        "kd_weak": w * sum((_np_kd(sw, tw, T) * mask).mean() for T in temps),
        "kd_strong": w * sum(_np_kd(ss, ts, T).mean() for T in temps),
        "bc_weak": w * sum(grams(sw, tw, T)[0] for T in temps),
        "cc_weak": w * sum(grams(sw, tw, T)[1] for T in temps),
        "bc_strong": w * sum(grams(ss, ts, T)[0] for T in temps),
        "cc_strong": w * sum(grams(ss, ts, T)[1] for T in temps),
    }
    got = losses.mlkd_loss(*(x.astype(np.float32) for x in (sw, ss, tw, ts)), 4.0, w, mode="paper")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(float(got[name]), want[name], rtol=RTOL, err_msg=name)


def test_mlkd_released_masks_act_as_scalar_factors():
    # Quirk (a): with an even batch of distinct confidences exactly half the samples pass, and
    # the released kd_weak is the plain mean KD times 0.5.
    sw, tw, _ = _logits(7, 16, 10, 1.0)
    terms = losses.mlkd_loss(sw, sw, tw, tw, 4.0, 1.0)
    plain = sum(float(losses.kd_loss(sw, tw, T)) for T in (4.0, 3.0, 5.0, 2.0, 6.0))
    np.testing.assert_allclose(float(terms["kd_weak"]), 0.5 * plain, rtol=RTOL)


# ---------------------------------------------------------------- CTKD vs the release


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 10, 11, 240])
def test_ctkd_lambda_matches_release(epoch):
    np.testing.assert_allclose(float(losses.ctkd_lambda(epoch)), ref.ctkd_lambda(epoch), atol=1e-7)


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("p0,epoch", [(1.0, 3), (-0.5, 12)])
def test_ctkd_loss_and_gradients_match_release(p0, epoch, logit_stand):
    s, t, _ = _logits(8, 16, 100, 2.0)
    lam = ref.ctkd_lambda(epoch)

    p_t = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    s_t = _torch(s).requires_grad_(True)
    loss_t = ref.kd(s_t, _torch(t), ref.ctkd_temperature(p_t, lam), logit_stand)
    loss_t.backward()

    def loss_fn(p, s):
        temperature = losses.ctkd_temperature(p, losses.ctkd_lambda(epoch))
        return losses.kd_loss(s, t, temperature, logit_stand=logit_stand)

    loss, (g_p, g_s) = jax.value_and_grad(loss_fn, argnums=(0, 1))(jnp.float32(p0), s)
    np.testing.assert_allclose(float(loss), loss_t.item(), rtol=RTOL)
    # dL/dT nearly cancels (2T*KL against T^2*dKL/dT): float32 itself (zkd or torch) keeps
    # only 2-3 significant digits of it (torch float32 is off by as much), hence rtol 1e-2.
    np.testing.assert_allclose(float(g_p), p_t.grad.item(), rtol=1e-2, atol=3e-6)
    np.testing.assert_allclose(g_s, s_t.grad.numpy(), rtol=1e-3, atol=1e-7)


def test_gradient_reversal_scales_the_gradient_only():
    x = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(losses.gradient_reversal(x, -0.7), x)
    g = jax.grad(lambda x: jnp.sum(losses.gradient_reversal(x, -0.7) * jnp.array([1.0, 2.0, 3.0])))(x)
    np.testing.assert_allclose(g, [-0.7, -1.4, -2.1], rtol=1e-6)
    # lambda 0 (epoch 0): the temperature gets no gradient at all.
    g0 = jax.grad(lambda p: losses.ctkd_temperature(p, 0.0))(jnp.float32(1.0))
    assert float(g0) == 0.0


# ---------------------------------------------------------------- gradients vs the release


@pytest.mark.parametrize("logit_stand", [False, True])
def test_kd_and_dkd_student_gradients_match_release(logit_stand):
    s, t, y = _logits(9, 16, 10, 2.0)
    s_t = _torch(s).requires_grad_(True)
    ref.kd(s_t, _torch(t), 2.0, logit_stand).backward()
    g = jax.grad(losses.kd_loss)(s, t, 2.0, logit_stand)
    np.testing.assert_allclose(g, s_t.grad.numpy(), rtol=1e-3, atol=1e-6)

    s_t = _torch(s).requires_grad_(True)
    ref.dkd(s_t, _torch(t), torch.from_numpy(y).long(), 1.0, 8.0, 4.0, logit_stand).backward()
    g = jax.grad(losses.dkd_loss)(s, t, y, 1.0, 8.0, 4.0, logit_stand)
    np.testing.assert_allclose(g, s_t.grad.numpy(), rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------- bfloat16 inputs


@pytest.mark.parametrize("logit_stand", [False, True])
def test_bfloat16_logits_give_float32_accurate_losses(logit_stand):
    s, t, y = _logits(10, 32, 100, 2.0)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    # Expected: the release in float64 on the bfloat16-rounded values.
    s_r, t_r = np.asarray(s16, np.float32), np.asarray(t16, np.float32)
    kd = losses.kd_loss(s16, t16, 2.0, logit_stand)
    assert kd.dtype == jnp.float32
    np.testing.assert_allclose(float(kd), ref.kd(_torch(s_r), _torch(t_r), 2.0, logit_stand).item(), rtol=RTOL)
    dkd = losses.dkd_loss(s16, t16, y, 1.0, 8.0, 4.0, logit_stand)
    assert dkd.dtype == jnp.float32
    want = ref.dkd(_torch(s_r), _torch(t_r), torch.from_numpy(y).long(), 1.0, 8.0, 4.0, logit_stand).item()
    np.testing.assert_allclose(float(dkd), want, rtol=RTOL)
    assert losses.standardize(s16).dtype == jnp.float32


def test_cross_entropy_matches_torch():
    s, _, y = _logits(11, 16, 10, 3.0)
    want = torch.nn.functional.cross_entropy(_torch(s), torch.from_numpy(y).long()).item()
    np.testing.assert_allclose(float(losses.cross_entropy(s, y)), want, rtol=1e-5)
    per = losses.cross_entropy(s, y, reduction="none")
    assert per.shape == (16,)
    np.testing.assert_allclose(float(per.mean()), want, rtol=1e-5)
