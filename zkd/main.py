"""Entry point: ``python -m zkd.main --config=configs/x.py:args --workdir=DIR`` (or ``zkd ...``).

Fields are overridden with ``--config.<field>=<value>`` (e.g. ``--config.num_epochs=10``);
the config is locked, so a misspelled field (``--config.num_epochz``, ``--config.loss.temperatur``)
stops the command with one line on stderr naming the closest valid field and the valid fields
at that level, and exit status 2 (no traceback). Without
``--workdir`` the run goes to ``workdirs/<dataset>/<method>[_ls]/<teacher>-<student>/seed<N>``,
so runs of different settings never share a folder. A config whose ``sweep`` sets any axis
(``--config.sweep.temperature="(2, 3)"``) trains the whole grid in one run (zkd.sweep).
zkd's named errors (bad config values, data, teacher, checkpoint, cache; a non-finite step) end
the command with their one-line message on stderr and exit status 1; a bad ``configs/x.py:ARGS``
argument is one line and exit status 2; Ctrl-C outside the training loop, or a second one
inside it, is one line and exit status 130.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Optional

# tf.data only: keep TensorFlow off the accelerators and quiet, before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from zkd import cli, recipes  # noqa: E402  (flag-free: command-line messages, config helpers)

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT
_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally ':args'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<run name>).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose config.json differs.")
_COORD = flags.DEFINE_string("coordinator_address", "", "Multi-host: coordinator host:port.")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")


def main(argv):
    from zkd.errors import ZkdError

    try:
        _train(argv)
    except ZkdError as err:  # the message already says what is wrong and how to fix it
        if os.environ.get("ZKD_TRACEBACK"):
            raise
        print(f"error ({type(err).__name__}): {err.message()}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training, or a second one during it: no traceback
        if os.environ.get("ZKD_TRACEBACK"):
            raise
        print("zkd: interrupted (Ctrl-C) without saving; a run that had not taken a step left its workdir as it "
              "was, otherwise the same command resumes from its latest checkpoint", file=sys.stderr)
        sys.exit(INTERRUPTED)


def _train(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from zkd import parallel, train

    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", recipes.run_name(config))
    print(f"zkd: run {recipes.run_name(config)} in {workdir}", flush=True)
    if recipes.swept_axes(config):  # a hyper-parameter grid: every point in one run (zkd.sweep)
        from zkd import sweep

        result = sweep.train_sweep(config, workdir, allow_config_change=_ALLOW.value)
        print(f"zkd: {result['students']} students ranked by best top-1 ({workdir}/sweep.md):\n{result['table']}",
              flush=True)
        return
    summary = train.train_and_evaluate(config, workdir, allow_config_change=_ALLOW.value)
    print(
        f"zkd: best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
        f"last {summary['last_top1']:.2f}%, {summary['images_per_second']:.0f} img/s; {workdir}/summary.json",
        flush=True,
    )


# ----------------------------------------------------------------------------- command-line errors


def _config_argument(argv: Sequence[str]) -> Optional[str]:
    """The value of ``--config=FILE[:ARGS]`` (or ``--config FILE``) in ``argv``, if given."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?config(?:=(.*))?", arg)
        if match:
            if match.group(1) is not None:
                return match.group(1)
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _override_paths(argv: Sequence[str]) -> list[str]:
    """The dotted field paths of the ``--config.<path>[=VALUE]`` overrides in ``argv``."""
    return [m.group(1) for m in (re.match(r"--?config\.([^=\s]+)", a) for a in argv) if m]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that an unknown config field is one line on stderr and exit 2.

    ml_collections raises a bare AttributeError / KeyError (a long traceback through absl) when
    an override names a field the locked config lacks; the config file is loaded again here to
    name the field, the closest valid one and the valid ones at that level.
    """
    _import_method_references(argv[1:])
    _check_config_file_arguments(argv[1:])
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:
        config_arg = _config_argument(argv[1:])
        if config_arg is None:
            raise
        try:
            config = flags.FLAGS["config"].parser.parse(config_arg)
        except Exception:  # the config file itself is broken: its own error says how
            raise err from None
        for path in _override_paths(argv[1:]):
            message = cli.unknown_field_message(config, path)
            if message:
                print(message, file=sys.stderr)
                sys.exit(2)
        raise


def _check_config_file_arguments(argv: Sequence[str]) -> None:
    """Build the config once before absl does, so that a bad ``configs/x.py:ARGS`` argument (an
    unknown key or method, a value of the wrong type) is one line and exit 2, not absl's
    "FATAL Flags parsing error" with a traceback."""
    config_arg = _config_argument(argv)
    if not config_arg:
        return
    from zkd.errors import ZkdError

    try:
        flags.FLAGS["config"].parser.parse(config_arg)
    except ZkdError as err:
        # ml_collections re-raises the config file's error with its traceback as the message
        original = err.__context__ if isinstance(err.__context__, ZkdError) else err
        print(f"error ({type(original).__name__}): {original.message()}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # anything else is the config file's own failure: absl reports it with its traceback
        pass


def _import_method_references(argv: Sequence[str]) -> None:
    """Import the method a ``--config.method=package.module:Class`` (or a config file's
    ``method=package.module:Class`` argument) names before the config is built, so its fields
    are config fields (``--config.loss.<field>``, ``--config.sweep.<field>``) like a built-in's."""
    references = [m.group(1) for m in (re.fullmatch(r"--?config\.method=(.+)", a) for a in argv) if m]
    config_arg = _config_argument(argv) or ""
    references += re.findall(r"(?:^|[:,])method=([\w.]+:[\w.]+)", config_arg.partition(":")[2])
    if not references:
        return
    from zkd import methods
    from zkd.errors import ZkdError

    for reference in references:
        if ":" in reference:
            try:
                methods.get(reference)
            except ZkdError as err:
                print(f"error ({type(err).__name__}): {err.message()}", file=sys.stderr)
                sys.exit(2)


def run():
    """Console entry point ``zkd``."""
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
