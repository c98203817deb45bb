"""Entry point: ``python -m zkd.main --config=configs/x.py:args --workdir=DIR`` (or ``zkd ...``).

Fields are overridden with ``--config.<field>=<value>`` (e.g. ``--config.num_epochs=10``);
the config is locked, so a misspelled field fails with the closest valid name. Without
``--workdir`` the run goes to ``workdirs/<dataset>/<method>[_ls]/<teacher>-<student>/seed<N>``,
so runs of different settings never share a folder.
"""

from __future__ import annotations

import os

# tf.data only: keep TensorFlow off the accelerators and quiet, before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally ':args'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<run name>).")
_ALLOW = flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose config.json differs.")
_COORD = flags.DEFINE_string("coordinator_address", "", "Multi-host: coordinator host:port.")
_NPROC = flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", -1, "Multi-host: this process's index.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from zkd import parallel, recipes, train

    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", recipes.run_name(config))
    print(f"zkd: run {recipes.run_name(config)} in {workdir}", flush=True)
    summary = train.train_and_evaluate(config, workdir, allow_config_change=_ALLOW.value)
    print(
        f"zkd: best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
        f"last {summary['last_top1']:.2f}%, {summary['images_per_second']:.0f} img/s; {workdir}/summary.json",
        flush=True,
    )


def run():
    """Console entry point ``zkd``."""
    flags.mark_flag_as_required("config")
    app.run(main)


if __name__ == "__main__":
    run()
