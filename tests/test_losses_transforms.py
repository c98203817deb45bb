"""The losses under jit, grad, vmap (hyper-parameter grids), pmap and shard_map."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from zkd import losses

N_DEV = 4


def _data(batch=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((batch, classes)).astype(np.float32)
    t = (rng.standard_normal((batch, classes)) * 3).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    return s, t, y


def test_vmap_over_a_hyper_parameter_grid_equals_a_python_loop():
    s, t, y = _data()
    temps = jnp.array([2.0, 3.0])
    weights = jnp.array([3.0, 6.0, 9.0])
    tt, ww = [a.ravel() for a in jnp.meshgrid(temps, weights, indexing="ij")]

    def point(temperature, weight):
        return weight * losses.kd_loss(s, t, temperature, logit_stand=True) + losses.dkd_loss(
            s, t, y, weight, weight, temperature, logit_stand=True
        )

    got = jax.jit(jax.vmap(point))(tt, ww)
    want = [float(point(float(a), float(b))) for a, b in zip(tt, ww)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_vmap_over_stacked_students_and_mlkd_terms():
    s, t, _ = _data()
    stacked = jnp.stack([s, 2 * s, s - 1])
    got = jax.vmap(lambda x: losses.mlkd_loss(x, x, t, t, 4.0, 1.0))(stacked)
    for i in range(3):
        want = losses.mlkd_loss(stacked[i], stacked[i], t, t, 4.0, 1.0)
        for name in want:
            np.testing.assert_allclose(got[name][i], want[name], rtol=1e-5)


def test_jit_and_grad_agree_with_eager():
    s, t, y = _data()
    for fn in (
        lambda s: losses.kd_loss(s, t, 2.0, True),
        lambda s: losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, True),
        lambda s: sum(losses.mlkd_loss(s, s + 1, t, t * 0.5, 2.0, 9.0, True).values()),
    ):
        v, g = jax.value_and_grad(fn)(s)
        vj, gj = jax.jit(jax.value_and_grad(fn))(s)
        np.testing.assert_allclose(vj, v, rtol=1e-5)
        np.testing.assert_allclose(gj, g, rtol=1e-4, atol=1e-7)


def _shard(x):
    return x.reshape(N_DEV, -1, *x.shape[1:])


def test_pmap_with_pmean_equals_the_global_batch():
    assert jax.device_count() >= N_DEV
    s, t, y = _data()

    @partial(jax.pmap, axis_name="batch")
    def per_device(s, t, y):
        kd = jax.lax.pmean(losses.kd_loss(s, t, 2.0, True), "batch")
        dkd = jax.lax.pmean(losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, True), "batch")
        return kd, dkd

    kd, dkd = per_device(_shard(s), _shard(t), _shard(y))
    np.testing.assert_allclose(kd, float(losses.kd_loss(s, t, 2.0, True)), rtol=1e-5)
    np.testing.assert_allclose(dkd, float(losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, True)), rtol=1e-5)


@pytest.mark.parametrize("mode", ["released", "paper"])
def test_mlkd_axis_name_under_pmap_gives_global_batch_statistics(mode):
    sw, tw, _ = _data(seed=1)
    ss, ts, _ = _data(seed=2)
    want = losses.mlkd_loss(sw, ss, tw, ts, 4.0, 2.0, True, mode=mode)
    local = jax.pmap(lambda *a: losses.mlkd_loss(*a, 4.0, 2.0, True, mode=mode))(*map(_shard, (sw, ss, tw, ts)))
    glob = jax.pmap(
        lambda *a: losses.mlkd_loss(*a, 4.0, 2.0, True, mode=mode, axis_name="batch"), axis_name="batch"
    )(*map(_shard, (sw, ss, tw, ts)))
    for name in want:
        np.testing.assert_allclose(glob[name], np.full(N_DEV, float(want[name])), rtol=1e-5, err_msg=name)
    # Without axis_name each device uses its local batch: the batch-level term differs.
    assert not np.allclose(local["bc_weak"], float(want["bc_weak"]), rtol=1e-3)


def test_mlkd_axis_name_under_shard_map():
    mesh = jax.make_mesh((N_DEV,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    sw, tw, _ = _data(seed=3)
    ss, ts, _ = _data(seed=4)
    want = losses.mlkd_loss(sw, ss, tw, ts, 2.0, 9.0, True)

    @partial(jax.shard_map, mesh=mesh, in_specs=P("batch"), out_specs=P())
    def sharded(sw, ss, tw, ts):
        return losses.mlkd_loss(sw, ss, tw, ts, 2.0, 9.0, True, axis_name="batch")

    got = jax.jit(sharded)(sw, ss, tw, ts)
    for name in want:
        np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-5, err_msg=name)


def test_kd_under_shard_map_with_psum_of_per_example_losses():
    mesh = jax.make_mesh((N_DEV,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    s, t, y = _data(seed=5)

    @partial(jax.shard_map, mesh=mesh, in_specs=P("batch"), out_specs=P())
    def sharded(s, t, y):
        per = losses.kd_loss(s, t, 2.0, True, reduction="none") + losses.dkd_loss(
            s, t, y, 1.0, 8.0, 4.0, True, reduction="none"
        )
        return jax.lax.psum(jnp.sum(per), "batch") / s.shape[0] / N_DEV

    want = float(losses.kd_loss(s, t, 2.0, True) + losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0, True))
    np.testing.assert_allclose(float(jax.jit(sharded)(s, t, y)), want, rtol=1e-5)


def test_ctkd_temperature_is_traceable_and_differentiable_under_jit():
    s, t, _ = _data()

    @jax.jit
    def step(p, epoch):
        def loss(p):
            return losses.kd_loss(s, t, losses.ctkd_temperature(p, losses.ctkd_lambda(epoch)), True)

        return jax.value_and_grad(loss)(p)

    v0, g0 = step(jnp.float32(1.0), 0.0)
    v5, g5 = step(jnp.float32(1.0), 5.0)
    assert float(g0) == 0.0  # lambda(0) = 0
    assert float(g5) != 0.0 and np.isfinite(float(v5))


@pytest.mark.parametrize("mode", ["released", "paper"])
def test_mlkd_gradients_under_shard_map_equal_the_global_batch_gradients(mode):
    mesh = jax.make_mesh((N_DEV,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    sw, tw, _ = _data(seed=6)
    ss, ts, _ = _data(seed=7)

    def total(terms):
        return sum(terms.values())

    @partial(jax.shard_map, mesh=mesh, in_specs=P("batch"), out_specs=P())
    def sharded(sw, ss, tw, ts):
        return total(losses.mlkd_loss(sw, ss, tw, ts, 4.0, 1.0, True, mode=mode, axis_name="batch"))

    g_sharded = jax.jit(jax.grad(sharded, argnums=(0, 1)))(sw, ss, tw, ts)
    g_global = jax.grad(lambda a, b: total(losses.mlkd_loss(a, b, tw, ts, 4.0, 1.0, True, mode=mode)), argnums=(0, 1))(sw, ss)
    for got, want in zip(g_sharded, g_global):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
