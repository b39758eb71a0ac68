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
  python launch.py --config=experiments/swat.py --coordinator_address=10.0.0.1:1234 \\
      --num_processes=2 --process_id=0                    # host 0 of 2 (host 1: id 1)
  srun python launch.py --config=experiments/swat.py --config.distributed=True  # SLURM

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
    "aggregate the results. Default: on for experiments/default.py (any arg), off otherwise.")
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "Run only this run of the sweep: member sweep_index // seeds, seed "
    "offset sweep_index % seeds.")
_SWEEP_LIST = flags.DEFINE_bool("sweep_list", False,
                                "Print one command line per sweep run and exit.")
_SEEDS = flags.DEFINE_integer(
    "seeds", None, "Runs per sweep member (config.seed + 0..N-1); tables report mean ± std. "
    "Default: the config file's SEEDS (1 if it has none).")
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", None, "With --sweep: also write the results files (results.{md,csv,png}, "
    "runs.csv, layers.csv, sweep.json) here, e.g. a committed reproduction/<study> folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Delete a previous run with another config in the workdir.")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache_dir", os.path.join("runs", ".jax_cache"),
    "Persistent XLA compilation cache (reused by sweep members and later runs); '' disables.")
_RESUME = flags.DEFINE_bool("resume", False,
                            "Continue a previous run in the workdir even if its config differs.")
# Multi-host: per-process values are flags, not config fields, so that every process
# writes and checks the same config.json.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: HOST:PORT of process 0's coordinator (the same on every process). With "
    "--num_processes and --process_id; on SLURM / Open MPI / Cloud TPU use "
    "--config.distributed=True instead and JAX detects all three.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes of the job.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index, 0 .. num_processes - 1.",
    lower_bound=0)


def _config_arg(argv: list[str] | None = None) -> str:
    """The ``--config`` value as given (``path[:arg]``; the last one wins), or the default."""
    argv = sys.argv if argv is None else argv
    value = _DEFAULT_CONFIG
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


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
    from sparsejax.experiment import checkpoint as ckpt_lib
    from sparsejax.experiment import report, sweep, train

    _quiet_orbax()
    if _JAX_CACHE.value:
        import jax

        jax.config.update("jax_compilation_cache_dir", _JAX_CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    config = _CONFIG.value
    multihost = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _SWEEP_LIST.value and (config.distributed or any(v is not None for v in multihost)):
        train.initialize_distributed(*multihost)  # Before anything touches a JAX backend.
    config_arg = _config_arg()
    workdir = _WORKDIR.value or _default_workdir(config_arg)
    path, colon, arg = config_arg.partition(":")
    arg = arg if colon else None
    config_lib.validate(config, source=path)  # Before anything is written.
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    wants_sweep = _SWEEP.value
    if wants_sweep is None:
        # The default config file runs its sweep (also as default.py:smoke).
        wants_sweep = (os.path.abspath(path) == _DEFAULT_CONFIG
                       and _SWEEP_INDEX.value is None)
    if _RESULTS_DIR.value and (not wants_sweep or _SWEEP_INDEX.value is not None):
        raise ValueError("--results_dir collects a whole sweep's results: use it with --sweep "
                         "(after --sweep_index jobs, run --sweep once more to aggregate).")
    if wants_sweep or _SWEEP_LIST.value or _SWEEP_INDEX.value is not None:
        module = config_lib.load_module(path)
        members = sweep.members(module, arg)
        seeds = (sweep.default_seeds(module) if _SEEDS.value is None
                 else sweep.check_seeds(_SEEDS.value))
        sweep.validate_members(config, members)
        if _SWEEP_LIST.value:
            print("\n".join(sweep.sweep_commands(config_arg, workdir, len(members), overrides,
                                                 seeds=seeds)))
            return
        indices = None if _SWEEP_INDEX.value is None else [_SWEEP_INDEX.value]
        summaries = sweep.run_sweep(config, members, workdir, seeds=seeds, indices=indices,
                                    overwrite=_OVERWRITE.value, aggregate_results=indices is None,
                                    results_dir=_RESULTS_DIR.value)
        if not ckpt_lib.is_main_process():
            return
        if indices is None:
            with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
                print(f.read(), end="")
            print(f"\nResults: {os.path.join(workdir, 'results.md')}, results.csv, runs.csv, "
                  "results.png")
        else:
            print(report.markdown_table(summaries))
        return
    summary = train.train_and_evaluate(config, workdir, overwrite=_OVERWRITE.value,
                                       resume=_RESUME.value)
    if not ckpt_lib.is_main_process():
        return
    print(report.markdown_table([summary]))
    print(f"\nRun directory: {workdir} (config.json, metrics.jsonl, summary.json)")


def _main(argv: list[str]) -> None:
    """Runs :func:`main`; configuration mistakes end with a one-line error, not a traceback."""
    try:
        main(argv)
    except (ValueError, KeyError, IndexError, FloatingPointError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        sys.exit(f"launch.py: error: {message}")
    except OSError as error:
        sys.exit(f"launch.py: error: {_os_error(error)}")


def _os_error(error: OSError) -> str:
    """An ``OSError`` as one line: what failed, on which path, and what to do."""
    if not error.filename:  # Raised with a message of its own (e.g. a missing dataset).
        return str(error)
    reason = error.strerror or type(error).__name__
    return (f"{reason}: {error.filename!r}; check that the path exists and that you may read "
            "and write there (or pass another --workdir).")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config-file and ``--config.*`` mistakes as one clear line.

    The config file is loaded and its keys checked first, so a missing file, a
    syntax error, a ``get_config`` that raises or returns no ``ConfigDict``, and
    unknown or missing keys are reported by name instead of as a traceback.
    """
    from sparsejax.experiment import config as config_lib

    config_arg = _config_arg(argv)
    try:
        config_lib.check_keys(config_lib.load(config_arg), source=config_arg.partition(":")[0])
    except config_lib.ConfigError as error:
        sys.exit(f"launch.py: error: {error}")
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        if any(line.startswith("Traceback") for line in lines):  # Config file raised.
            lines = [lines[0], lines[-1]]
        sys.exit("launch.py: error: " + " ".join(line.strip() for line in lines))
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as error:
        text = str(error.args[0] if error.args else error).strip("'\"").replace("\\n", " ")
        text = text.replace("\\'", "'")
        sys.exit(f"launch.py: error: invalid --config or --config.* override: {text}")
    except Exception as error:  # pylint: disable=broad-except
        text = " ".join(str(error).split())
        sys.exit(f"launch.py: error: while reading the flags and --config={config_arg}: "
                 f"{type(error).__name__}: {text}")


if __name__ == "__main__":
    app.run(_main, flags_parser=_parse_flags)
