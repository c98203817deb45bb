"""XLA compiler options zkd passes to the programs it compiles (train, eval and teacher-logit steps).

Owns the CPU presets and the choice between them; nothing global changes (the options go to
each program through ``jax.jit(..., compiler_options=...)``).

On CPU, jaxlib 0.10's XLA hands every convolution, and every dot, to the YNNPACK library by
default. For the convolutions of the CIFAR networks that is the slow choice, above all in their
backward passes: the weight gradient of a 3x3 convolution becomes a YNNPACK convolution with a
32x32 window. XLA's own convolutions (Eigen) are faster in both directions (figures and
commands: docs/performance.md), so on CPU zkd compiles its steps with YNNPACK kept for dots and
elementwise fusions but not for standalone convolutions (YNNPACK still absorbs a convolution of
more than 16 channels into an elementwise fusion that consumes it; no option of jaxlib 0.10
prevents that). The numbers are the same up to float32 roundoff (a different summation order
inside the convolutions); the PyTorch parity tests pass either way.

Only programs on CPU devices get options; GPU and TPU compilations are left alone. The choice can
be overridden:

- ``ZKD_XLA_CPU_OPTIONS=xla`` compiles with XLA's defaults, e.g. to compare;
- ``ZKD_XLA_CPU_OPTIONS=dots`` keeps YNNPACK for dots only (elementwise fusions by XLA): better
  for some pairs (wide networks such as resnet32x4 -> resnet8x4), worse for others (thin ones
  such as resnet56 -> resnet20) than the default, which keeps YNNPACK's elementwise fusions too;
  no simple rule predicts which (docs/performance.md);
- a ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is the user's choice and wins: zkd
  then passes nothing.
"""

from __future__ import annotations

import os
from typing import Optional

import jax

ENV = "ZKD_XLA_CPU_OPTIONS"
YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"

# Values: "zkd" (default), "dots", or "xla" (XLA's own defaults). Enum names as XLA's DebugOptions spell them.
PRESETS = {
    "zkd": {YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    "xla": {},
    "dots": {YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
}


class XlaOptionsError(ValueError):
    """``ZKD_XLA_CPU_OPTIONS`` names no preset."""


def preset() -> str:
    """The preset in force: ``$ZKD_XLA_CPU_OPTIONS`` or "zkd"."""
    name = os.environ.get(ENV, "zkd").strip().lower() or "zkd"
    if name not in PRESETS:
        raise XlaOptionsError(f"{ENV}={os.environ[ENV]!r} is not one of {sorted(PRESETS)}; unset it for zkd's "
                              f"CPU options or set it to 'xla' for XLA's defaults")
    return name


def compiler_options(devices=None) -> Optional[dict]:
    """Options for ``jax.jit(..., compiler_options=...)`` of a program that runs on ``devices``
    (default: JAX's default devices); None when there is nothing to pass (accelerators, the "xla"
    preset, or the user's own ``XLA_FLAGS`` setting)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices or any(d.platform != "cpu" for d in devices):
        return None
    if YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(PRESETS[preset()]) or None
