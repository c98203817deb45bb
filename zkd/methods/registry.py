"""The registry of distillation methods: names -> ``Method`` classes, built-in or a user's.

``register(name)`` works the same from a user's module as from zkd's own; ``get`` also takes a
``"package.module:Class"`` reference, imported on demand, the way ``config.student.factory``
names a model. The config schema (zkd.recipes.base_config) reads ``config_fields`` so every
registered method's fields are config fields and sweep axes.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib

from zkd.errors import ConfigError
from zkd.methods.base import Method, hparam_fields

_REGISTRY: dict[str, type] = {}


class UnknownMethodError(ConfigError):
    """``config.method`` names no registered method and no importable ``module:Class``."""


def _same_definition(a, b) -> bool:
    """One class defined again (its module re-imported, a notebook cell re-run)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__) and "<" not in a.__qualname__


def register(name: str):
    """Class decorator registering a ``zkd.methods.Method`` subclass as ``config.method = name``.

    The class is made a frozen dataclass (if it is not one already): its annotated class
    attributes are its static options.
    Its ``HParams`` fields and static options become ``config.loss`` fields (and its numeric
    fields ``config.sweep`` axes) in configs built after the registration. A field another
    method already declares must keep that field's default (it is one config field). Registering
    another class under a taken name is an error (``unregister`` first); a redefinition of the
    same class (module reloaded, notebook cell re-run) replaces it.
    """
    if not isinstance(name, str) or not name or any(c in name for c in " /,="):
        raise ValueError(f"a method name is a non-empty string without spaces, '/', ',' or '=', got {name!r}")

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"zkd.methods.register({name!r}) decorates a subclass of zkd.methods.Method, "
                            f"got {cls!r}")
        if "__dataclass_params__" not in cls.__dict__:  # its static options become dataclass fields
            cls = dataclasses.dataclass(frozen=True)(cls)
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and not _same_definition(old, cls):
            raise ValueError(f"method {name!r} is already registered (by {old.__module__}.{old.__qualname__}); "
                             f"choose another name, or zkd.methods.unregister({name!r}) first")
        _check_shared_defaults(name, cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove method ``name`` (tests; a notebook replacing a method by another class)."""
    if name not in _REGISTRY:
        raise ValueError(f"no method {name!r} is registered")
    del _REGISTRY[name]


def available() -> list:
    """Names of the registered methods, in registration order (built-ins first)."""
    return list(_REGISTRY)


def get(name: str) -> type:
    """The ``Method`` class ``name`` names: a registered name, or ``"package.module:Class"``
    (imported, and registered under that reference if its class is not registered yet)."""
    if isinstance(name, type) and issubclass(name, Method):
        return name
    if not isinstance(name, str):
        raise UnknownMethodError(f"config.method must be a method name or 'package.module:Class', got "
                                 f"{type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownMethodError(
            f"config.method={name!r}; valid: {', '.join(_REGISTRY)}{hint}; a method of your own: "
            "'package.module:Class', or import the module that registers it before building the config")
    cls = _import(name)
    if any(registered is cls for registered in _REGISTRY.values()):
        return cls
    return register(name)(cls)


def _import(reference: str) -> type:
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise UnknownMethodError(f"config.method={reference!r} is not of the form 'package.module:Class'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownMethodError(
            f"config.method={reference!r}: cannot import {module_name!r} ({err}); put the directory holding it on "
            "PYTHONPATH or install its package") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownMethodError(f"config.method={reference!r}: {module_name!r} has no {part!r}{hint}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise UnknownMethodError(f"config.method={reference!r} names {obj!r}, not a subclass of zkd.methods.Method")
    return obj


def _declared(cls) -> dict:
    """The config fields a method class declares: {name: default} of its HParams and options."""
    fields = {f.name: f.default for f in hparam_fields(cls)}
    fields.update({f.name: f.default for f in dataclasses.fields(cls)})
    return fields


def _check_shared_defaults(name: str, cls) -> None:
    for other_name, other in _REGISTRY.items():
        if other_name == name:
            continue
        theirs = _declared(other)
        for field, default in _declared(cls).items():
            if field in theirs and theirs[field] != default:
                raise ValueError(
                    f"method {name!r} declares {field} = {default!r}, but method {other_name!r} declares the same "
                    f"config field config.loss.{field} = {theirs[field]!r}: a shared field has one default; give "
                    "yours the same default or another name")


def config_fields() -> dict:
    """``{field: default}`` of every registered method's HParams and options, in registration
    order: the ``config.loss`` schema."""
    out: dict = {}
    for cls in _REGISTRY.values():
        for field, default in _declared(cls).items():
            out.setdefault(field, default)
    return out


def sweep_fields() -> list:
    """Names of every registered method's numeric (sweepable) fields, in registration order."""
    out: list = []
    for cls in _REGISTRY.values():
        out += [f.name for f in hparam_fields(cls) if f.name not in out]
    return out
