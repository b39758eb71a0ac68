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
    result = _launch("--config=experiments/default.py", "--workdir=runs/d", "--sweep_list")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[2].endswith("--sweep_index=2")


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
