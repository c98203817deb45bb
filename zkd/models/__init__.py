"""The Flax model zoo of the paper, behind one ``build(name, num_classes, zoo=...)``.

Every model is a Flax Linen module taking NHWC images and returning logits::

    model = zkd.models.build("resnet8x4", num_classes=100)            # CIFAR zoo
    variables = model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, images, train=False)               # [B, num_classes]

Naming convention (what makes PyTorch conversion generic, see ``zkd.convert``): the Flax module
tree mirrors the PyTorch module tree of the reference implementation. Every submodule is named
with its PyTorch attribute name, and children of an ``nn.Sequential`` with their index as a
string ("0", "1", ...). A Flax parameter path ``("layer1", "0", "conv1", "kernel")`` therefore
corresponds to the PyTorch key ``"layer1.0.conv1.weight"``.

Common options every architecture accepts:
    dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); parameters and BatchNorm
        statistics are always float32.
BatchNorm follows PyTorch: momentum 0.1 there is ``momentum=0.9`` in Flax, epsilon 1e-5.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict

import flax.linen as nn

ZOOS = ("cifar", "imagenet", "vit")  # "vit": the transformer students at 224x224 (docs/paper.md §8)

# zoo -> name -> factory(num_classes, **options) -> nn.Module
_REGISTRY: Dict[str, Dict[str, Callable[..., nn.Module]]] = {zoo: {} for zoo in ZOOS}

# Modules whose import registers architectures. Each calls ``register`` at import time.
_ARCHITECTURE_MODULES = (
    "zkd.models.cifar_resnet",
    "zkd.models.wrn",
    "zkd.models.vgg",
    "zkd.models.resnet",
    "zkd.models.mobilenet",
    "zkd.models.shufflenet",
    "zkd.models.imagenet_resnet",
    "zkd.models.imagenet_mobilenet",
    "zkd.models.vit",
)
_loaded = False


def register(name: str, zoo: str = "cifar"):
    """Decorator registering ``factory(num_classes, **options) -> nn.Module`` under ``name``."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")

    def wrap(factory):
        if name in _REGISTRY[zoo]:
            raise ValueError(f"model {name!r} is already registered in zoo {zoo!r}")
        _REGISTRY[zoo][name] = factory
        return factory

    return wrap


def _load_all():
    global _loaded
    if _loaded:
        return
    for module in _ARCHITECTURE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a family not written yet
            if err.name != module:
                raise
    _loaded = True


def available(zoo: str = "cifar") -> list[str]:
    """Sorted names of the architectures of ``zoo`` (one of ``ZOOS``)."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")
    _load_all()
    return sorted(_REGISTRY[zoo])


def build(name: str, num_classes: int, zoo: str = "cifar", **options) -> nn.Module:
    """The Linen module ``name`` of ``zoo`` with ``num_classes`` outputs.

    ``apply(variables, images, train=...)`` maps NHWC images [B, H, W, C] to logits [B, num_classes].
    Raises ValueError naming the valid architectures when ``name`` is unknown.
    """
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _load_all()
    if name not in _REGISTRY[zoo]:
        close = difflib.get_close_matches(name, _REGISTRY[zoo], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown {zoo} model {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY[zoo]))}"
        )
    return _REGISTRY[zoo][name](num_classes=num_classes, **options)


def count_params(params) -> int:
    """Number of scalars in a parameter tree (BatchNorm scale/bias included, running stats not)."""
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
