"""A config's method: its instance, its hyper-parameters and its sweep axes."""

from __future__ import annotations

import dataclasses

from zkd.errors import ConfigError
from zkd.methods.base import Method, hparam_fields
from zkd.methods.registry import get


def from_config(config) -> Method:
    """The method ``config.method`` names, with its static options from ``config.loss``, checked
    (``Method.check``). Raises ConfigError (``UnknownMethodError`` for a name nothing registers)."""
    cls = get(config.method)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in config.loss]
    if missing:
        raise ConfigError(_missing_message(config, missing))
    method = cls.from_config(config)
    method.check(config)
    return method


def hparams_from_config(config, method=None):
    """``method.HParams`` with the values of ``config.loss`` as Python floats."""
    method = get(config.method) if method is None else method
    values = {}
    for f in hparam_fields(method):
        if f.name not in config.loss:
            raise ConfigError(_missing_message(config, [f.name]))
        value = config.loss[f.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config.loss.{f.name} must be a number, got {value!r}")
        values[f.name] = float(value)
    return method.HParams(**values)


def axes(method) -> tuple:
    """The sweep axes of ``method`` (a class or a name): its numeric fields, then
    ``logit_stand`` when LS changes its loss, then ``seed``."""
    method = get(method) if isinstance(method, str) else method
    return (*(f.name for f in hparam_fields(method)), *(("logit_stand",) if method.uses_logit_stand else ()), "seed")


def _missing_message(config, missing) -> str:
    return (f"config.loss has no field {', '.join(missing)} of method {config.method!r}: the config was built before "
            "the method was registered. Import the module that registers it before building the config (a config "
            "file of your own that imports it; or name it as 'package.module:Class' in the config file's "
            "method= argument, or in --config.method, which zkd.main imports first)")
