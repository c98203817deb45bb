"""The recipes of configs/*.py as Python functions, for code that builds a config without a command line.

    recipes.cifar_distillation("kd", "resnet32x4", "resnet8x4", logit_stand=True)   # configs/cifar100.py
    recipes.your_data("tfds:my_images", "ce", "resnet8", epochs=10)                 # configs/your_data.py

Each function is the one its config file defines (the recipe is written there), loaded from the
repository's configs/ on first use; it returns the config unlocked (``finalize`` locks it). The
schema (``base_config``, ``finalize``, ``run_name``, ...) lives in zkd.config_schema, the paper's
tables in zkd.paper and the config files' helpers in zkd.config_helpers; their names stay importable
from here.
"""

from __future__ import annotations

import importlib.util
import os

from zkd.config_helpers import base_config_for, parse_arg, shrink_for_local_run  # noqa: F401
from zkd.config_schema import base_config, data_seed, finalize, run_name, swept_axes  # noqa: F401
from zkd.paper import (ALIASES, CIFAR_PAIRS, CIFAR_TEACHERS, DKD_BETA, IMAGENET_BASELINE,  # noqa: F401
                       IMAGENET_LS_SETTINGS, IMAGENET_PAIRS, LS_DEFAULT, LS_SETTINGS, METHODS, PAPER_TOP1,
                       SMALL_LR_STUDENTS, VIT_LS_SETTINGS, VIT_PAPER_TOP1, VIT_STUDENTS, Row, canonical, paper_rows)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Each recipe function and the config file that defines it.
RECIPES = {
    "cifar_distillation": "cifar100.py", "cifar_teacher": "cifar100_teacher.py", "cifar100_vit": "cifar100_vit.py",
    "shrink_vit_for_local_run": "cifar100_vit.py", "imagenet_distillation": "imagenet.py",
    "fashion_mnist": "fashion_mnist.py", "your_data": "your_data.py",
}
_loaded: dict = {}


def config_file(filename: str):
    """The module of ``configs/<filename>``, loaded once (the way ``--config`` loads it)."""
    if filename not in _loaded:
        path = os.path.join(CONFIG_DIR, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: zkd.recipes reads the recipes in the repository's configs/ "
                                    "(install zkd from a checkout: pip install -e .)")
        spec = importlib.util.spec_from_file_location(f"zkd_configs.{filename[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[filename] = module
    return _loaded[filename]


def __getattr__(name: str):
    if name in RECIPES:
        return getattr(config_file(RECIPES[name]), name)
    raise AttributeError(f"module 'zkd.recipes' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(RECIPES))
