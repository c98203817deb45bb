"""zkd's named errors: one base, so callers (and the ``zkd`` command) catch them all at once.

Every error zkd raises on purpose derives from ``ZkdError`` and carries a message that says what
is wrong and how to fix it; the command prints that message as one line and exits with status 1
(``ZKD_TRACEBACK=1`` shows the traceback too). Each also derives from the built-in exception a
Python caller would expect (``ValueError`` for a bad value, ``OSError`` for a failed write, ...),
so ``except ValueError`` keeps working.

Where each lives: ``ConfigError`` and ``NonFiniteError`` here (the engine raises them);
``zkd.data.DataError`` (and its ``DataCorruptError``, ``DatasetMismatchError``),
``zkd.data.DataNotFoundError``, ``zkd.data.UnknownDatasetError``;
``zkd.checkpoint.CheckpointWriteError``; ``zkd.convert.CheckpointMismatchError``,
``zkd.convert.CheckpointFileError``; ``zkd.teacher.TeacherError``;
``zkd.logit_cache.StaleCacheError``, ``CacheNotFoundError``, ``CacheExistsError``.
"""

from __future__ import annotations


class ZkdError(Exception):
    """Base of every named zkd error: the message names the problem and the fix.

    ``exit_code``: the ``zkd`` command's exit status for it (1; 75 for a preempted run).
    """

    exit_code = 1

    def message(self) -> str:
        """The one-line message (a ``KeyError`` subclass would otherwise print its repr)."""
        return str(self.args[0]) if self.args else type(self).__name__


class ConfigError(ZkdError, ValueError):
    """A config value that cannot work, named with the valid choices."""


class NonFiniteError(ZkdError, FloatingPointError):
    """A train step produced NaN/Inf; the run stops before writing anything from it."""
