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

Your own models (docs/models.md; the contract is ``zkd.models.user.CONTRACT``):

* register a factory from your own module, outside this package, into the zoo "user"::

      # my_models.py
      import zkd.models

      @zkd.models.register("my_net", zoo="user")
      def make_net(num_classes, dtype=None, width=64):
          return MyNet(num_classes=num_classes, width=width, dtype=dtype)

  then, once ``my_models`` is imported, ``config.student.name = "my_net"`` with
  ``config.student.zoo = "user"`` builds it (``config.student.options`` are its keywords);
* or name the factory in the config, no registration needed:
  ``config.student.factory = "my_models:make_net"`` (imported by ``zkd.models.user``).

``build_model(config.student, num_classes, dtype, role="student")`` builds whichever a config
names; ``build`` stays the paper zoo's entry point.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from zkd.models import user

# "vit": the transformer students at 224x224 (docs/paper.md §8); "user": your own registrations.
ZOOS = ("cifar", "imagenet", "vit", "user")
USER_ZOO = "user"

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


def _same_definition(a, b) -> bool:
    """``a`` and ``b`` are one function defined again (its module re-imported, a notebook cell
    re-run): same module and qualified name."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    qualname = key(a)[1]
    return qualname is not None and "<" not in qualname and key(a) == key(b)  # not lambdas, closures


def register(name: str, zoo: str = "cifar"):
    """Decorator registering ``factory(num_classes, **options) -> nn.Module`` under ``name``.

    Your own models go into the zoo "user", from your own module::

        @zkd.models.register("my_net", zoo="user")
        def make_net(num_classes, dtype=None, **options):
            return MyNet(num_classes=num_classes, dtype=dtype, **options)

    After that module is imported, ``config.student.name = "my_net"`` and
    ``config.student.zoo = "user"`` select it (``zkd.models.build_model``); the module must meet
    ``zkd.models.user.CONTRACT``. Registering into the paper's zoos works the same way.

    Registering another factory under a name the zoo holds is an error (``unregister`` first).
    Registering the same factory object again does nothing, and a redefinition of it (a
    module-level function or class with the same module and qualified name: its module
    reloaded, a notebook cell re-run) silently replaces it.
    """
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")

    def wrap(factory):
        old = _REGISTRY[zoo].get(name)
        if old is not None and old is not factory and not _same_definition(old, factory):
            raise ValueError(
                f"model {name!r} is already registered in zoo {zoo!r} (by {_qualified(old)}); "
                f"choose another name, or zkd.models.unregister({name!r}, zoo={zoo!r}) first")
        _REGISTRY[zoo][name] = factory
        return factory

    return wrap


def _qualified(f) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def unregister(name: str, zoo: str = USER_ZOO) -> None:
    """Remove ``name`` from ``zoo`` (a notebook redefining a model under another factory; tests).

    Raises ValueError when ``zoo`` does not hold ``name``.
    """
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")
    if name not in _REGISTRY[zoo]:
        raise ValueError(f"no model {name!r} is registered in zoo {zoo!r}")
    del _REGISTRY[zoo][name]


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


def _options(model_config) -> dict:
    options = model_config.get("options", None)
    if options is None:
        return {}
    return dict(options.to_dict() if hasattr(options, "to_dict") else options)


def build_model(model_config, num_classes: int, dtype: Any = jnp.float32, role: str = "student", *,
                input_shape: Optional[tuple] = None) -> nn.Module:
    """The module a config's ``config.student`` / ``config.teacher`` names, with ``num_classes``.

    ``model_config`` (a ConfigDict or a mapping) has ``name``, ``zoo``, and optionally
    ``options`` (the factory's keywords) and ``factory``:

    * ``factory`` non-empty (``"package.module:function"``): ``zkd.models.user.build_user_model``
      imports and calls it (``dtype=`` passed only when ``dtype`` is not float32);
    * zoo "user": the factory registered under ``name``, called the same way;
    * otherwise ``build(name, num_classes, zoo=zoo, dtype=dtype, **options)``, the paper's zoo.

    ``role`` ("student" / "teacher") names the config field in errors. With ``input_shape``
    (H, W, C), a user's model (factory or zoo "user") is also checked against
    ``zkd.models.user.CONTRACT`` (``zkd.models.user.check_module``, shapes only).

    Raises:
      ModelFactoryError / ModelContractError (zkd.models.user) for a user's model; ValueError
      naming the valid names for an unknown zoo model.
    """
    factory = model_config.get("factory", "") or ""
    name, zoo = model_config.get("name", ""), model_config.get("zoo", "cifar")
    options = _options(model_config)
    if factory:
        where = f"config.{role}.factory={factory!r}"
        module = user.build_user_model(factory, num_classes, options, dtype, where)
    elif zoo == USER_ZOO:
        where = f"config.{role}.name={name!r} (zoo 'user')"
        if name not in _REGISTRY[USER_ZOO]:
            registered = ", ".join(sorted(_REGISTRY[USER_ZOO])) or "none"
            close = difflib.get_close_matches(name, _REGISTRY[USER_ZOO], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise user.ModelFactoryError(
                f"{where}: no model {name!r} is registered in zoo 'user'.{hint} Import the module "
                f"that calls @zkd.models.register({name!r}, zoo='user') before building, or name "
                f"the factory in config.{role}.factory='package.module:function' (registered: "
                f"{registered})")
        module = user.build_user_model(_REGISTRY[USER_ZOO][name], num_classes, options, dtype, where)
    else:
        return build(name, num_classes, zoo=zoo, dtype=dtype, **options)
    if input_shape is not None:
        user.check_module(module, input_shape, num_classes, where=where, role=role)
    return module


def count_params(params) -> int:
    """Number of scalars in a parameter tree (BatchNorm scale/bias included, running stats not)."""
    import jax
    import numpy as np

    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
