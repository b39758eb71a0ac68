"""Command-line entry point of the sparsejax experiments.

``python launch.py`` with no flags runs the default experiment
(``experiments/default.py``) on the offline 8x8 digits dataset: dense vs magnitude
pruning vs ASP 2:4 vs SWAT-U vs meProp, printing a results table and writing
``results.{md,csv,png}`` to ``runs/default``.

Examples::

  python launch.py                                        # the default comparison
  python launch.py --config=experiments/swat.py:smoke --config.method.sparsity=0.9 \\
      --workdir=runs/x                                    # one run
  python launch.py --config=experiments/swat.py --sweep   # all members of sweep()
  python launch.py --config=experiments/swat.py --sweep_list   # job-array commands
  python launch.py --config=experiments/swat.py --sweep_index=2

A workdir holding the same config resumes from its checkpoints (or reports the
finished run); one holding another config is refused unless ``--overwrite``
(delete it) or ``--resume`` (continue with the new config).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments",
                               "default.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Config file `path.py[:arg]` defining get_config(arg='').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: runs/<config name>[_<arg>]).")
_SWEEP = flags.DEFINE_bool(
    "sweep", None, "Run every member of the config's sweep() (finished ones are skipped) and "
    "aggregate the results. Default: on for the default config, off otherwise.")
_SWEEP_INDEX = flags.DEFINE_integer("sweep_index", None, "Run only this sweep member.")
_SWEEP_LIST = flags.DEFINE_bool("sweep_list", False,
                                "Print one command line per sweep member and exit.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Delete a previous run with another config in the workdir.")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache_dir", os.path.join("runs", ".jax_cache"),
    "Persistent XLA compilation cache (reused by sweep members and later runs); '' disables.")
_RESUME = flags.DEFINE_bool("resume", False,
                            "Continue a previous run in the workdir even if its config differs.")


def _config_arg() -> str:
    """The ``--config`` value as given (``path[:arg]``), or the default path."""
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return _DEFAULT_CONFIG


def _default_workdir(config_arg: str) -> str:
    path, _, arg = config_arg.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{arg}" if arg else stem)


def _quiet_orbax() -> None:
    """Keeps orbax's per-save INFO lines out of the progress log (warnings still show)."""
    handler = logging.get_absl_handler()

    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname

    handler.addFilter(keep)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from sparsejax.experiment import config as config_lib
    from sparsejax.experiment import report, sweep, train

    _quiet_orbax()
    if _JAX_CACHE.value:
        import jax

        jax.config.update("jax_compilation_cache_dir", _JAX_CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    config = _CONFIG.value
    config_arg = _config_arg()
    workdir = _WORKDIR.value or _default_workdir(config_arg)
    path, colon, arg = config_arg.partition(":")
    arg = arg if colon else None
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    wants_sweep = _SWEEP.value
    if wants_sweep is None:
        wants_sweep = config_arg == _DEFAULT_CONFIG and _SWEEP_INDEX.value is None
    if wants_sweep or _SWEEP_LIST.value or _SWEEP_INDEX.value is not None:
        members = sweep.members(config_lib.load_module(path), arg)
        if _SWEEP_LIST.value:
            print("\n".join(sweep.sweep_commands(config_arg, workdir, len(members), overrides)))
            return
        indices = None if _SWEEP_INDEX.value is None else [_SWEEP_INDEX.value]
        summaries = sweep.run_sweep(config, members, workdir, indices=indices,
                                    overwrite=_OVERWRITE.value, aggregate_results=indices is None)
        if indices is None:
            with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
                print(f.read(), end="")
            print(f"\nResults: {os.path.join(workdir, 'results.md')}, results.csv, "
                  "results.png")
        else:
            print(report.markdown_table(summaries))
        return
    summary = train.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value,
                                       resume=_RESUME.value)
    print(report.markdown_table([summary]))
    print(f"\nRun directory: {workdir} (config.json, metrics.jsonl, summary.json)")


def _main(argv: list[str]) -> None:
    """Runs :func:`main`; configuration mistakes end with a one-line error, not a traceback."""
    try:
        main(argv)
    except (ValueError, KeyError, IndexError, FileNotFoundError, PermissionError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"launch.py: error: {message}")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and ``--config.*`` mistakes as one clear line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):  # Config file raised.
            lines = [lines[0], lines[-1]]
        sys.exit("launch.py: error: " + "\n  ".join(lines))
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as error:
        text = str(error.args[0] if error.args else error).strip("'\"").replace("\\n", " ")
        sys.exit(f"launch.py: error: invalid --config or --config.* override: {text}")


if __name__ == "__main__":
    app.run(_main, flags_parser=_parse_flags)
