"""Sweeps: members in sub-workdirs, resume after an interruption, aggregation, job lists."""

from __future__ import annotations

import os

import pytest
import tensorflow_datasets as tfds
from references import tiny_config

from sparsejax.experiment import config as config_lib
from sparsejax.experiment import sweep, train


MEMBERS = [{"name": "dense", "method": {"name": "dense"}},
           {"name": "mag50", "method": {"name": "magnitude", "sparsity": 0.5}}]


def test_interrupted_sweep_resumes_and_skips_finished_members(tmp_path, monkeypatch):
    base, workdir = tiny_config(), str(tmp_path)
    calls = []
    run = train.run_phase

    def counting(**kwargs):
        calls.append(kwargs["workdir"])
        return run(**kwargs)

    monkeypatch.setattr(train, "run_phase", counting)
    with tfds.testing.mock_data(num_examples=64):
        sweep.run_sweep(base, MEMBERS, workdir, indices=[0])  # "Killed" after member 0.
        assert sorted(os.listdir(workdir))[:1] == ["00_dense"]
        calls.clear()
        summaries = sweep.run_sweep(base, MEMBERS, workdir)
    assert {os.path.basename(c) for c in calls} == {"01_mag50"}  # Member 0 skipped.
    assert [s["name"] for s in summaries] == ["dense", "mag50"]
    for name in ("results.md", "results.csv", "results.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0
    table = open(os.path.join(workdir, "results.md")).read()
    assert "| dense " in table and "| mag50 " in table and "50.0%" in table
    csv_lines = open(os.path.join(workdir, "results.csv")).read().splitlines()
    assert csv_lines[0].startswith("name,method,variant,n,seeds,accuracy,accuracy_std")
    assert len(csv_lines) == 3


def test_seeds_run_every_member_per_seed_and_tables_report_mean_std(tmp_path):
    base, workdir = tiny_config(), str(tmp_path)
    with tfds.testing.mock_data(num_examples=64):
        summaries = sweep.run_sweep(base, MEMBERS, workdir, seeds=2)
    assert [(s["name"], s["seed"]) for s in summaries] == [
        ("dense", 0), ("dense", 1), ("mag50", 0), ("mag50", 1)]
    assert sorted(d for d in os.listdir(workdir) if d[0].isdigit()) == [
        "00_dense_seed0", "00_dense_seed1", "01_mag50_seed0", "01_mag50_seed1"]
    table = open(os.path.join(workdir, "results.md")).read()
    dense = next(l for l in table.splitlines() if l.startswith("| dense "))
    assert "| 2 " in dense and " ± " in dense
    runs = open(os.path.join(workdir, "runs.csv")).read().splitlines()
    assert len(runs) == 5 and runs[1].startswith("dense,0,") and runs[2].startswith("dense,1,")
    # One job per run: member-major, each line carrying --seeds.
    lines = sweep.sweep_commands("experiments/default.py", "runs/d", 2, seeds=3)
    assert len(lines) == 6 and all("--seeds=3" in l for l in lines)
    assert lines[4].endswith("--sweep_index=4")


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True])
def test_bad_seed_counts_are_refused(tmp_path, seeds):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        sweep.run_sweep(tiny_config(), MEMBERS, str(tmp_path), seeds=seeds)


def test_sweep_member_with_unknown_key_names_it():
    with pytest.raises(KeyError, match=r"sweep member 1 .*Unknown config key 'method.sparsty'"):
        sweep.member_configs(tiny_config(), [{}, {"method.sparsty": 0.5}])


def test_sweep_index_out_of_range_is_refused(tmp_path):
    with pytest.raises(IndexError, match="outside the sweep's 2 members"):
        sweep.run_sweep(tiny_config(), MEMBERS, str(tmp_path), indices=[5])


def test_sweep_list_gives_one_command_per_member():
    lines = sweep.sweep_commands("experiments/swat.py:smoke", "runs/s", 3, ["--config.seed=1"])
    assert lines == [f"python launch.py --config=experiments/swat.py:smoke --workdir=runs/s "
                     f"--config.seed=1 --sweep_index={i}" for i in range(3)]


def test_config_without_sweep_is_a_clear_error():
    module = config_lib.load_module(os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "asp.py"))
    with pytest.raises(ValueError, match="defines no sweep"):
        sweep.members(module, None)
