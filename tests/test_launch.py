"""launch.py on the command line (subprocesses), and 8 simulated devices vs 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args: str, env: dict | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_smoke_run_with_override_writes_run_files_and_prints_table(tmp_path, tfds_dir):
    workdir = str(tmp_path / "x")
    result = _launch("--config=experiments/swat.py:smoke", "--config.method.sparsity=0.5",
                     "--config.model.name=mlp", "--config.model.kwargs={'features': (16,)}",
                     f"--config.dataset.data_dir={tfds_dir}", f"--workdir={workdir}",
                     "--jax_cache_dir=")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| swat_uniform_90 | swat" in result.stdout
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["method"]["sparsity"] == 0.5
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["steps"] == 6
    assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) > 0


def test_unknown_config_key_fails_with_a_clear_message():
    result = _launch("--config=experiments/swat.py:smoke", "--config.method.sparsty=0.5",
                     "--sweep_list")
    assert result.returncode != 0
    assert "sparsty" in result.stderr and 'Did you mean "sparsity"' in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_config_file_fails_with_a_clear_message(tmp_path):
    result = _launch(f"--config={tmp_path}/missing.py", "--sweep_list")
    assert result.returncode != 0
    assert "missing.py" in result.stderr and "Traceback" not in result.stderr


def test_sweep_list_prints_one_command_per_member():
    result = _launch("--config=experiments/default.py", "--workdir=runs/d", "--sweep_list",
                     "--seeds=1")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[2].endswith("--sweep_index=2")


def test_results_dir_needs_a_whole_sweep(tmp_path):
    result = _launch("--config=experiments/swat.py:smoke", f"--workdir={tmp_path}/x",
                     f"--results_dir={tmp_path}/r", "--jax_cache_dir=")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--results_dir collects a whole sweep's results: use it with --sweep" in result.stderr
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "r")


def test_sweep_list_runs_each_member_for_each_of_the_configs_seeds():
    result = _launch("--config=experiments/default.py", "--workdir=runs/d", "--sweep_list")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 15 and all("--seeds=3" in line for line in lines)
    assert lines[14].endswith("--sweep_index=14")
    result = _launch("--config=experiments/default.py", "--workdir=runs/d", "--sweep_list",
                     "--seeds=0")
    assert result.returncode != 0 and "--seeds must be an int >= 1" in result.stderr


_DEVICE_RUN = """
import json, sys
import ml_collections, tensorflow_datasets as tfds
import jax
from sparsejax.experiment import config as config_lib, train
config = config_lib.smoke(config_lib.base_config())
config.model = ml_collections.ConfigDict({"name": "mlp", "kwargs": {"features": (16,)}})
config.method = ml_collections.ConfigDict({"name": "swat", "sparsity": 0.5})
config.dataset.data_dir = sys.argv[2]
config.num_steps = 8
summary = train.train_and_evaluate(config, sys.argv[1])
print("RESULT" + json.dumps({"devices": jax.device_count(), "loss": summary["loss"],
                             "accuracy": summary["accuracy"]}))
"""


def test_eight_simulated_devices_match_one_device(tmp_path, tfds_dir):
    results = []
    for count in (1, 8):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
               "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-c", _DEVICE_RUN, str(tmp_path / str(count)),
                               tfds_dir], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
        results.append(json.loads(line[len("RESULT"):]))
    assert [r["devices"] for r in results] == [1, 8]
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-3)
    assert results[1]["accuracy"] == pytest.approx(results[0]["accuracy"], abs=1 / 297)


def _one_line_error(result, *needles: str) -> str:
    """The run failed with exactly one ``launch.py: error:`` line (the last) and no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("launch.py: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


_CONFIG_HEAD = "import ml_collections\nfrom sparsejax.experiment import config as config_lib\n"
_BAD_CONFIG_FILES = {
    "typo": ("def get_config(arg=''):\n    c = config_lib.base_config()\n    c.unlock()\n"
             "    c.num_epoch = 3\n    return c\n",
             ["'num_epoch'", "did you mean 'num_epochs'?"]),
    "method_typo": ("def get_config(arg=''):\n    c = config_lib.base_config()\n"
                    "    c.method = ml_collections.ConfigDict({'name': 'swat', 'sparsty': 0.8})\n"
                    "    return c\n", ["method.sparsty", "did you mean 'method.sparsity'?"]),
    "not_a_config": ("def get_config(arg=''):\n    return {'name': 'x'}\n",
                     ["returned dict, not an ml_collections.ConfigDict", "base_config()"]),
    "syntax": ("def get_config(arg='')\n    return 1\n", ["syntax error at line 3"]),
    "partial": ("def get_config(arg=''):\n"
                "    return ml_collections.ConfigDict({'name': 'p', 'seed': 0})\n",
                ["lacks field(s) config.batch_size", "base_config()"]),
    "raises": ("def get_config(arg=''):\n    return 1 / 0\n",
               ["ZeroDivisionError", "(line 4)", "fix the file"]),
}


@pytest.mark.parametrize("case", sorted(_BAD_CONFIG_FILES))
def test_bad_config_file_is_one_line_naming_file_and_fix(tmp_path, case):
    body, needles = _BAD_CONFIG_FILES[case]
    file = tmp_path / f"{case}.py"
    file.write_text(_CONFIG_HEAD + body)
    result = _launch(f"--config={file}", f"--workdir={tmp_path / 'run'}", "--jax_cache_dir=")
    _one_line_error(result, str(file) if case != "method_typo" else "sparsty", *needles)
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_one_line_with_the_fix(tmp_path):
    result = _launch(f"--config={tmp_path}/missing.py:smoke", "--jax_cache_dir=")
    _one_line_error(result, f"{tmp_path}/missing.py", "does not exist; check the --config path")


def _unwritable(tmp_path) -> str:
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        return str(tmp_path / "ro" / "run")
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root without /sys: no unwritable directory to try")
    return "/sys/sparsejax-unwritable-test/run"  # Root may not create directories in sysfs.


@pytest.mark.parametrize("case", ["file", "parent_file", "corrupt_config", "unwritable",
                                  "bad_method_value"])
def test_workdir_problems_are_one_line_naming_the_path_and_nothing_is_written(tmp_path, case):
    (tmp_path / "afile").write_text("x")
    flags = ["--config=experiments/swat.py:smoke", "--config.model.name=mlp",
             "--config.model.kwargs={'features': (16,)}", "--jax_cache_dir="]
    if case == "file":
        workdir, needles = tmp_path / "afile", ["is a file", "another --workdir"]
    elif case == "parent_file":
        workdir, needles = tmp_path / "afile" / "run", [f"'{tmp_path / 'afile'}' is a file"]
    elif case == "corrupt_config":
        workdir = tmp_path / "run"
        workdir.mkdir()
        (workdir / "config.json").write_text("{not json")
        needles = [f"{workdir / 'config.json'} is corrupted", "--overwrite"]
    elif case == "unwritable":
        workdir = _unwritable(tmp_path)
        needles = [f"Cannot create workdir '{workdir}'", "--workdir you may write to"]
    else:
        workdir = tmp_path / "run"
        flags.append("--config.method.sparsity=1.5")
        needles = ["config.method", "sparsity", "1.5", "--config.method."]
    result = _launch(*flags, f"--workdir={workdir}")
    _one_line_error(result, *needles)
    if case == "bad_method_value":
        assert not os.path.exists(workdir)  # So the corrected command is not "a different run".
