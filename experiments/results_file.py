"""Helpers for the generated results files of experiments/ (``results/*.md``), shared by the studies.

A study's results file is regenerated from its runs whenever it is rerun, but its analysis is
written by hand: ``kept_section`` returns that part of the existing file, so a rewrite keeps it.
``link`` writes a figure's path the way the results file must link it (relative when it can be).
Paths may be local or ``gs://`` (zkd.paths).
"""

from __future__ import annotations

import os
from typing import Optional

from zkd import paths


def kept_section(results_path: str, heading: str = "## Analysis") -> Optional[str]:
    """The part of the existing file ``results_path`` from the first line that starts with
    ``heading`` to its end (that line included); None when the file or the section is missing."""
    if not paths.exists(results_path):
        return None
    text = "\n" + paths.read_text(results_path)
    at = text.find("\n" + heading)
    return text[at + 1:] if at >= 0 else None


def link(target: str, results: str) -> str:
    """``target`` as the results file ``results`` links it: relative to its folder, or whole where
    there is no relative path (one local and one in a bucket, or two buckets)."""
    try:
        return paths.relpath(target, os.path.dirname(paths.absolute(results)))
    except ValueError:
        return paths.absolute(target)
