"""Properties of the losses (hypothesis), robustness where the release fails, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from jax import test_util as jtu
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zkd import losses

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)
kd_jit = jax.jit(losses.kd_loss, static_argnames="logit_stand")
dkd_jit = jax.jit(losses.dkd_loss, static_argnames="logit_stand")
standardize_jit = jax.jit(losses.standardize, static_argnames="ddof")


@st.composite
def logit_pairs(draw, classes_choices=(2, 5, 12)):
    # A few fixed shapes so the jitted losses below compile once per shape.
    batch = draw(st.sampled_from((1, 4)))
    classes = draw(st.sampled_from(classes_choices))
    elems = st.floats(-20, 20, width=32)
    s = draw(hnp.arrays(np.float32, (batch, classes), elements=elems))
    t = draw(hnp.arrays(np.float32, (batch, classes), elements=elems))
    # Keep per-sample spread away from 0 so standardization is well conditioned (the ramps alone can
    # cancel a row: [12.75, 9.75] + [0, 3] is constant; constant rows are tested on their own).
    s = s + np.linspace(0, 3, classes, dtype=np.float32)
    t = t + np.linspace(3, 0, classes, dtype=np.float32)
    assume(np.all(np.ptp(s, axis=-1) > 0.1) and np.all(np.ptp(t, axis=-1) > 0.1))
    return s, t


@PROPERTY_SETTINGS
@given(logit_pairs(), st.floats(-50, 50), st.floats(0.1, 20), st.booleans(), st.floats(0.5, 8))
def test_standardized_kd_invariant_to_shift_and_positive_scale(pair, shift, scale, which, temperature):
    s, t = pair
    base = float(kd_jit(s, t, temperature, logit_stand=True))
    if which:
        moved = float(kd_jit(s * np.float32(scale) + np.float32(shift), t, temperature, logit_stand=True))
    else:
        moved = float(kd_jit(s, t * np.float32(scale) + np.float32(shift), temperature, logit_stand=True))
    assert moved == pytest.approx(base, rel=2e-3, abs=2e-4)


@PROPERTY_SETTINGS
@given(logit_pairs(), st.floats(-50, 50), st.floats(0.1, 20), st.floats(0.5, 8))
def test_standardized_dkd_invariant_to_shift_and_positive_scale(pair, shift, scale, temperature):
    s, t = pair
    y = np.zeros(s.shape[0], np.int32)
    base = float(dkd_jit(s, t, y, 1.0, 8.0, temperature, logit_stand=True))
    moved = float(dkd_jit(s * np.float32(scale) + np.float32(shift), t, y, 1.0, 8.0, temperature, logit_stand=True))
    assert moved == pytest.approx(base, rel=2e-3, abs=2e-4)


@PROPERTY_SETTINGS
@given(logit_pairs(), st.floats(0.5, 8), st.booleans())
def test_kd_of_identical_logits_is_zero_and_kd_is_nonnegative(pair, temperature, logit_stand):
    s, t = pair
    assert abs(float(kd_jit(t, t, temperature, logit_stand=logit_stand))) < 1e-5
    assert float(kd_jit(s, t, temperature, logit_stand=logit_stand)) > -1e-5


@PROPERTY_SETTINGS
@given(logit_pairs(classes_choices=(2, 7, 40)), st.sampled_from([0, 1]))
def test_standardized_logits_have_zero_mean_unit_std_and_the_bound(pair, ddof):
    s, _ = pair
    z = np.asarray(standardize_jit(s, ddof=ddof), np.float64)
    k = s.shape[1]
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(-1, ddof=ddof), 1.0, rtol=1e-4)
    bound = (k - 1) / np.sqrt(k) if ddof == 1 else np.sqrt(k - 1)
    assert np.all(np.abs(z) <= bound * (1 + 1e-5))
    # Ranking is kept.
    np.testing.assert_array_equal(np.argsort(z, -1, kind="stable"), np.argsort(s, -1, kind="stable"))


def test_the_bound_is_attained_by_a_one_hot():
    k = 7
    x = np.zeros((1, k), np.float32)
    x[0, 3] = 5.0
    z = np.asarray(losses.standardize(x))
    np.testing.assert_allclose(z.max(), (k - 1) / np.sqrt(k), rtol=1e-5)


@pytest.mark.parametrize("logit_stand", [False, True])
def test_gradients_match_finite_differences(logit_stand):
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.standard_normal((3, 5)))
    t = jnp.asarray(rng.standard_normal((3, 5)) * 2)
    y = jnp.array([0, 4, 2])
    jtu.check_grads(lambda s: losses.kd_loss(s, t, 2.0, logit_stand), (s,), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)
    jtu.check_grads(lambda s: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, logit_stand), (s,), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)
    jtu.check_grads(lambda s: losses.standardize(s), (s,), order=1, modes=["rev", "fwd"], eps=1e-2, atol=2e-2, rtol=2e-2)
    jtu.check_grads(
        lambda s: sum(losses.mlkd_loss(s, s * 0.5, t, t + 1.0, 4.0, 1.0, logit_stand).values()),
        (s,), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2,
    )


def test_no_gradient_reaches_the_teacher():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((4, 6)).astype(np.float32)
    t = rng.standard_normal((4, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    for ls in (False, True):
        assert not np.any(jax.grad(lambda t: losses.kd_loss(s, t, 2.0, ls), allow_int=True)(t))
        assert not np.any(jax.grad(lambda t: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, ls))(t))
        g = jax.grad(lambda t: sum(losses.mlkd_loss(s, s, t, t, 4.0, 1.0, ls, mode="paper").values()))(t)
        assert not np.any(g)


# ---------------------------------------------------------------- robustness


def _all_finite(*xs):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(xs))


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("case", ["constant", "huge", "tiny_temperature"])
def test_losses_and_gradients_stay_finite_where_the_release_fails(case, logit_stand):
    rng = np.random.default_rng(2)
    k = 10
    if case == "constant":
        s = np.full((4, k), 3.0, np.float32)
        t = np.full((4, k), -1.0, np.float32)
        temperature = 4.0
    elif case == "huge":
        s = (np.sign(rng.standard_normal((4, k))) * 1e4).astype(np.float32)
        t = (np.sign(rng.standard_normal((4, k))) * 1e4).astype(np.float32)
        temperature = 1.0
    else:
        s = rng.standard_normal((4, k)).astype(np.float32) * 30
        t = rng.standard_normal((4, k)).astype(np.float32) * 30
        temperature = 0.05
    y = np.array([0, 3, 5, 9])
    kd, g_kd = jax.value_and_grad(losses.kd_loss)(s, t, temperature, logit_stand)
    dkd, g_dkd = jax.value_and_grad(losses.dkd_loss)(s, t, y, 1.0, 8.0, temperature, logit_stand)
    ml, g_ml = jax.value_and_grad(lambda s: sum(losses.mlkd_loss(s, s, t, t, temperature, 1.0, logit_stand).values()))(s)
    assert _all_finite(kd, g_kd, dkd, g_dkd, ml, g_ml)


def test_release_dkd_is_not_finite_for_huge_logits_but_zkd_is():
    # The release takes log of a probability that underflows to 0: inf. zkd stays in log space.
    import torch

    from tests.reference import released_losses as ref

    s = np.array([[1e4, -1e4, 0.0]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0]], np.float32)
    y = np.array([0])
    with np.errstate(all="ignore"):
        released = ref.dkd(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y).long(), 1.0, 8.0, 1.0, False)
    assert not np.isfinite(released.item())
    assert np.isfinite(float(losses.dkd_loss(s, t, y, 1.0, 8.0, 1.0)))


def _dkd_float64(s, t, y, alpha, beta, temperature, logit_stand=False):
    """DKD per the paper's definition, in float64 NumPy log space (independent of zkd); with
    ``logit_stand`` both logit rows z-scored first as released (unbiased std, eps 1e-7)."""
    def parts(x, target):
        x = x.astype(np.float64)
        if logit_stand:
            x = (x - x.mean()) / (1e-7 + x.std(ddof=1))
        x = x / temperature
        others = np.delete(x, target)
        lse_o, lse = np.logaddexp.reduce(others), np.logaddexp.reduce(x)
        return np.array([x[target] - lse, lse_o - lse]), others - lse_o

    total = 0.0
    for s_i, t_i, y_i in zip(s, t, y):
        (b_s, q_s), (b_t, q_t) = parts(s_i, y_i), parts(t_i, y_i)
        kl = lambda log_p, log_q: float(np.sum(np.exp(log_p) * (log_p - log_q)))  # noqa: E731
        total += alpha * kl(b_t, b_s) + beta * kl(q_t, q_s)
    return total / len(y) * temperature**2


@pytest.mark.parametrize("case", ["dominant target", "huge logits", "dominant non-target"])
def test_dkd_matches_float64_definition_where_probabilities_underflow(case):
    # Regimes where p_non_target or a non-target probability is far below float32's epsilon: the
    # non-target log-sum-exp must come from the non-target logits, never from 1 - p_target.
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 7)).astype(np.float32)
    t = rng.standard_normal((4, 7)).astype(np.float32)
    y = np.array([0, 3, 6, 2])
    rows = np.arange(4)
    if case == "dominant target":
        s[rows, y] += 60.0
        t[rows, y] += 80.0
    elif case == "huge logits":
        s, t = s * 3e3, t * 5e3
    else:
        s[rows, (y + 1) % 7] += 70.0
        t[rows, (y + 2) % 7] += 90.0
    want = _dkd_float64(s, t, y, 1.0, 8.0, 2.0)
    got, grad = jax.value_and_grad(losses.dkd_loss)(s, t, y, 1.0, 8.0, 2.0)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("logit_stand", [False, True])
def test_dkd_gradient_in_the_temperature_is_the_definitions(logit_stand):
    # T may be traced and learned (CTKD's temperature applies to DKD in its paper): the gradient
    # must be finite (the excluded target's -inf log-probabilities once made it NaN) and right.
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((4, 7)).astype(np.float32), 3 * rng.standard_normal((4, 7)).astype(np.float32)
    y = np.array([0, 3, 6, 2])
    got = float(jax.grad(lambda temp: losses.dkd_loss(s, t, y, 1.0, 8.0, temp, logit_stand))(2.0))
    h = 1e-4
    want = (_dkd_float64(s, t, y, 1.0, 8.0, 2.0 + h, logit_stand)
            - _dkd_float64(s, t, y, 1.0, 8.0, 2.0 - h, logit_stand)) / (2 * h)
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("classes", [2, 3, 21843])
def test_many_and_few_classes_and_large_batches(classes):
    batch = 4096 if classes <= 3 else 8
    rng = np.random.default_rng(3)
    s = rng.standard_normal((batch, classes)).astype(np.float32)
    t = rng.standard_normal((batch, classes)).astype(np.float32) * 3
    y = rng.integers(0, classes, batch)
    for ls in (False, True):
        kd, g = jax.jit(jax.value_and_grad(losses.kd_loss), static_argnums=3)(s, t, 2.0, ls)
        dkd, gd = jax.jit(jax.value_and_grad(losses.dkd_loss), static_argnums=6)(s, t, y, 1.0, 8.0, 2.0, ls)
        assert _all_finite(kd, g, dkd, gd)
        assert float(kd) > 0 and float(dkd) > 0


def test_reduction_none_gives_per_example_losses_for_masking():
    rng = np.random.default_rng(4)
    s = rng.standard_normal((6, 10)).astype(np.float32)
    t = rng.standard_normal((6, 10)).astype(np.float32)
    y = np.arange(6)
    for fn in (
        lambda r: losses.kd_loss(s, t, 2.0, True, reduction=r),
        lambda r: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, True, reduction=r),
        lambda r: losses.cross_entropy(s, y, reduction=r),
    ):
        per = fn("none")
        assert per.shape == (6,)
        np.testing.assert_allclose(float(fn("mean")), float(per.mean()), rtol=1e-6)
        np.testing.assert_allclose(float(fn("sum")), float(per.sum()), rtol=1e-6)
    # Masked mean over the first 4 examples equals the loss of those 4 alone.
    per = losses.kd_loss(s, t, 2.0, reduction="none")
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    np.testing.assert_allclose(float((per * mask).sum() / mask.sum()), float(losses.kd_loss(s[:4], t[:4], 2.0)), rtol=1e-6)


# ---------------------------------------------------------------- bad input


S = np.zeros((4, 10), np.float32)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: losses.kd_loss(S, np.zeros((4, 9), np.float32), 2.0), ValueError, "teacher_logits has shape"),
        (lambda: losses.kd_loss(S[0], S[0], 2.0), ValueError, r"\[batch, num_classes\]"),
        (lambda: losses.kd_loss(S.astype(np.int32), S, 2.0), TypeError, "student_logits must be real floating"),
        (lambda: losses.kd_loss(S, S.astype(np.complex64), 2.0), TypeError, "teacher_logits.*complex"),
        (lambda: losses.kd_loss(S, S, 0.0), ValueError, "temperature must be > 0"),
        (lambda: losses.kd_loss(S, S, -1.0), ValueError, "temperature must be > 0"),
        (lambda: losses.kd_loss(S, S, np.ones(3)), ValueError, "temperature must be a scalar"),
        (lambda: losses.kd_loss(S, S, 2.0, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: losses.dkd_loss(S, S, np.array([0, 1, 2, 10]), 1.0, 8.0, 4.0), ValueError, r"labels must lie in \[0, 10\)"),
        (lambda: losses.dkd_loss(S, S, np.array([0, -1, 2, 3]), 1.0, 8.0, 4.0), ValueError, r"labels must lie in"),
        (lambda: losses.dkd_loss(S, S, np.array([0, 1, 2]), 1.0, 8.0, 4.0), ValueError, r"labels must have shape \[batch\] = \(4,\)"),
        (lambda: losses.dkd_loss(S, S, np.zeros(4, np.float32), 1.0, 8.0, 4.0), TypeError, "labels must be integer"),
        (lambda: losses.dkd_loss(S, S, np.zeros(4, np.int32), -1.0, 8.0, 4.0), ValueError, "alpha must be >= 0"),
        (lambda: losses.mlkd_loss(S, S[:2], S, S[:2], 4.0, 1.0), ValueError, "student_weak has shape"),
        (lambda: losses.mlkd_loss(S, S, S, S, 4.0, 1.0, mode="fixed"), ValueError, "mode must be one of"),
        (lambda: losses.standardize(np.zeros((3, 1), np.float32)), ValueError, "more classes than ddof"),
        (lambda: losses.cross_entropy(S, np.array([0, 1, 2, 11])), ValueError, r"labels must lie in"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_bad_values_poison_the_loss_with_nan():
    # Under jit the values are unknown at trace time: the loss becomes NaN, never a quiet number.
    kd = jax.jit(losses.kd_loss)(S, S, -2.0)
    dkd = jax.jit(losses.dkd_loss)(S, S, jnp.array([0, 1, 2, 10]), 1.0, 8.0, 4.0)
    ce = jax.jit(losses.cross_entropy)(S, jnp.array([0, 1, 2, 10]))
    assert np.isnan(float(kd)) and np.isnan(float(dkd)) and np.isnan(float(ce))


def test_nan_logits_give_nan_losses_never_a_quiet_number():
    s = np.zeros((2, 5), np.float32)
    t = np.full((2, 5), np.nan, np.float32)
    y = np.array([0, 1])
    for ls in (False, True):
        assert np.isnan(float(losses.kd_loss(s, t, 2.0, ls)))
        assert np.isnan(float(losses.kd_loss(t, s, 2.0, ls)))
        assert np.isnan(float(losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, ls)))
        assert all(np.isnan(float(v)) for k, v in losses.mlkd_loss(s, s, t, t, 4.0, 1.0, ls).items() if k.startswith("kd"))
