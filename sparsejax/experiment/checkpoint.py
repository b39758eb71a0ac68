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


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-process job).

    True in a single-process run. Does not touch a JAX backend before
    ``jax.distributed.initialize`` (so it is safe to call at any time).

    Returns:
      ``True`` on process 0 (or without ``jax.distributed``), else ``False``.

    Example:
      >>> if is_main_process():
      ...     print("results in", workdir)
    """
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Waits until every process of a multi-process job reaches this point.

    Nothing happens in a single-process run. Every process must call it with the
    same ``name``, in the same order (it is a collective over all devices).

    Args:
      name: a label of the barrier (the same on every process).

    Example:
      >>> write_json(path, summary)      # process 0 writes ...
      >>> sync_processes("summary")      # ... and nobody reads it before that
    """
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"sparsejax: {name}")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (temporary file, then ``os.replace``).

    In a multi-process job only process 0 writes (see :func:`is_main_process`); the
    others return without touching the file, so every process can run the same code.

    Args:
      path: destination file; its directory must exist.
      text: the full contents.

    Example:
      >>> write_text(os.path.join(workdir, "results.md"), table)
    """
    if not is_main_process():
        return
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
    """Writes ``data`` as indented JSON atomically (see :func:`write_text`; process 0 only).

    Args:
      path: destination file; its directory must exist.
      data: a JSON-serialisable value.

    Example:
      >>> write_json(os.path.join(workdir, "summary.json"), {"accuracy": 0.95})
    """
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a JSON-lines file (``[]`` if it does not exist).

    Raises:
      ValueError: a line is not JSON (the message names the file, the line and the fix).
    """
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path} line {number} is not valid JSON ({error.msg}); delete that line "
                    "(or the file), or pass --overwrite to start the run over.") from None
    return records


def read_json(path: str, what: str = "file") -> Any:
    """Reads a JSON file of a run directory.

    Args:
      path: the file.
      what: what the file is, for the message (``"config.json"``).

    Returns:
      The parsed data.

    Raises:
      ValueError: the file is not valid JSON or cannot be read; the message names
        it and the fix (delete it or ``--overwrite``).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = f"line {error.lineno}: {error.msg}" if isinstance(
            error, json.JSONDecodeError) else "not UTF-8 text"
        raise ValueError(f"{path} is corrupted ({reason}); delete it, pass --overwrite to "
                         "start the run over, or use another --workdir.") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a {what}; remove it, pass --overwrite, "
                         "or use another --workdir.") from None
    except PermissionError:
        raise ValueError(f"{path} cannot be read (permission denied); fix its permissions "
                         "or use another --workdir.") from None


def append_jsonl(path: str, record: Mapping[str, Any]) -> None:
    """Appends one JSON record as a line (a single ``write`` of a complete line).

    In a multi-process job only process 0 appends (see :func:`is_main_process`), so a
    record is logged once however many processes run the loop.

    Args:
      path: the JSON-lines file (created if missing).
      record: a JSON-serialisable mapping.

    Example:
      >>> append_jsonl(os.path.join(workdir, "metrics.jsonl"), {"step": 10, "loss": 0.3})
    """
    if not is_main_process():
        return
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
        ``overwrite`` nor ``resume`` was given (the message lists the differing
        keys); or the workdir cannot be created or written, or its ``config.json``
        is corrupted (the message names the path and the fix).
    """
    make_workdir(workdir)
    path = os.path.join(workdir, "config.json")
    existing = None
    if overwrite:
        try:
            for name in RUN_FILES:
                target = os.path.join(workdir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                elif os.path.lexists(target):
                    os.remove(target)
        except OSError as error:
            raise ValueError(f"Cannot delete the previous run in workdir {workdir!r} for "
                             f"--overwrite: {_os_reason(error)}; delete it by hand or use "
                             "another --workdir.") from None
    elif os.path.lexists(path):
        existing = read_json(path, "config file")
        if not isinstance(existing, dict):
            raise ValueError(f"{path} does not hold a config (a JSON object); delete it, pass "
                             "--overwrite to start the run over, or use another --workdir.")
    if existing is not None and existing != config and not resume:
        keys = sorted(_differences(existing, config))
        raise ValueError(
            f"Workdir {workdir!r} holds a run with a different config (differing keys: "
            f"{', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}). Use another "
            "--workdir, pass --overwrite to delete that run, or --resume to continue it "
            "with the new config.")
    if existing != config:
        try:
            write_json(path, config)
        except OSError as error:
            raise ValueError(f"Cannot write {path}: {_os_reason(error)}; use a writable "
                             "--workdir or fix its permissions.") from None
    if existing is None:
        return "new"
    return "same" if existing == config else "changed"


def make_workdir(workdir: str) -> None:
    """Creates ``workdir`` (and its parents) if needed and checks it is a writable directory.

    Raises:
      ValueError: ``workdir`` or one of its parents is a file, or it cannot be
        created or written (permissions, read-only file system); one line naming
        the path and the fix.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"Workdir {workdir!r} is a file, not a directory; pass another "
                         "--workdir or remove the file.")
    parent = os.path.dirname(os.path.abspath(workdir))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"Cannot create workdir {workdir!r}: {parent!r} is a file, not a "
                         "directory; pass another --workdir or move that file.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create workdir {workdir!r}: {_os_reason(error)}; pass a "
                         "--workdir you may write to or fix the permissions.") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"Workdir {workdir!r} is not writable; pass a --workdir you may "
                         "write to or fix its permissions (chmod u+w).")


def _os_reason(error: OSError) -> str:
    """An ``OSError`` as ``reason ('path')`` without the errno prefix."""
    reason = error.strerror or str(error)
    return f"{reason} ({error.filename!r})" if error.filename else reason


def _differences(a: Any, b: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


class Checkpointer:
    """Orbax checkpoints of one training phase (``<workdir>/checkpoints/phase<i>_<name>``).

    Multi-process jobs (``jax.distributed``): every process creates the
    checkpointer and calls :meth:`save`, :meth:`restore` and :meth:`close` with its
    global arrays, in the same order; orbax writes each array once and lets process
    0 write the metadata and commit the step. The directory must be on a file
    system that all processes share.

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
