"""zkd.models.batchnorm against float64 NumPy (values, gradients) and flax.linen.BatchNorm (variables, updates)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zkd.models.batchnorm import BatchNorm


def numpy_batchnorm(x, scale, bias, eps):
    """Training-mode BatchNorm over the last axis in float64: (y, mean, biased var)."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = x2.mean(0)
    var = ((x2 - mean) ** 2).mean(0)
    y = (x2 - mean) / np.sqrt(var + eps) * scale + bias
    return y.reshape(x.shape), mean, var


def numpy_grads(x, scale, bias, eps, g):
    """d/d(x, scale, bias) of sum(g * BN(x)) by the closed form of the float64 reference,
    checked itself against finite differences below."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    g2 = g.reshape(x2.shape).astype(np.float64)
    n = x2.shape[0]
    mean = x2.mean(0)
    var = ((x2 - mean) ** 2).mean(0)
    x_hat = (x2 - mean) / np.sqrt(var + eps)
    d_bias, d_scale = g2.sum(0), (g2 * x_hat).sum(0)
    d_x = scale / np.sqrt(var + eps) / n * (n * g2 - d_bias - x_hat * d_scale)
    return d_x.reshape(x.shape), d_scale, d_bias


def test_the_closed_form_reference_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    scale, bias = rng.standard_normal(3), rng.standard_normal(3)
    d_x, d_scale, d_bias = numpy_grads(x, scale, bias, 1e-5, g)
    f = lambda x_, s_, b_: float((g * numpy_batchnorm(x_, s_, b_, 1e-5)[0]).sum())
    h = 1e-6
    for i, j in [(0, 0), (3, 2), (5, 1)]:
        e = np.zeros_like(x)
        e[i, j] = h
        assert abs((f(x + e, scale, bias) - f(x - e, scale, bias)) / (2 * h) - d_x[i, j]) < 1e-6
    e = np.zeros(3)
    e[1] = h
    assert abs((f(x, scale + e, bias) - f(x, scale - e, bias)) / (2 * h) - d_scale[1]) < 1e-6
    assert abs((f(x, scale, bias + e) - f(x, scale, bias - e)) / (2 * h) - d_bias[1]) < 1e-6


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (64, 4)])
def test_train_mode_values_statistics_and_gradients_match_float64(shape):
    rng = np.random.default_rng(1)
    x = (3 + 2 * rng.standard_normal(shape)).astype(np.float32)  # an offset: the two-pass variance matters
    g = rng.standard_normal(shape).astype(np.float32)
    bn = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = bn.init(jax.random.key(0), x)
    params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)}

    def loss(params, x):
        y, updates = bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.sum(g * y), (y, updates)

    (_, (y, updates)), (grads, d_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    scale, bias = np.asarray(params["scale"], np.float64), np.asarray(params["bias"], np.float64)
    ref_y, ref_mean, ref_var = numpy_batchnorm(x, scale, bias, 1e-5)
    np.testing.assert_allclose(y, ref_y, atol=2e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * ref_mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * ref_var, rtol=1e-5)
    ref_dx, ref_dscale, ref_dbias = numpy_grads(x, scale, bias, 1e-5, g)
    np.testing.assert_allclose(d_x, ref_dx, atol=2e-5 * np.abs(ref_dx).max())
    np.testing.assert_allclose(grads["scale"], ref_dscale, atol=2e-5 * np.abs(ref_dscale).max())
    np.testing.assert_allclose(grads["bias"], ref_dbias, atol=2e-5 * np.abs(ref_dbias).max())


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_variables_and_outputs_as_flax_batchnorm(train, dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 5, 5, 3)) * 2 + 1, dtype)
    ours = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
    flax_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                           use_fast_variance=False)
    v_ours, v_flax = ours.init(jax.random.key(0), x), flax_bn.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(lambda a: (a.shape, a.dtype), v_flax)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v_ours, v_flax))  # init not updated
    variables = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 3), jnp.float32),
                            "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)},
                 "batch_stats": {"mean": jnp.asarray(rng.standard_normal(3), jnp.float32),
                                 "var": jnp.asarray(rng.uniform(0.5, 2, 3), jnp.float32)}}
    y_ours, s_ours = ours.apply(variables, x, mutable=["batch_stats"])
    y_flax, s_flax = flax_bn.apply(variables, x, mutable=["batch_stats"])
    assert y_ours.dtype == y_flax.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_flax, np.float32), atol=tol)
    np.testing.assert_allclose(s_ours["batch_stats"]["mean"], s_flax["batch_stats"]["mean"], atol=1e-6)
    np.testing.assert_allclose(s_ours["batch_stats"]["var"], s_flax["batch_stats"]["var"], rtol=1e-5)


def test_vmap_over_students_equals_separate_calls():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 8, 4)), jnp.float32)  # 3 students' batches
    scale = jnp.asarray(rng.uniform(0.5, 1.5, (3, 4)), jnp.float32)
    bias = jnp.zeros((3, 4), jnp.float32)
    bn = BatchNorm(use_running_average=False, momentum=0.9)
    v = bn.init(jax.random.key(0), x[0])

    def loss(s, b, xi):
        y, _ = bn.apply({"params": {"scale": s, "bias": b}, "batch_stats": v["batch_stats"]}, xi, mutable=["batch_stats"])
        return jnp.sum(y ** 3)

    grads = jax.vmap(jax.grad(loss, argnums=(0, 2)))(scale, bias, x)
    for i in range(3):
        one = jax.grad(loss, argnums=(0, 2))(scale[i], bias[i], x[i])
        np.testing.assert_allclose(grads[0][i], one[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grads[1][i], one[1], rtol=1e-5, atol=1e-6)
