"""Results tables and plots: seeds grouped into mean ± std, variants as series, mixed runs refused."""

from __future__ import annotations

import csv
import io
import math

import pytest

from sparsejax.experiment import report


def _run(name, seed, accuracy, *, method="swat", sparsity=0.8, distribution="uniform",
         dataset="mnist_5k", lr=0.1, examples=1000):
    args = {} if method == "dense" else {"sparsity": sparsity, "distribution": distribution}
    config = {"name": name, "seed": seed, "model": {"name": "mlp", "kwargs": {}},
              "dataset": {"name": dataset}, "optimizer": {"learning_rate": lr},
              "method": {"name": method, **args}}
    return {"name": name, "seed": seed, "method": method, "method_args": args, "model": "mlp",
            "dataset": dataset, "accuracy": accuracy, "loss": 0.5,
            "weight_sparsity": args.get("sparsity", 0.0), "step_flops_ratio": 0.5,
            "train_flops_ratio": 0.5, "wall_time_s": 2.0, "num_test_examples": examples,
            "config": config}


def _rows():
    return [_run("dense", s, a, method="dense") for s, a in enumerate((0.97, 0.96, 0.98))] + [
        _run("u80", s, a) for s, a in enumerate((0.90, 0.92))] + [
        _run("erk80", 0, 0.93, distribution="erk")]


def test_groups_hold_mean_sample_std_and_n_of_their_seeds():
    groups = {g["name"]: g for g in report.group_runs(_rows())}
    dense = groups["dense"]
    assert (dense["n"], dense["seeds"]) == (3, [0, 1, 2])
    assert dense["accuracy"] == pytest.approx(0.97)
    assert dense["accuracy_std"] == pytest.approx(0.01)  # sample std of .97, .96, .98
    assert groups["u80"]["accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert groups["erk80"]["n"] == 1 and groups["erk80"]["accuracy_std"] == 0.0
    # The variant names what differs within a method, never the sparsity level.
    assert groups["u80"]["variant"] == "distribution=uniform"
    assert groups["erk80"]["variant"] == "distribution=erk"
    assert dense["variant"] == ""


def test_table_and_csv_report_mean_std_n_and_flops_as_multiples_of_dense():
    table = report.markdown_table(_rows())
    line = next(l for l in table.splitlines() if l.startswith("| dense "))
    assert "97.00 ± 1.00%" in line and "| 3 " in line and "0.500×" in line
    assert "one example = 0.10 accuracy points" in table
    groups = list(csv.DictReader(io.StringIO(report.csv_table(_rows()))))
    assert [g["name"] for g in groups] == ["dense", "u80", "erk80"]
    assert float(groups[1]["accuracy"]) == pytest.approx(0.91)
    assert groups[0]["seeds"] == "0 1 2"
    runs = list(csv.DictReader(io.StringIO(report.runs_csv(_rows()))))
    assert len(runs) == 6 and runs[3]["name"] == "u80" and runs[3]["seed"] == "0"


def test_seeds_of_one_name_that_differ_in_config_are_refused_naming_the_key():
    rows = _rows()
    rows[1] = _run("dense", 1, 0.96, method="dense", lr=0.2)
    with pytest.raises(ValueError, match=r"'dense' differ in optimizer\.learning_rate"):
        report.group_runs(rows)


def test_repeated_seed_and_mixed_datasets_are_refused():
    with pytest.raises(ValueError, match=r"repeat seed"):
        report.group_runs([_run("a", 0, 0.9), _run("a", 0, 0.91)])
    with pytest.raises(ValueError, match=r"differ in dataset\.name"):
        report.markdown_table([_run("a", 0, 0.9), _run("b", 0, 0.9, dataset="sklearn_digits",
                                                      examples=1000)])
    with pytest.raises(ValueError, match=r"num_test_examples"):
        report.group_runs([_run("a", 0, 0.9), _run("b", 0, 0.9, examples=297)])


def test_accuracy_axis_covers_error_bars_and_at_least_twenty_test_examples():
    groups = report.group_runs(_rows())
    low, high = report.accuracy_limits(groups)
    assert low <= 100 * (0.91 - math.sqrt(2) * 0.01) and high >= 98.0
    # Two close results on 297 examples: the axis spans >= 20 examples (6.7 points).
    close = report.group_runs([_run("a", 0, 0.950, examples=297),
                               _run("b", 0, 0.953, examples=297)])
    low, high = report.accuracy_limits(close)
    assert high - low >= 20 * 100 / 297 - 1e-9 and low < 95.0 < 95.3 < high


def test_plot_writes_a_png_with_one_series_per_method_and_variant(tmp_path, monkeypatch):
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, *args, label=None, **kwargs):
        labels.append(label)
        return original(self, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    path = tmp_path / "results.png"
    report.plot(_rows(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(set(labels)) == ["dense", "swat (distribution=erk)",
                                   "swat (distribution=uniform)"]
