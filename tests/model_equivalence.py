"""Shared check: a PyTorch reference model and its Flax port give the same eval-mode logits.

Used by every model-zoo test::

    from model_equivalence import assert_torch_flax_equal
    assert_torch_flax_equal(TorchResNet8(num_classes=10), "resnet8", 10, "cifar",
                            [(2, 32, 32, 3), (1, 28, 28, 1)])

The PyTorch model gets non-trivial BatchNorm statistics and affine parameters (so a converter
that drops or swaps running_mean / running_var / weight / bias fails), its state dict goes
through ``zkd.convert.state_dict_to_variables``, and both models run in eval mode on the same
random images (NHWC for Flax, NCHW for torch).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

import zkd.convert
import zkd.models


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """PyTorch on one thread for a module's tests (restored after): its default, a thread per
    core, spin-waits when the cores are busy (pytest -n 2 on two cores, XLA's own threads), and a
    batch-1 forward of resnet110 then takes ~2.5 s instead of ~0.02 s. Same references, same
    tolerances. Import it into a test module to use it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_batchnorm(torch_model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm layer random running stats and affine parameters, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                if module.affine:
                    module.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=gen))
                    module.bias.copy_(0.2 * torch.randn(n, generator=gen))


def torch_to_flax(torch_model: torch.nn.Module, name: str, num_classes: int, zoo: str,
                  input_shape: tuple[int, ...]):
    """(flax module, converted variables) for ``torch_model``'s current state dict."""
    model = zkd.models.build(name, num_classes=num_classes, zoo=zoo)
    template = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros(input_shape, np.float32), train=False)
    )
    variables = zkd.convert.state_dict_to_variables(torch_model.state_dict(), template)
    return model, variables


def param_count(name: str, num_classes: int, zoo: str, shape=(1, 32, 32, 3)) -> int:
    """Parameters of ``zkd.models.build(name, num_classes, zoo)`` on NHWC ``shape``, without
    initialising anything (``jax.eval_shape``)."""
    model = zkd.models.build(name, num_classes=num_classes, zoo=zoo)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32), train=False))
    return zkd.models.count_params(shapes["params"])


def assert_torch_flax_equal(torch_model: torch.nn.Module, name: str, num_classes: int, zoo: str,
                            input_shapes, rtol: float = 1e-4, seed: int = 0, jit: bool = False) -> float:
    """Assert torch and Flax logits agree on every NHWC shape in ``input_shapes``.

    Args:
      torch_model: the PyTorch reference, freshly initialized (its BN layers are randomized here).
      name, num_classes, zoo: the Flax architecture, as for ``zkd.models.build``.
      input_shapes: NHWC shapes ``(B, H, W, C)``; torch receives the same images as NCHW.
      rtol: bound on max|flax - torch| / max|torch| per shape.
      jit: apply the Flax model as one compiled program per shape (``jax.jit``) instead of op by
        op. The same computation either way; what is cheaper differs: op by op, the compiled
        primitives are shared by every model with the same layer shapes (the CIFAR ResNets
        compile their layers once, ImageNet ResNet34 reuses ResNet18's); a network whose layers
        nothing else shares (MobileNets, ShuffleNets, CIFAR ResNet18 / ResNet50) compiles
        several times faster whole.

    Also asserts both models have the same number of parameters and that the logits have shape
    ``[B, num_classes]``. Returns the largest relative error seen.
    """
    torch.manual_seed(seed)
    randomize_batchnorm(torch_model, seed)
    torch_model.eval()
    model, variables = torch_to_flax(torch_model, name, num_classes, zoo, tuple(input_shapes[0]))

    n_torch = sum(p.numel() for p in torch_model.parameters())
    n_flax = zkd.models.count_params(variables["params"])
    assert n_flax == n_torch, f"{name}: Flax has {n_flax} parameters, torch {n_torch}"

    apply = functools.partial(model.apply, train=False)
    if jit:
        apply = jax.jit(apply)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for shape in input_shapes:
        images = rng.standard_normal(shape).astype(np.float32)
        flax_logits = np.asarray(apply(variables, images))
        with torch.no_grad():
            torch_logits = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
        assert flax_logits.shape == (shape[0], num_classes), (name, shape, flax_logits.shape)
        assert torch_logits.shape == flax_logits.shape, (name, shape, torch_logits.shape)
        assert np.all(np.isfinite(torch_logits)), f"{name}: torch logits not finite on {shape}"
        scale = float(np.max(np.abs(torch_logits)))
        assert scale > 0, f"{name}: torch logits are all zero on {shape}"
        err = float(np.max(np.abs(flax_logits - torch_logits))) / scale
        assert err <= rtol, (
            f"{name} on input {shape}: max|flax - torch| / max|torch| = {err:.3g} > {rtol}"
        )
        worst = max(worst, err)
    return worst
