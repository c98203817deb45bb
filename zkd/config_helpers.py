"""What the config files (configs/*.py) share beyond the schema: the parser of their arguments
(``--config configs/x.py:a=1,b=2``), the config of a method, student and teacher, and ``runlocal``."""

from __future__ import annotations

import difflib
from typing import Optional

import ml_collections

from zkd import methods, paper
from zkd.config_schema import base_config
from zkd.errors import ConfigError


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
    """Parse ``"a=1,b=x"`` (the part after ':' in ``--config file.py:...``) over ``defaults``.

    Values are converted to the type of their default (bool accepts 1/0/true/false). Unknown
    keys fail, naming the valid ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ConfigError(f"config argument {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config argument {key!r}{hint}; valid: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("1", "0", "true", "false"):
                raise ConfigError(f"config argument {key} must be 1/0/true/false, got {value!r}")
            out[key] = value.lower() in ("1", "true")
        elif isinstance(default, (int, float)):
            kind = int if isinstance(default, int) else float
            try:
                out[key] = kind(value)
            except ValueError:
                raise ConfigError(f"config argument {key} must be {'an integer' if kind is int else 'a number'}, "
                                  f"got {value!r}") from None
        else:
            out[key] = value
    return ml_collections.ConfigDict(out)


def base_config_for(method: str, student: str, teacher: str = "", logit_stand: bool = False, seed: int = 0,
                    teacher_checkpoint: str = "") -> ml_collections.ConfigDict:
    """The schema's config (``zkd.config_schema.base_config``) training ``student`` with ``method``.

    ``method``: any name ``zkd.methods.get`` resolves, a registered one or "package.module:Class"
    (imported here, before the schema is built, so its fields are config fields). Model names may
    be the paper's aliases. The teacher is set only for a method that has one, and LS only for a
    method whose loss it changes (``Method.needs_teacher``, ``Method.uses_logit_stand``).
    """
    cls = methods.get(method)
    c = base_config()
    c.method, c.seed = method, seed
    c.logit_stand = bool(logit_stand) and cls.uses_logit_stand
    c.student.name = paper.canonical(student)
    if cls.needs_teacher:
        c.teacher.name, c.teacher.checkpoint = paper.canonical(teacher), teacher_checkpoint
    return c


def shrink_for_local_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``runlocal``: a few tiny steps to check a config end to end on a laptop (not a result)."""
    c.num_epochs = 2
    c.batch_size = 16
    c.eval_batch_size = 64
    c.steps_per_epoch = 3
    c.max_eval_batches = 2
    c.log_every_steps = 1
    c.checkpoint_every_epochs = 1
    c.optimizer.lr_milestones = (1,)
    return c
