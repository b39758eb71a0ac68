"""Sweeps: a config file's ``sweep(arg="")`` lists override dicts, one per member.

Each member is the config with its overrides applied (dotted keys, e.g.
``{"name": "swat90", "method": {"name": "swat", "sparsity": 0.9}}``). With
``seeds=N`` every member runs N times, with ``config.seed`` + 0, 1, ..., N-1; each
run has its own sub-workdir ``<workdir>/<index>_<name>`` (``..._seed<seed>`` when
N > 1). :func:`run_sweep` runs them in this process, skipping finished ones (a run
is finished when its ``summary.json`` exists, so a killed sweep resumes where it
stopped), then writes ``results.md`` / ``results.csv`` (mean ± std over the seeds of
each member), ``runs.csv``, ``layers.csv``, ``results.png``
(:mod:`sparsejax.experiment.report`) and ``sweep.json`` (every run's config).
:func:`sweep_commands` prints one ``launch.py --sweep_index=j`` command per run for
cluster job arrays; a final ``--sweep`` run (or :func:`aggregate`) then only
collects the results. A config file sets its default number of seeds with a
module-level ``SEEDS = 3`` (``launch.py --seeds`` overrides it).

Example (``experiments/swat.py``)::

  def sweep(arg=""):
      return [{"name": f"swat{int(100 * s)}", "method.sparsity": s} for s in (0.5, 0.8, 0.9)]
"""

from __future__ import annotations

import os
import re
import shlex
import types
from typing import Any, Mapping, Sequence

import ml_collections
from absl import logging

from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes, report
from sparsejax.experiment.checkpoint import make_workdir, read_json, sync_processes


def members(module: types.ModuleType, arg: str | None) -> list[dict[str, Any]]:
    """The override dicts of a config module's ``sweep`` (``sweep(arg)`` or ``sweep()``).

    Raises:
      ValueError: the module defines no ``sweep``, it raises, or it returns no
        members or something other than a list of dicts (one line naming the file).
    """
    if not hasattr(module, "sweep"):
        raise ValueError(f"Config file {module.__file__!r} defines no sweep(arg='') function; "
                         "run it without --sweep/--sweep_index/--sweep_list.")
    call = "sweep()" if arg is None else f"sweep({arg!r})"
    try:
        result = module.sweep() if arg is None else module.sweep(arg)
    except Exception as error:  # pylint: disable=broad-except
        raise config_lib.ConfigError(
            f"{call} of config file {module.__file__!r} failed: "
            f"{config_lib.describe_error(error, module.__file__)}; fix the file.") from None
    try:
        result = [dict(m) for m in result]
    except (TypeError, ValueError):
        raise config_lib.ConfigError(
            f"{call} of config file {module.__file__!r} must return a list of override dicts "
            "(e.g. [{'name': 'swat90', 'method.sparsity': 0.9}]).") from None
    if not result:
        raise ValueError(f"sweep() of {module.__file__!r} returned no members.")
    return result


def default_seeds(module: types.ModuleType) -> int:
    """A config file's number of seeds per sweep member: its ``SEEDS`` (default 1)."""
    return check_seeds(getattr(module, "SEEDS", 1), f"SEEDS of {module.__file__!r}")


def check_seeds(seeds: Any, what: str = "--seeds") -> int:
    """``seeds`` as a positive int.

    Raises:
      ValueError: not an int >= 1 (one line naming ``what``).
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise config_lib.ConfigError(f"{what} must be an int >= 1 (runs per sweep member, "
                                     f"seeds config.seed + 0..N-1), got {seeds!r}.")
    return seeds


def member_dir(workdir: str, index: int, config: ml_collections.ConfigDict,
               seeds: int = 1) -> str:
    """Sub-workdir of member ``index``: ``<workdir>/<index:02d>_<config.name>``, with
    ``_seed<config.seed>`` appended when the sweep runs several seeds."""
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(config.name)).strip("-") or "run"
    suffix = f"_seed{config.seed}" if seeds > 1 else ""
    return os.path.join(workdir, f"{index:02d}_{name}{suffix}")


def member_configs(base: ml_collections.ConfigDict,
                   overrides: Sequence[Mapping[str, Any]]) -> list[ml_collections.ConfigDict]:
    """Applies each member's overrides to ``base`` (unknown keys raise ``KeyError``)."""
    configs = []
    for index, member in enumerate(overrides):
        try:
            configs.append(config_lib.apply_overrides(base, member))
        except KeyError as error:
            raise KeyError(f"sweep member {index} {member}: {error.args[0]}") from None
    return configs


def run_configs(configs: Sequence[ml_collections.ConfigDict],
                seeds: int) -> list[tuple[int, ml_collections.ConfigDict]]:
    """The runs of a sweep: ``(member index, config)`` for every member and seed.

    Run ``j`` is member ``j // seeds`` with ``config.seed`` increased by ``j % seeds``
    (member-major order: the ``--sweep_index`` of job arrays).
    """
    seeds = check_seeds(seeds)
    runs = []
    for index, config in enumerate(configs):
        for offset in range(seeds):
            run = config.copy_and_resolve_references()
            run.seed = config.seed + offset
            runs.append((index, run))
    return runs


def validate_members(base: ml_collections.ConfigDict,
                     overrides: Sequence[Mapping[str, Any]]) -> list[ml_collections.ConfigDict]:
    """The members' configs, each checked with :func:`~sparsejax.experiment.config.validate`.

    Run before any member trains, so a bad member cannot stop a sweep half-way.

    Raises:
      KeyError: a member overrides an unknown key.
      ValueError: a member's config is invalid (the message names the member).
    """
    configs = member_configs(base, overrides)
    for index, config in enumerate(configs):
        try:
            config_lib.validate(config)
        except ValueError as error:
            raise config_lib.ConfigError(
                f"sweep member {index} ({config.name}) {dict(overrides[index])}: {error}"
            ) from None
    return configs


def run_sweep(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
              workdir: str, *, seeds: int = 1, indices: Sequence[int] | None = None,
              overwrite: bool = False, aggregate_results: bool = True,
              results_dir: str | None = None) -> list[dict[str, Any]]:
    """Runs every member × seed (finished runs are skipped) and aggregates the results.

    Args:
      base: the base config (with command-line overrides applied).
      overrides: the members' override dicts.
      workdir: the sweep directory (one sub-workdir per run).
      seeds: runs per member, with ``config.seed`` + 0 .. seeds-1.
      indices: runs to run (default: all); run ``j`` is member ``j // seeds``,
        seed offset ``j % seeds``.
      overwrite: delete and rerun runs whose workdir holds another config.
      aggregate_results: write ``results.{md,csv,png}``, ``runs.csv``, ``layers.csv``
        and ``sweep.json`` of all finished runs.
      results_dir: also write those files here (e.g. a committed results folder).

    Returns:
      The summaries of the runs that were run or found finished.

    Raises:
      IndexError: an index outside the sweep.
      ValueError: ``seeds`` < 1, a member's config is invalid (checked for all
        members first) or the workdir cannot be created.

    Example:
      >>> run_sweep(config, [{"name": "dense"}, {"name": "swat80", "method.name": "swat"}],
      ...           "runs/s", seeds=3)  # 6 runs; results.md: mean ± std of 3 seeds
    """
    from sparsejax.experiment.train import initialize_distributed, train_and_evaluate

    if any(c.get("distributed", False) for c in member_configs(base, overrides)):
        initialize_distributed()  # Before validate_members() may touch a JAX backend.
    count = len(overrides) * check_seeds(seeds)
    indices = range(count) if indices is None else list(indices)
    for index in indices:
        if not 0 <= index < count:
            raise IndexError(f"--sweep_index={index} is outside the sweep's {len(overrides)} "
                             f"members × {seeds} seed(s) = {count} runs (0..{count - 1}).")
    runs = run_configs(validate_members(base, overrides), seeds)
    make_workdir(workdir)
    summaries = []
    for index in indices:
        member, config = runs[index]
        directory = member_dir(workdir, member, config, seeds)
        logging.info("Sweep run %d/%d (%s, seed %d) in %s", index + 1, count, config.name,
                     config.seed, directory)
        summaries.append(train_and_evaluate(config, directory, overwrite=overwrite))
    if aggregate_results:
        aggregate(base, overrides, workdir, seeds,  # Process 0 writes the results files.
                  results_dir=results_dir)
        sync_processes("sweep results written")  # Nobody reads them before that.
    return summaries


def aggregate(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
              workdir: str, seeds: int = 1, *, results_dir: str | None = None) -> str:
    """Collects the finished runs' summaries into the sweep's results files.

    Writes ``results.{md,csv,png}``, ``runs.csv`` and ``layers.csv``
    (:func:`sparsejax.experiment.report.write_results`) and ``sweep.json``
    (:func:`manifest`: what was run, so a results folder can be checked against
    its config file later) to ``workdir`` and, if given, to ``results_dir``.

    Args:
      base: the base config.
      overrides: the members' override dicts.
      workdir: the sweep directory.
      seeds: runs per member (as given to :func:`run_sweep`).
      results_dir: a second folder for the results files (not the runs).

    Returns:
      The markdown table (runs not finished yet are left out and logged).

    Raises:
      ValueError: the finished runs cannot share one table
        (:func:`sparsejax.experiment.report.group_runs` names the differing keys).
    """
    from sparsejax.experiment.checkpoint import is_main_process, write_json

    rows = []
    runs = run_configs(member_configs(base, overrides), seeds)
    for index, config in runs:
        path = os.path.join(member_dir(workdir, index, config, seeds), "summary.json")
        if os.path.exists(path):
            rows.append(read_json(path, "summary file"))
        else:
            logging.warning("Sweep member %d (%s, seed %d) is not finished; left out of the "
                            "results.", index, config.name, config.seed)
    table = ""
    for directory in [workdir] + ([results_dir] if results_dir else []):
        if directory != workdir and is_main_process():
            os.makedirs(directory, exist_ok=True)
        table = report.write_results(rows, directory)
        write_json(os.path.join(directory, "sweep.json"), manifest(runs, seeds, rows))
    return table


def manifest(runs: Sequence[tuple[int, ml_collections.ConfigDict]], seeds: int,
             rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a sweep ran: every run's resolved config (its method with every recipe argument,
    :func:`~sparsejax.experiment.recipes.with_method_defaults`), and the finished runs' time.

    Args:
      runs: :func:`run_configs` of the sweep.
      seeds: runs per member.
      rows: the finished runs' summaries.

    Returns:
      ``{"seeds", "runs": [{"member", "name", "seed", "config", "finished"}],
      "wall_time_s"}`` (JSON-ready); ``wall_time_s`` sums the finished runs' times.
    """
    done = {(str(r["name"]), r.get("seed")) for r in rows}
    return {"seeds": seeds,
            "runs": [{"member": index, "name": str(config.name), "seed": config.seed,
                      "finished": (str(config.name), config.seed) in done,
                      "config": recipes.with_method_defaults(config_lib.to_dict(config))}
                     for index, config in runs],
            "wall_time_s": sum(float(r.get("wall_time_s", 0.0)) for r in rows)}


def sweep_commands(config_arg: str, workdir: str, count: int,
                   extra_flags: Sequence[str] = (), seeds: int = 1) -> list[str]:
    """One ``python launch.py ... --sweep_index=j`` command line per run.

    Args:
      config_arg: the ``--config`` value (``path[:arg]``).
      workdir: the sweep directory.
      count: number of members.
      extra_flags: further flags repeated on every line (``--config.seed=1``).
      seeds: runs per member (``--seeds=N`` is added to every line when N > 1).

    Returns:
      ``count * seeds`` shell-quoted command lines.
    """
    seeds = check_seeds(seeds)
    head = ["python", "launch.py", f"--config={config_arg}", f"--workdir={workdir}",
            *extra_flags, *([f"--seeds={seeds}"] if seeds > 1 else [])]
    return [" ".join(shlex.quote(a) for a in head + [f"--sweep_index={i}"])
            for i in range(count * seeds)]
