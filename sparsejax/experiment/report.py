"""Results of runs: the run summary, results tables (markdown, CSV) and plots.

``summary.json`` of a run holds the final test accuracy, the achieved weight
sparsity (of the weights the forward pass multiplies with, over the linear
layers' kernels, counted with :func:`sparsejax.analysis.summary.summary`) and the
training-FLOP estimate of :mod:`sparsejax.analysis.costs`:

* ``step_flops_ratio``: (FLOPs of one step of the last phase) / (FLOPs of a
  dense step), the cost while the method is active (``step_flop_reduction`` is
  ``1 -`` it);
* ``train_flops_ratio``: (FLOPs of the whole recipe, every phase) / (FLOPs of
  dense training of the main length). Prune → retrain recipes spend *more* than
  dense training (a ratio above 1): they retrain after it.

Tables and plots group the runs of one name (the seeds of a sweep member) and
report mean ± sample std over the ``n`` seeds (:func:`group_runs`); the note
under each says what one test example is worth.

References:
  SPECS §3 (SWAT's cost model, [derived]); Raihan & Aamodt, NeurIPS 2020.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from sparsejax.analysis import costs
from sparsejax.experiment import config as config_lib

# Per-run numbers summarised over the seeds of a group (mean, std, n).
STATS = ("accuracy", "accuracy_after_pruning", "kept_magnitude", "loss", "weight_sparsity",
         "step_flops_ratio", "train_flops_ratio", "wall_time_s")
# Method arguments that place a run on a curve (the x axis) rather than name a variant.
LEVEL_ARGS = frozenset({"sparsity", "k", "keep", "final_sparsity"})
COLUMNS = (
    ("name", "run"), ("method", "method"), ("variant", "variant"), ("n", "n"),
    ("accuracy", "test accuracy (mean ± std)"),
    ("accuracy_after_pruning", "right after pruning"), ("weight_sparsity", "weight sparsity"),
    ("step_flops_ratio", "step FLOPs (× dense)"),
    ("train_flops_ratio", "training FLOPs (× dense)"), ("wall_time_s", "time (s)"))


def run_summary(*, config: ml_collections.ConfigDict, phases: Sequence[Any],
                densities: Sequence[Mapping[str, float]], layers: Sequence[costs.Layer],
                main_steps: int, evaluation: Mapping[str, float],
                wall_time: float, num_test_examples: int | None = None,
                pruned: Sequence[Mapping[str, float] | None] | None = None,
                permutation: Sequence[Mapping[str, Any] | None] | None = None
                ) -> dict[str, Any]:
    """Builds the ``summary.json`` record of a finished run.

    Args:
      config: the run config.
      phases: the recipe's phases.
      densities: per phase, kernel path -> weight density at its end
        (:meth:`sparsejax.experiment.recipes.Phase.densities`).
      layers: the model's linear layers (:func:`sparsejax.analysis.costs.linear_layers`).
      main_steps: steps of the main phase (the dense reference length).
      evaluation: final ``{"accuracy", "loss"}``.
      wall_time: seconds spent by this process.
      num_test_examples: size of the evaluated split (one example is worth
        ``1 / num_test_examples`` of accuracy).
      pruned: per phase, ``{"accuracy", "loss"}`` of the model right after the
        phase's pruning, before any retraining, and ``"kept_magnitude"``, the
        fraction ``Σ|W ⊙ mask| / Σ|W|`` of the incoming weights' magnitude its
        masks keep (``None`` for phases that do not start by pruning). The last
        one is also ``accuracy_after_pruning`` / ``kept_magnitude``.
      permutation: per phase, the info of its ``prepare`` transform (ASP's
        channel permutation: per consumer kernel ``producer``, ``efficacy``,
        ``kept_base``, ``kept_perm``, ``kept_unstructured``, ``total``,
        ``regroupings``, ``converged``) or ``None``; reported as
        ``phases[i]["permutation"]``.

    Returns:
      A JSON-ready dict (see the module docstring for the FLOP fields); it holds
      the whole ``config`` so that tables can check that the runs they group are
      comparable.
    """
    dense_step = costs.step_flops(layers)
    total, phase_rows = 0.0, []
    pruned = list(pruned) if pruned is not None else [None] * len(phases)
    permutation = list(permutation) if permutation is not None else [None] * len(phases)
    number = lambda v: None if v is None or math.isnan(v) else float(v)
    for phase, final, after, info in zip(phases, densities, pruned, permutation):
        ratio = phase.mean_sparsity_ratio
        mean = {k: 1.0 - (1.0 - d) * ratio for k, d in final.items()}
        step = costs.step_flops(layers, phase.fractions(layers, mean))
        final_step = costs.step_flops(layers, phase.fractions(layers, final))
        total += step * phase.num_steps
        method = (phase.method.name if phase.method is not None
                  else "pruning" if phase.pruning is not None
                  else config.method.name if phase.optimizer_wrapper is not None else "dense")
        phase_rows.append({"name": phase.name, "steps": phase.num_steps,
                           "lr_scale": phase.lr_scale, "method": method,
                           "step_flops_ratio": final_step / dense_step,
                           "accuracy_after_pruning": after["accuracy"] if after else None,
                           "kept_magnitude": number(after.get("kept_magnitude")) if after else None,
                           "permutation": info})
    densities = densities[-1]
    sizes = {l.kernel: math.prod(l.kernel_shape) for l in layers}
    kept = sum(densities.get(k, 1.0) * n for k, n in sizes.items())
    layer_rows = [{"path": l.kernel, "shape": list(l.kernel_shape),
                   "density": densities.get(l.kernel, 1.0), "forward_flops": l.forward_flops}
                  for l in layers]
    train_ratio = total / (dense_step * main_steps)
    after_pruning = [after for after in pruned if after]
    kept_magnitude = number(after_pruning[-1].get("kept_magnitude")) if after_pruning else None
    return {**({"accuracy_after_pruning": after_pruning[-1]["accuracy"]} if after_pruning else {}),
        **({"kept_magnitude": kept_magnitude} if kept_magnitude is not None else {}),
        "name": config.name, "seed": config.seed, "method": config.method.name,
        "method_args": {k: v for k, v in config.method.to_dict().items() if k != "name"},
        "model": config.model.name, "dataset": config.dataset.name,
        "accuracy": evaluation["accuracy"], "loss": evaluation["loss"],
        "weight_sparsity": 1.0 - kept / max(sum(sizes.values()), 1),
        "step_flops_ratio": phase_rows[-1]["step_flops_ratio"],
        "step_flop_reduction": 1.0 - phase_rows[-1]["step_flops_ratio"],
        "train_flops_ratio": train_ratio, "train_flop_reduction": 1.0 - train_ratio,
        "dense_step_flops_per_example": dense_step,
        "steps": sum(p.num_steps for p in phases), "phases": phase_rows, "layers": layer_rows,
        "devices": jax.device_count(), "wall_time_s": wall_time,
        "num_test_examples": num_test_examples, "config": config_lib.to_dict(config),
    }


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _comparable(row: Mapping[str, Any]) -> dict[str, Any]:
    """What must agree between the seeds of one group: the config without seed and name."""
    config = row.get("config") or {"method": {"name": row.get("method"),
                                              **row.get("method_args", {})},
                                   "model": {"name": row.get("model")},
                                   "dataset": {"name": row.get("dataset")}}
    return {k: v for k, v in _flat(config).items() if k not in ("seed", "name")}


def _differing(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> list[str]:
    flats = [_comparable(row) for row in rows]
    keys = sorted(set().union(*flats)) if keys is None else keys
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def group_runs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Groups run summaries by run name (the seeds of one sweep member) into statistics.

    Every group gets ``mean``/``std``/``n`` of :data:`STATS` (``std`` is the sample
    standard deviation, 0 for one run), its ``seeds``, and a ``variant`` label: the
    method arguments, other than the sparsity level (:data:`LEVEL_ARGS`), that
    differ between groups of the same method (e.g. ``distribution=erk``). Runs with
    the same method and variant form one series of a plot.

    Args:
      rows: run summaries (``summary.json`` records), in table order.

    Returns:
      One dict per group, in order of first appearance: ``name``, ``method``,
      ``variant``, ``n``, ``seeds``, ``method_args``, ``model``, ``dataset``,
      ``num_test_examples`` and ``<stat>`` (the mean) and ``<stat>_std`` for each stat.

    Raises:
      ValueError: runs of one group differ in anything but their seed, a seed repeats
        within a group, or runs of different models / datasets / test splits would share
        one table (the message names the differing keys).

    Example:
      >>> groups = group_runs([summary_seed0, summary_seed1])
      >>> groups[0]["accuracy"], groups[0]["accuracy_std"], groups[0]["n"]
      (0.97, 0.004, 2)
    """
    import numpy as np

    if rows:
        mixed = _differing(rows, ["model.name", "model.kwargs", "dataset.name"])
        sizes = {row.get("num_test_examples") for row in rows}
        if mixed or len(sizes) > 1:
            raise ValueError(
                "Runs of different setups cannot share one results table: they differ in "
                f"{', '.join(mixed + (['num_test_examples'] if len(sizes) > 1 else []))}. "
                "Write one table per model and dataset.")
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(str(row["name"]), []).append(row)
    groups = []
    for name, members in by_name.items():
        differing = _differing(members)
        if differing:
            raise ValueError(f"Runs named {name!r} differ in {', '.join(differing)} (not only "
                             "their seed): give each configuration its own name.")
        seeds = [row.get("seed") for row in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"Runs named {name!r} repeat seed(s) {seeds}: each seed of a "
                             "group must be a separate run.")
        group: dict[str, Any] = {
            "name": name, "method": members[0]["method"], "n": len(members), "seeds": seeds,
            "method_args": members[0].get("method_args", {}),
            "model": members[0].get("model"), "dataset": members[0].get("dataset"),
            "num_test_examples": members[0].get("num_test_examples")}
        for key in STATS:
            values = np.asarray([float(row[key]) for row in members if key in row])
            if len(values):
                group[key] = float(values.mean())
                group[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        groups.append(group)
    for method in {g["method"] for g in groups}:
        same = [g for g in groups if g["method"] == method]
        keys = sorted({k for g in same for k in g["method_args"] if k not in LEVEL_ARGS})
        varying = [k for k in keys
                   if len({repr(g["method_args"].get(k)) for g in same}) > 1]
        for g in same:
            g["variant"] = ", ".join(f"{k}={g['method_args'].get(k)}" for k in varying)
    return groups


def _cell(key: str, group: Mapping[str, Any]) -> str:
    value = group.get(key, "")
    if key.startswith("accuracy") and isinstance(value, float):
        spread = f" ± {100 * group[key + '_std']:.2f}" if group["n"] > 1 else ""
        return f"{100 * value:.2f}{spread}%"
    if key.endswith("flops_ratio") and isinstance(value, float):
        return f"{value:.3f}×"
    if key == "wall_time_s" and isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown results table: one row per group of seeds (see :func:`group_runs`).

    Accuracy is the mean ± sample standard deviation over the group's ``n`` seeds
    (also right after pruning, before retraining, for prune → retrain recipes);
    FLOPs are multiples of dense training (below 1 saves compute).

    Args:
      rows: run summaries.

    Returns:
      The table, with a note of what one test example is worth.

    Example:
      >>> print(markdown_table([summary]))
      | run | method | variant | n | test accuracy (mean ± std) | ...
    """
    groups = group_runs(rows)
    head = [title for _, title in COLUMNS]
    body = [[_cell(key, g) for key, _ in COLUMNS] for g in groups]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    table = "\n".join([line(head), rule] + [line(r) for r in body])
    examples = groups[0].get("num_test_examples") if groups else None
    if examples:
        table += (f"\n\n{groups[0]['model']} on {groups[0]['dataset']}: {examples} test "
                  f"examples, one example = {100 / examples:.2f} accuracy points.")
    return table


def csv_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The grouped results as CSV with raw numbers (fractions; ``_std`` columns)."""
    groups = group_runs(rows)
    keys = ["name", "method", "variant", "n", "seeds"] + [
        k for stat in STATS for k in (stat, f"{stat}_std")] + ["model", "dataset",
                                                             "num_test_examples"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for group in groups:
        writer.writerow({k: (" ".join(map(str, group[k])) if k == "seeds" else group.get(k, ""))
                         for k in keys})
    return out.getvalue()


def runs_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every run (every seed) as one CSV line: the raw data behind :func:`csv_table`."""
    keys = ["name", "seed", "method", *STATS, "model", "dataset", "num_test_examples"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return out.getvalue()


def layers_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every run's per-layer weight density (one CSV line per run and layer).

    Args:
      rows: run summaries (their ``layers`` records).

    Returns:
      CSV with ``name, seed, path, shape, params, density, forward_flops``: the
      density of the weights the forward pass multiplies with, at the end of the run.
    """
    keys = ["name", "seed", "path", "shape", "params", "density", "forward_flops"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        for layer in row.get("layers", []):
            writer.writerow({"name": row["name"], "seed": row.get("seed", ""),
                             "path": layer["path"],
                             "shape": "x".join(map(str, layer["shape"])),
                             "params": math.prod(layer["shape"]),
                             "density": layer["density"],
                             "forward_flops": layer["forward_flops"]})
    return out.getvalue()


def accuracy_limits(groups: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """The accuracy axis (in %) of a results plot: every error bar visible, not exaggerated.

    The range covers every mean ± std with a margin, and spans at least 2 points and
    at least 20 test examples, so that a one-example difference never fills the plot.

    Args:
      groups: output of :func:`group_runs`.

    Returns:
      ``(low, high)`` in accuracy percent, clipped to [0, 100].
    """
    lows = [100 * (g["accuracy"] - g.get("accuracy_std", 0.0)) for g in groups]
    highs = [100 * (g["accuracy"] + g.get("accuracy_std", 0.0)) for g in groups]
    low, high = min(lows), max(highs)
    examples = groups[0].get("num_test_examples") or 0
    span = max(high - low, 2.0, 20 * 100 / examples if examples else 0.0)
    middle, half = (low + high) / 2, 0.6 * span
    low, high = max(0.0, middle - half), min(100.0, middle + half)
    return low, high


def plot(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a PNG: accuracy vs weight sparsity and vs training FLOPs, with error bars.

    One series per method *and* variant (SWAT-U and SWAT-ERK are separate lines),
    joined in order of the x value; error bars are ±1 sample std over the seeds.
    Every series has a legend entry; a series of one point is also labelled with
    its run name. The note under the plot says what one test example is
    worth. matplotlib is imported lazily (Agg backend).

    Args:
      rows: run summaries.
      path: output ``.png`` path (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_runs(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for group in groups:
        series.setdefault((group["method"], group["variant"]), []).append(group)
    low, high = accuracy_limits(groups)
    for ax, key, label in ((axes[0], "weight_sparsity", "weight sparsity (%)"),
                           (axes[1], "train_flops_ratio", "training FLOPs (× dense)")):
        scale = 100.0 if key == "weight_sparsity" else 1.0
        for (method, variant), members in series.items():
            members = sorted(members, key=lambda g: g[key])
            xs = [scale * g[key] for g in members]
            ys = [100 * g["accuracy"] for g in members]
            errs = [100 * g.get("accuracy_std", 0.0) for g in members]
            name = method + (f" ({variant})" if variant else "")
            ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=name)
            if len(members) == 1:
                ax.annotate(members[0]["name"], (xs[0], ys[0]), textcoords="offset points",
                            xytext=(5, -10), fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(low, high)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    title = f"{groups[0]['model']} on {groups[0]['dataset']}" if groups else ""
    ns = sorted({g["n"] for g in groups})
    examples = groups[0].get("num_test_examples") if groups else None
    note = f"error bars: ±1 std over n = {'/'.join(map(str, ns))} seeds"
    if examples:
        note += f"; one test example = {100 / examples:.2f} points"
    fig.suptitle(f"{title}\n{note}", fontsize=10)
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_results(rows: Sequence[Mapping[str, Any]], directory: str) -> str:
    """Writes ``results.md``, ``results.csv`` (groups), ``runs.csv``, ``layers.csv`` and
    ``results.png``.

    Args:
      rows: run summaries (e.g. the finished members of a sweep).
      directory: output directory.

    Returns:
      The markdown table.
    """
    from sparsejax.experiment.checkpoint import is_main_process, write_text

    table = markdown_table(rows)
    write_text(os.path.join(directory, "results.md"), table + "\n")
    write_text(os.path.join(directory, "results.csv"), csv_table(rows))
    write_text(os.path.join(directory, "runs.csv"), runs_csv(rows))
    write_text(os.path.join(directory, "layers.csv"), layers_csv(rows))
    if rows and is_main_process():  # One writer in a multi-process job.
        plot(rows, os.path.join(directory, "results.png"))
    return table


__all__ = ["COLUMNS", "LEVEL_ARGS", "STATS", "accuracy_limits", "csv_table", "group_runs",
           "layers_csv", "markdown_table", "plot", "run_summary", "runs_csv", "write_results"]
