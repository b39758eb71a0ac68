"""Two JAX processes on loopback (CPU, Gloo) train, are killed after a checkpoint,
resume, and end bitwise equal to one process with the same 2-device mesh.

Every run is ``launch.py`` (through a small driver that dumps each saved state):

1. two processes (``--coordinator_address/--num_processes/--process_id``, one CPU
   device each) on a fresh TFDS directory (both load the offline digits) train the
   smoke prune → retrain recipe with logging, evaluation and checkpoints, and are
   killed with SIGKILL right after a checkpoint of the second phase (after a
   stray record was logged past it);
2. the same two commands resume from the checkpoints and finish;
3. one process with ``--xla_force_host_platform_device_count=2`` runs the same config.

Then every saved state (params, optimizer state with the pruning masks, metrics,
step, rng) of both processes equals the 1-process run's bit for bit, and
``metrics.jsonl`` (written once, by process 0; the stray record dropped),
``config.json`` and the summary equal the 1-process run's.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 150  # Per stage; a stage takes ~15-30 s on 2 cores.
KILL_AT = "phase1_retrain1:4"  # Checkpoint (phase dir:step) after which run 1 is killed.
# Environments JAX's cluster detection reads (a test run inside a SLURM job must not join it).
_CLUSTER_ENV = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "TPU_", "KUBERNETES_", "JAX_COORDINATOR",
                "JAX_LOCAL_DEVICE_IDS", "MEGASCALE_")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_ENV)}
    return {**env, **extra}

_DRIVER = r"""
import os, re, runpy, signal, sys
import jax
import numpy as np
from sparsejax.experiment import checkpoint as ckpt_lib

dump, kill_at = os.environ["SJ_TEST_DUMP"], os.environ.get("SJ_TEST_KILL_AT")
save = ckpt_lib.Checkpointer.save


def save_dump_and_maybe_die(self, step, state):
    save(self, step, state)
    phase = os.path.basename(self.directory)
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(dict(state)))[0]
    arrays = {re.sub(r"\W+", "_", jax.tree_util.keystr(p)): np.asarray(v) for p, v in leaves}
    np.savez(os.path.join(dump, f"{phase}_{step}_p{jax.process_index()}.npz"), **arrays)
    if f"{phase}:{step}" == kill_at:
        self.close()  # This checkpoint is committed on this process.
        # A record logged after the checkpoint (by process 0): the resumed run drops it.
        ckpt_lib.append_jsonl(os.environ["SJ_TEST_METRICS"], {"type": "train", "step": 10**6})
        ckpt_lib.sync_processes("test: kill")  # Both are here: kill -9 both.
        os.kill(os.getpid(), signal.SIGKILL)


ckpt_lib.Checkpointer.save = save_dump_and_maybe_die
sys.argv = ["launch.py", *sys.argv[1:]]
runpy.run_path("launch.py", run_name="__main__")
"""


def _gloo_available() -> bool:
    try:
        from jax._src.lib import _jax  # Where jaxlib exposes its CPU collectives.
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 25) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _run(commands: list[tuple[list[str], dict[str, str], str]]) -> list[int]:
    """Runs the commands at once; returns their exit codes. On timeout kills them all
    and fails with each one's stderr tail."""
    procs, logs = [], []
    for args, env, log in commands:
        logs.append(log)
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-c", _DRIVER, *args], cwd=ROOT,
                                          env=_clean_env(**env), stdout=out,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(f"timed out after {TIMEOUT_S} s:\n" + "\n".join(
            f"--- {log}:\n{_tail(log)}" for log in logs))
    return [proc.returncode for proc in procs]


def _dumps(directory: str) -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.npz"))):
        with np.load(path) as data:
            result[os.path.basename(path)[:-4]] = {k: data[k] for k in data.files}
    return result


def _read(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f) if path.endswith(".json") else [json.loads(l) for l in f]


@pytest.mark.skipif(sys.platform == "win32", reason="jax.distributed CPU runs need Linux/macOS")
def test_two_processes_killed_and_resumed_equal_one_process(tmp_path):
    if not _gloo_available():
        pytest.skip("this jaxlib has no Gloo CPU collectives; multi-process CPU runs need them")
    tfds_dir = str(tmp_path / "tfds")  # Fresh: both processes load (prepare) it at once.
    flags = ["--config=experiments/han.py:smoke", "--config.num_steps=8",
             "--config.log_every_steps=2", "--config.eval_every_steps=4",
             "--config.checkpoint_every_steps=4", f"--config.dataset.data_dir={tfds_dir}",
             f"--jax_cache_dir={tmp_path / 'jax_cache'}"]  # The resumed run reuses compilations.
    base_env = {"JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")

    def two_processes(stage: str, kill_at: str = "") -> list[tuple]:
        port = _free_port()
        os.makedirs(os.path.join(multi + "_dump"), exist_ok=True)
        return [([*flags, f"--workdir={multi}", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}"],
                 {**base_env, "SJ_TEST_DUMP": multi + "_dump", "SJ_TEST_KILL_AT": kill_at,
                  "SJ_TEST_METRICS": os.path.join(multi, "metrics.jsonl")},
                 str(tmp_path / f"{stage}_p{i}.log")) for i in range(2)]

    codes = _run(two_processes("killed", KILL_AT))
    assert codes == [-signal.SIGKILL] * 2, f"exit codes {codes}, not killed:\n" + "\n".join(
        f"--- process {i}:\n{_tail(str(tmp_path / f'killed_p{i}.log'))}" for i in range(2))
    assert not os.path.exists(os.path.join(multi, "summary.json"))
    assert _read(os.path.join(multi, "metrics.jsonl"))[-1]["step"] == 10**6

    os.makedirs(single + "_dump")
    codes = _run(two_processes("resumed") + [
        ([*flags, f"--workdir={single}"],
         {**base_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
          "SJ_TEST_DUMP": single + "_dump"}, str(tmp_path / "single.log"))])
    assert codes == [0, 0, 0], "\n".join(
        f"--- {name}:\n{_tail(str(tmp_path / name))}"
        for name, code in zip(("resumed_p0.log", "resumed_p1.log", "single.log"), codes) if code)
    assert "restored the checkpoint of step 4" in _tail(str(tmp_path / "resumed_p1.log"), 400)

    want, got = _dumps(single + "_dump"), _dumps(multi + "_dump")
    assert sorted(want) == [f"phase{i}_{name}_{s}_p0" for i, name in enumerate(
        ("dense", "retrain1")) for s in (4, 8)]
    assert sorted(got) == sorted([k[:-1] + str(p) for k in want for p in (0, 1)])
    for key, arrays in want.items():
        for process in (0, 1):
            other = got[key[:-1] + str(process)]
            assert sorted(other) == sorted(arrays)
            for leaf, value in arrays.items():
                assert other[leaf].dtype == value.dtype, (key, process, leaf)
                np.testing.assert_array_equal(other[leaf], value,
                                              err_msg=f"{key} p{process} {leaf}")
    assert any(v.dtype == bool and not v.all() for v in want["phase1_retrain1_8_p0"].values())

    assert _read(os.path.join(multi, "config.json")) == _read(os.path.join(single, "config.json"))
    records = _read(os.path.join(multi, "metrics.jsonl"))
    assert records == _read(os.path.join(single, "metrics.jsonl"))  # Once each, stray dropped.
    # Every 4 steps of both 8-step phases, and the retrain phase's start (after pruning).
    assert [r["type"] for r in records].count("eval") == 5
    summary, reference = (_read(os.path.join(d, "summary.json")) for d in (multi, single))
    # accuracy_after_pruning was measured before the kill and restored from the checkpoint.
    for key in ("accuracy", "loss", "weight_sparsity", "steps", "devices", "train_flops_ratio",
                "accuracy_after_pruning"):
        assert summary[key] == reference[key], key
    assert summary["devices"] == 2



@pytest.mark.parametrize("flags, match", [
    (["--config.distributed=True"], "found no cluster to join: pass --coordinator_address"),
    (["--num_processes=2"], "--num_processes=N and --process_id=I"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in 0..1"),
])
def test_distributed_without_a_cluster_says_what_to_set(tmp_path, flags, match):
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config=experiments/swat.py:smoke",
         f"--workdir={tmp_path / 'run'}", *flags], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env=_clean_env(JAX_PLATFORMS="cpu"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("launch.py: error: ") and match in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # Nothing written.
