"""Distillation methods: one module per method, and the registry that names them.

    zkd.methods.get("kd")                  # the class behind config.method = "kd"
    zkd.methods.register("my_kd")(MyKD)    # a method of your own (docs/methods.md)

Built in: ``ce`` (no teacher), ``kd``, ``dkd``, ``mlkd``, ``ctkd``. Each is a ``Method``
subclass owning its hyper-parameters (``HParams``: the sweep axes), loss terms, views, learned
parameters and config checks; the step, the grid and the build read only that contract.
"""

from zkd.methods.base import LABELS, Inputs, Method, NoHParams, hparam, hparam_fields, label
from zkd.methods.registry import (UnknownMethodError, available, config_fields, get, register, sweep_fields,
                                  unregister)
from zkd.methods import ce, kd, dkd, mlkd, ctkd  # noqa: E402,F401  (register the built-ins, in this order)
from zkd.methods.ce import CE
from zkd.methods.ctkd import CTKD
from zkd.methods.dkd import DKD
from zkd.methods.kd import KD
from zkd.methods.mlkd import MLKD
from zkd.methods.resolve import axes, from_config, hparams_from_config

__all__ = ["Method", "Inputs", "NoHParams", "hparam", "hparam_fields", "label", "LABELS", "register", "unregister",
           "get", "available", "config_fields", "sweep_fields", "UnknownMethodError", "axes", "from_config",
           "hparams_from_config", "CE", "KD", "DKD", "MLKD", "CTKD"]
