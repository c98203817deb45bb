"""What zkd's commands share and own no flags for: the one-line messages of command-line mistakes.

Flag-free, so that a program (or a test) can use it beside any command's module: ``zkd.main``
and ``zkd.quickstart`` each define absl flags, which cannot be defined twice in one process.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Optional


def unknown_field_message(config: Any, path: str) -> Optional[str]:
    """The one-line error for ``--config.<path>`` when ``path`` is not a field of ``config``.

    Returns None when every component of the dotted ``path`` exists. Otherwise names the first
    missing component, the closest valid name at that level (if any is close) and all valid
    names there, e.g. ``error: unknown config field 'loss.temperatur'; did you mean
    'loss.temperature'? (valid fields under config.loss: ce_weight, ...)``.
    """
    node, parent = config, ""
    for name in path.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return (f"error: config field '{parent[:-1]}' holds a value of type {type(node).__name__}, not a group "
                    f"of fields, so --config.{path} names nothing; set --config.{parent[:-1]}=VALUE instead")
        fields = sorted(str(k) for k in node.keys())
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{parent}{close[0]}'?" if close else ""
            where = f"config.{parent[:-1]}" if parent else "config"
            return (f"error: unknown config field '{parent}{name}'{hint} "
                    f"(valid fields under {where}: {', '.join(fields)})")
        node, parent = node[name], f"{parent}{name}."
    return None
