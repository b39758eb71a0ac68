"""Results of runs: the run summary, results tables (markdown, CSV) and plots.

``summary.json`` of a run holds the final test accuracy, the achieved weight
sparsity (of the weights the forward pass multiplies with, over the linear
layers' kernels, counted with :func:`sparsejax.summary.summary`) and the
training-FLOP estimate of :mod:`sparsejax.costs`:

* ``step_flop_reduction``: ``1 -`` (FLOPs of one step of the last phase) /
  (FLOPs of a dense step), the saving while the method is active;
* ``train_flop_reduction``: ``1 -`` (FLOPs of the whole recipe, every phase) /
  (FLOPs of dense training of the main length). Prune → retrain recipes spend
  *more* than dense training (a negative reduction): they retrain after it.

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

from sparsejax import costs

COLUMNS = (
    ("name", "run"), ("method", "method"), ("accuracy", "test accuracy"),
    ("weight_sparsity", "weight sparsity"), ("step_flop_reduction", "step FLOP reduction"),
    ("train_flop_reduction", "train FLOP reduction"), ("wall_time_s", "time (s)"))


def run_summary(*, config: ml_collections.ConfigDict, phases: Sequence[Any],
                densities: Sequence[Mapping[str, float]], layers: Sequence[costs.Layer],
                main_steps: int, evaluation: Mapping[str, float],
                wall_time: float) -> dict[str, Any]:
    """Builds the ``summary.json`` record of a finished run.

    Args:
      config: the run config.
      phases: the recipe's phases.
      densities: per phase, kernel path -> weight density at its end
        (:meth:`sparsejax.experiment.recipes.Phase.densities`).
      layers: the model's linear layers (:func:`sparsejax.costs.linear_layers`).
      main_steps: steps of the main phase (the dense reference length).
      evaluation: final ``{"accuracy", "loss"}``.
      wall_time: seconds spent by this process.

    Returns:
      A JSON-ready dict (see the module docstring for the FLOP fields).
    """
    dense_step = costs.step_flops(layers, "dense", {})
    total, phase_rows = 0.0, []
    for phase, final in zip(phases, densities):
        ratio = phase.mean_sparsity_ratio
        mean = {k: 1.0 - (1.0 - d) * ratio for k, d in final.items()}
        args = phase.cost_arguments(layers)
        step = costs.step_flops(layers, phase.cost, mean, **args)
        final_step = costs.step_flops(layers, phase.cost, final, **args)
        total += step * phase.num_steps
        phase_rows.append({"name": phase.name, "steps": phase.num_steps,
                           "lr_scale": phase.lr_scale, "cost_model": phase.cost,
                           "step_flops_ratio": final_step / dense_step})
    densities = densities[-1]
    sizes = {l.kernel: math.prod(l.kernel_shape) for l in layers}
    kept = sum(densities.get(k, 1.0) * n for k, n in sizes.items())
    layer_rows = [{"path": l.kernel, "shape": list(l.kernel_shape),
                   "density": densities.get(l.kernel, 1.0), "forward_flops": l.forward_flops}
                  for l in layers]
    train_ratio = total / (dense_step * main_steps)
    return {
        "name": config.name, "method": config.method.name,
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
    }


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key == "wall_time_s":
            return f"{value:.1f}"
        return f"{100 * value:.1f}%" if key != "accuracy" else f"{100 * value:.2f}%"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown results table (one row per run summary; see :data:`COLUMNS`).

    Example:
      >>> print(markdown_table([summary]))
      | run | method | test accuracy | weight sparsity | ...
    """
    head = [title for _, title in COLUMNS]
    body = [[_cell(key, row.get(key, "")) for key, _ in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule] + [line(r) for r in body])


def csv_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as CSV with raw numbers (fractions, not percentages)."""
    out = io.StringIO()
    keys = [key for key, _ in COLUMNS] + ["loss", "step_flops_ratio", "train_flops_ratio",
                                          "steps", "model", "dataset"]
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return out.getvalue()


def plot(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes a PNG: accuracy vs weight sparsity and vs step-FLOP reduction, per method.

    Runs of the same method are joined by a line (sorted by the x value); every
    point is labelled with its run name. matplotlib is imported lazily (Agg backend).

    Args:
      rows: run summaries.
      path: output ``.png`` path (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = sorted({row["method"] for row in rows})
    for ax, key, label in ((axes[0], "weight_sparsity", "weight sparsity"),
                           (axes[1], "step_flop_reduction", "training FLOP reduction per step")):
        for method in methods:
            points = sorted((row[key], row["accuracy"], row["name"]) for row in rows
                            if row["method"] == method)
            xs, ys = [100 * p[0] for p in points], [100 * p[1] for p in points]
            ax.plot(xs, ys, "o-", label=method)
            for x, y, (_, _, name) in zip(xs, ys, points):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
        ax.set_xlabel(f"{label} (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{rows[0]['model']} on {rows[0]['dataset']}" if rows else "")
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def write_results(rows: Sequence[Mapping[str, Any]], directory: str) -> str:
    """Writes ``results.md``, ``results.csv`` and ``results.png`` to ``directory``.

    Args:
      rows: run summaries (e.g. the finished members of a sweep).
      directory: output directory.

    Returns:
      The markdown table.
    """
    from sparsejax.experiment.checkpoint import write_text

    table = markdown_table(rows)
    write_text(os.path.join(directory, "results.md"), table + "\n")
    write_text(os.path.join(directory, "results.csv"), csv_table(rows))
    if rows:
        plot(rows, os.path.join(directory, "results.png"))
    return table


__all__ = ["COLUMNS", "csv_table", "markdown_table", "plot",
           "run_summary", "write_results"]
