"""zkd.xla_options: which options zkd's CPU compilations get, and that they take effect."""

import re

import jax
import jax.numpy as jnp
import pytest

from zkd import parallel, xla_options


def test_presets_and_the_users_own_flag(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    assert xla_options.compiler_options() == xla_options.PRESETS["zkd"]
    monkeypatch.setenv(xla_options.ENV, "xla")
    assert xla_options.compiler_options() is None
    monkeypatch.setenv(xla_options.ENV, "dots")
    assert xla_options.compiler_options() == xla_options.PRESETS["dots"]
    monkeypatch.setenv(xla_options.ENV, "fastest")
    with pytest.raises(xla_options.XlaOptionsError, match="ZKD_XLA_CPU_OPTIONS='fastest' is not one of"):
        xla_options.compiler_options()
    monkeypatch.setenv(xla_options.ENV, "zkd")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # the user's choice wins
    assert xla_options.compiler_options() is None


def test_no_options_for_accelerators():
    class Device:
        platform = "gpu"
    assert xla_options.compiler_options([Device()]) is None


def _ynn_convolutions(hlo: str) -> int:
    """Convolutions inside YNNPACK fusions of a compiled CPU program's HLO text."""
    fused = set(re.findall(r"calls=%([\w.\-]+), .*__ynn_fusion", hlo))
    count, current = 0, None
    for line in hlo.splitlines():
        header = re.match(r"^%([\w.\-]+) ", line)
        if header:
            current = header.group(1)
        if current in fused and " convolution(" in line:
            count += 1
    return count


def test_the_steps_convolutions_are_not_given_to_ynnpack(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")

    def step(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.grad(lambda w: jnp.sum(jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2))(w), y

    mesh = parallel.make_mesh(1)
    args = (jnp.ones((3, 3, 32, 64)), jnp.ones((8, 32, 32, 32)))  # CIFAR-sized: YNNPACK would take these (compiled only)
    ours = parallel.jit_eval_step(step, mesh).lower(*args).compile().as_text()
    assert " convolution(" in ours
    assert _ynn_convolutions(ours) == 0
