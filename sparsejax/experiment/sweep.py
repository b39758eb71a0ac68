"""Sweeps: a config file's ``sweep(arg="")`` lists override dicts, one per member.

Each member is the config with its overrides applied (dotted keys, e.g.
``{"name": "swat90", "method": {"name": "swat", "sparsity": 0.9}}``) and runs in
its own sub-workdir ``<workdir>/<index>_<name>``. :func:`run_sweep` runs the
members in this process, skipping finished ones (a member is finished when its
``summary.json`` exists, so a killed sweep resumes where it stopped), then writes
``results.md``, ``results.csv`` and ``results.png`` for all finished members.
:func:`sweep_commands` prints one ``launch.py --sweep_index=i`` command per member
for cluster job arrays; a final ``--sweep`` run (or :func:`aggregate`) then only
collects the results.

Example (``experiments/swat.py``)::

  def sweep(arg=""):
      return [{"name": f"swat{int(100 * s)}", "method.sparsity": s} for s in (0.5, 0.8, 0.9)]
"""

from __future__ import annotations

import json
import os
import re
import shlex
import types
from typing import Any, Mapping, Sequence

import ml_collections
from absl import logging

from sparsejax.experiment import config as config_lib
from sparsejax.experiment import report


def members(module: types.ModuleType, arg: str | None) -> list[dict[str, Any]]:
    """The override dicts of a config module's ``sweep`` (``sweep(arg)`` or ``sweep()``).

    Raises:
      ValueError: the module defines no ``sweep`` or it returns no members.
    """
    if not hasattr(module, "sweep"):
        raise ValueError(f"Config file {module.__file__!r} defines no sweep(arg='') function; "
                         "run it without --sweep/--sweep_index/--sweep_list.")
    result = module.sweep() if arg is None else module.sweep(arg)
    result = [dict(m) for m in result]
    if not result:
        raise ValueError(f"sweep() of {module.__file__!r} returned no members.")
    return result


def member_dir(workdir: str, index: int, config: ml_collections.ConfigDict) -> str:
    """Sub-workdir of member ``index``: ``<workdir>/<index:02d>_<config.name>``."""
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(config.name)).strip("-") or "run"
    return os.path.join(workdir, f"{index:02d}_{name}")


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


def run_sweep(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
              workdir: str, *, indices: Sequence[int] | None = None, overwrite: bool = False,
              aggregate_results: bool = True) -> list[dict[str, Any]]:
    """Runs sweep members (finished ones are skipped) and aggregates the results.

    Args:
      base: the base config (with command-line overrides applied).
      overrides: the members' override dicts.
      workdir: the sweep directory (one sub-workdir per member).
      indices: members to run (default: all).
      overwrite: delete and rerun members whose workdir holds another config.
      aggregate_results: write ``results.{md,csv,png}`` of all finished members.

    Returns:
      The summaries of the members that were run or found finished.

    Raises:
      IndexError: an index outside the sweep.
    """
    from sparsejax.experiment.train import train_and_evaluate

    configs = member_configs(base, overrides)
    indices = range(len(configs)) if indices is None else list(indices)
    for index in indices:
        if not 0 <= index < len(configs):
            raise IndexError(f"--sweep_index={index} is outside the sweep's {len(configs)} "
                             f"members (0..{len(configs) - 1}).")
    os.makedirs(workdir, exist_ok=True)
    summaries = []
    for index in indices:
        config = configs[index]
        directory = member_dir(workdir, index, config)
        logging.info("Sweep member %d/%d (%s) in %s", index + 1, len(configs), config.name,
                     directory)
        summaries.append(train_and_evaluate(config, directory, overwrite=overwrite))
    if aggregate_results:
        aggregate(base, overrides, workdir)
    return summaries


def aggregate(base: ml_collections.ConfigDict, overrides: Sequence[Mapping[str, Any]],
              workdir: str) -> str:
    """Collects the finished members' summaries into ``results.{md,csv,png}``.

    Returns:
      The markdown table (members not finished yet are left out and logged).
    """
    rows = []
    for index, config in enumerate(member_configs(base, overrides)):
        path = os.path.join(member_dir(workdir, index, config), "summary.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows.append(json.load(f))
        else:
            logging.warning("Sweep member %d (%s) is not finished; left out of the results.",
                            index, config.name)
    return report.write_results(rows, workdir)


def sweep_commands(config_arg: str, workdir: str, count: int,
                   extra_flags: Sequence[str] = ()) -> list[str]:
    """One ``python launch.py ... --sweep_index=i`` command line per member.

    Args:
      config_arg: the ``--config`` value (``path[:arg]``).
      workdir: the sweep directory.
      count: number of members.
      extra_flags: further flags repeated on every line (``--config.seed=1``).

    Returns:
      ``count`` shell-quoted command lines.
    """
    head = ["python", "launch.py", f"--config={config_arg}", f"--workdir={workdir}",
            *extra_flags]
    return [" ".join(shlex.quote(a) for a in head + [f"--sweep_index={i}"])
            for i in range(count)]
