"""Checkpoints (orbax), atomic file writes and the workdir guard of a run.

A run's workdir holds ``config.json``, ``metrics.jsonl``, ``summary.json`` and
``checkpoints/phase<i>_<name>/<step>/`` (orbax). The checkpointed state is a plain
dict ``{"step", "params", "collections", "opt_state", "rng"}``: parameters, mutable
model collections (``batch_stats``, the sparsity methods' ``sparsity`` state),
optimizer state (pruning masks included), the step within the phase and the PRNG
key data. The data position is the step (the in-memory pipeline is a pure function
of the step; the streamed one skips that many batches), so nothing else is needed to
resume exactly.

JSON and text files are written to a temporary file in the same directory and then
renamed over the target, so a kill never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import jax
import numpy as np

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (temporary file, then ``os.replace``).

    Args:
      path: destination file; its directory must exist.
      text: the full contents.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, data: Any) -> None:
    """Writes ``data`` as indented JSON atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a JSON-lines file (``[]`` if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str, record: Mapping[str, Any]) -> None:
    """Appends one JSON record as a line (a single ``write`` of a complete line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def prepare_workdir(workdir: str, config: Mapping[str, Any], *, overwrite: bool = False,
                    resume: bool = False) -> str:
    """Creates ``workdir`` or checks that it holds a run of the same config.

    Args:
      workdir: the run directory.
      config: the run's config as plain data (``config.to_dict``).
      overwrite: delete a previous run's files (:data:`RUN_FILES`) whatever its config.
      resume: continue a run whose config differs (e.g. more epochs); the
        checkpoints must still fit the model.

    Returns:
      ``"new"`` (no previous run), ``"same"`` (a run of this config: it is resumed,
      or reported as finished when ``summary.json`` exists) or ``"changed"`` (a
      run with another config, continued because ``resume`` is set).

    Raises:
      ValueError: the workdir holds a run with a different config and neither
        ``overwrite`` nor ``resume`` was given; the message lists the differing keys.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    existing = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    if overwrite:
        for name in RUN_FILES:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        existing = None
    if existing is not None and existing != config and not resume:
        keys = sorted(_differences(existing, config))
        raise ValueError(
            f"Workdir {workdir!r} holds a run with a different config (differing keys: "
            f"{', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}). Use another "
            "--workdir, pass --overwrite to delete that run, or --resume to continue it "
            "with the new config.")
    if existing != config:
        write_json(path, config)
    if existing is None:
        return "new"
    return "same" if existing == config else "changed"


def _differences(a: Any, b: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


class Checkpointer:
    """Orbax checkpoints of one training phase (``<workdir>/checkpoints/phase<i>_<name>``).

    Args:
      directory: the phase's checkpoint directory.
      max_to_keep: checkpoints kept (the latest ones).

    Example:
      >>> ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "phase0_train"))
      >>> ckpt.save(100, state)
      >>> state = ckpt.restore(template_state)  # the latest step
    """

    def __init__(self, directory: str, max_to_keep: int = 2) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
            item_handlers=ocp.StandardCheckpointHandler())

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Saves ``state`` at ``step`` (asynchronously; :meth:`close` waits)."""
        self._manager.save(step, args=self._ocp.args.StandardSave(dict(state)))

    def restore(self, template: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
        """Restores a checkpoint into the structure, shapes and shardings of ``template``.

        Args:
          template: a state of the same model and optimizer (its values are unused).
          step: the step to restore (default: the latest).

        Returns:
          The restored state dict.

        Raises:
          ValueError: the checkpoint was written by another model or optimizer (the
            message names the first parameter whose shape differs).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        self._check_params(step, template["params"])
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, dict(template))
        try:
            return self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"Checkpoint {self.directory}/{step} does not match this run's "
                             f"optimizer or method state ({error}). Use another --workdir or "
                             "--overwrite.") from error

    def _check_params(self, step: int, params: Any) -> None:
        from sparsejax.paths import flatten

        stored = self._manager.item_metadata(step)
        stored = getattr(stored, "tree", stored)["params"]
        saved = {p: tuple(m.shape) for p, m in flatten(stored)[0] if m is not None}
        wanted = {p: tuple(np.shape(x)) for p, x in flatten(params)[0]}
        for path in sorted(set(saved) | set(wanted)):
            if saved.get(path) != wanted.get(path):
                raise ValueError(
                    f"Checkpoint {self.directory}/{step} is from another model: parameter "
                    f"{path!r} has shape {saved.get(path, 'missing')} in the checkpoint but "
                    f"{wanted.get(path, 'missing')} in this model. Use another --workdir or "
                    "--overwrite.")

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
