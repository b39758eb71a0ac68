"""The reproduction study pipeline: every study's smoke version (tiny budgets, 2 seeds)
runs its sweep, writes its results folder and renders its section of
REPRODUCTION.md; missing, unfinished, short-seeded and stale results are refused."""

from __future__ import annotations

import inspect
import json
import os
import shutil

import pytest

from sparsejax.experiment import recipes, reproduction, sweep

STUDY_KEYS = [key for key, _, _ in reproduction.STUDIES]


def _run_study(study: reproduction.Study, root: str, runs: str) -> None:
    module = study.module
    base = module.get_config(study.arg)
    members = sweep.members(module, study.arg)
    sweep.run_sweep(base, members, os.path.join(runs, study.key), seeds=study.seeds,
                    results_dir=os.path.join(root, study.key))


@pytest.mark.parametrize("key", STUDY_KEYS)
def test_smoke_study_runs_and_renders_its_section(tmp_path, key):
    root, runs = str(tmp_path / "reproduction"), str(tmp_path / "runs")
    [study] = [s for s in reproduction.studies(smoke=True) if s.key == key]
    _run_study(study, root, runs)
    for name in reproduction.FILES:
        assert os.path.getsize(os.path.join(root, key, name)) > 0, name
    assert reproduction.check(study, root) == []
    out = str(tmp_path / "REPRODUCTION.md")
    document = reproduction.generate(root, out, smoke=True, keys=[key])
    with open(out, encoding="utf-8") as f:
        assert f.read() == document
    verdicts = [line for line in document.splitlines() if line.startswith("- *")]
    assert verdicts, "every study states its claims"
    for line in verdicts:
        assert any(f"**{v}" in line for v in ("reproduced", "partly", "not reproduced",
                                              "measured")), line
    assert study.command(root) in document
    figures = [f for f in os.listdir(os.path.join(root, key)) if f.endswith(".png")]
    assert len(figures) >= 2, figures  # the sweep's plot and the study's figure
    for figure in figures:
        assert f"{key}/{figure}" in document or figure == "results.png"


@pytest.fixture(scope="module")
def asp_results(tmp_path_factory):
    """The ASP smoke study's results folder (the cheapest study)."""
    base = tmp_path_factory.mktemp("asp")
    root = str(base / "reproduction")
    [study] = [s for s in reproduction.studies(smoke=True) if s.key == "asp"]
    _run_study(study, root, str(base / "runs"))
    return study, root


def _copy(asp_results, tmp_path):
    study, root = asp_results
    shutil.copytree(root, tmp_path / "reproduction")
    return study, str(tmp_path / "reproduction")


def test_missing_result_file_is_named_with_its_command(asp_results, tmp_path):
    study, root = _copy(asp_results, tmp_path)
    os.remove(os.path.join(root, "asp", "runs.csv"))
    [problem] = reproduction.check(study, root)
    assert "missing runs.csv" in problem and study.command(root) in problem
    with pytest.raises(reproduction.StudyError, match="missing runs.csv"):
        reproduction.generate(root, None, smoke=True, keys=["asp"])


def test_stale_results_name_the_run_and_the_changed_key(asp_results, tmp_path):
    study, root = _copy(asp_results, tmp_path)
    path = os.path.join(root, "asp", "sweep.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["runs"][2]["config"]["optimizer"]["learning_rate"] = 0.5
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    [problem] = reproduction.check(study, root)
    assert "stale" in problem and "optimizer.learning_rate (0.5 in the results" in problem
    assert repr(manifest["runs"][2]["name"]) in problem
    assert study.command(root) in problem


def test_a_method_argument_at_its_recipe_default_is_not_a_change(asp_results, tmp_path):
    study, root = _copy(asp_results, tmp_path)
    path = os.path.join(root, "asp", "sweep.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    run = next(r for r in manifest["runs"] if r["config"]["method"]["name"] == "asp")
    method = run["config"]["method"]
    default = inspect.signature(recipes.asp).parameters["exclude"].default
    # Sweeps record every recipe argument, the omitted ones at their defaults.
    assert method["exclude"] == default
    # Results made before the argument existed (absent), at its default, or changed.
    for value, stale in ((None, False), (default, False), ("head", True)):
        if value is None:
            method.pop("exclude")
        else:
            method["exclude"] = value
        with open(path, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
        problems = reproduction.check(study, root)
        assert bool(problems) is stale, problems
        if stale:
            assert "method.exclude ('head' in the results" in problems[0]


def test_unfinished_runs_and_edited_tables_are_refused(asp_results, tmp_path):
    study, root = _copy(asp_results, tmp_path)
    path = os.path.join(root, "asp", "sweep.json")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["runs"][0]["finished"] = False
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    problems = reproduction.check(study, root)
    assert any("1 run(s) unfinished (dense/seed0)" in p for p in problems), problems
    assert any("runs.csv does not list the runs of sweep.json" in p for p in problems), problems


def test_fewer_seeds_than_the_study_needs_are_refused(asp_results, tmp_path):
    study, root = _copy(asp_results, tmp_path)
    three = reproduction.studies(smoke=True, seeds=3)
    [asp3] = [s for s in three if s.key == "asp"]
    [problem] = reproduction.check(asp3, root)
    assert "has 2 seed(s) per run, the study needs 3" in problem
    # The fix regenerates it with the config file's 3 seeds (its SEEDS: no --seeds flag).
    assert asp3.command(root) in problem and "--seeds" not in asp3.command(root)
    assert len(reproduction.check(asp3, root)) == 1  # not also every run as "stale"


def test_the_full_study_requires_three_seeds():
    with pytest.raises(reproduction.StudyError, match="needs at least 3"):
        reproduction.generate("/nonexistent", None, seeds=2, keys=["asp"])


def test_committed_study_is_complete_and_current():
    """The committed results in reproduction/ match today's config files."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "reproduction")
    problems = [p for s in reproduction.studies() for p in reproduction.check(s, root)]
    assert problems == []


def test_committed_document_is_generated_from_the_committed_results(monkeypatch):
    """REPRODUCTION.md is what the generator makes of reproduction/ today."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    with open("REPRODUCTION.md", encoding="utf-8") as f:
        committed = f.read()
    assert reproduction.generate("reproduction", None, figures=False) == committed
