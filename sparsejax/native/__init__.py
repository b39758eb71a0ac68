"""CPU kernels as XLA FFI custom calls: exact k-th largest key, threshold pack and unpack.

:func:`sparsejax.select.kth_largest_key` answers a single population with a
counting search written in XLA ops. On XLA:CPU every distinct kernel costs
~5-15 ms of compilation, and the search compiles a loop of them per tensor
shape: a SWAT step with eleven searched tensors compiled 2.0-2.4x slower than
the dense step. This C++ kernel (``select_kernel.cc``, same contract) is one
custom call per tensor, which XLA compiles at no cost: the reference CNN's
SWAT step then compiles 1.2x dense. It is also faster (a sampled bracket,
one counting pass and one collecting pass on XLA's threads, a histogram of
the bracket; an exact radix select when the sample misses): a 20% top-K
mask of a 32x32x32x64 post-ReLU activation takes 1.0 ms against 2.8 ms for
the search on a 2-core CPU.

``sparsejax.select`` binds one ``kth_largest_key`` primitive per selection;
it lowers to this kernel on the CPU and to the XLA search on other backends
(traced only then), so a jitted step costs one equation per selection to
trace. ``jax.export`` lowers the XLA search instead (even for the CPU): an
exported artifact must not name a target that only this process registered.
So does a module that XLA partitions over several CPU devices (the custom call
has no partitioning rule; the search's reductions stay sharded).

The kernel is compiled on first use with the system C++ compiler against the
XLA FFI headers of the installed ``jaxlib`` (``jax.ffi.include_dir()``), with
``-march=native`` where the compiler takes it, once per source, jaxlib version
and CPU, into ``$SPARSEJAX_CACHE`` (default ``~/.cache/sparsejax``). Without a
compiler, or with ``SPARSEJAX_NATIVE=0``, or on any backend but the CPU, the
XLA search runs instead, with identical results (the tests compare the two).

Example:
  >>> from sparsejax import native
  >>> native.available()  # doctest: +SKIP
  True
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any, Iterator, Sequence

import jax

_SOURCES = [os.path.join(os.path.dirname(__file__), name)
            for name in ("select_kernel.cc", "pack_kernel.cc")]
# FFI target name -> the handler symbol the library exports.
_TARGETS = {"sparsejax_kth_largest_key": "SparsejaxKthLargestKey",
            "sparsejax_pack_threshold": "SparsejaxPackThreshold",
            "sparsejax_unpack_threshold": "SparsejaxUnpackThreshold"}
_log = logging.getLogger("sparsejax")
_lock = threading.Lock()
_state: dict[str, object] = {"loaded": None, "error": None}
_enabled = [os.environ.get("SPARSEJAX_NATIVE", "1") != "0"]


def _cache_dir() -> str:
    return os.environ.get("SPARSEJAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sparsejax")


def _cpu_id() -> str:
    """This CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _build() -> str:
    """Path of the compiled kernel, building it if this source/jaxlib has none yet."""
    import jaxlib

    sources = []
    for name in _SOURCES:
        with open(name, "rb") as f:
            sources.append(f.read())
    # Built with -march=native: the tag names this CPU too (a shared cache stays safe).
    tag = hashlib.sha256(b"\0".join(sources + [jaxlib.__version__.encode(), sys.platform.encode(),
                                                _cpu_id().encode()])).hexdigest()
    path = os.path.join(_cache_dir(), f"kernels_{tag[:16]}.so")
    if os.path.exists(path):
        return path
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w",
           "-I", jax.ffi.include_dir(), *_SOURCES, "-o", tmp]
    try:
        # -march=native vectorises the counting passes for this CPU (1.4x faster on
        # AVX2); a compiler that refuses it builds the portable code.
        done = subprocess.run(cmd[:1] + ["-march=native"] + cmd[1:], capture_output=True,
                              text=True, timeout=300)
        if done.returncode:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: concurrent builders (pytest -n) agree
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def available() -> bool:
    """Whether the CPU kernel is enabled and built (building it on first call).

    Returns:
      False when disabled (``SPARSEJAX_NATIVE=0`` or :func:`use`) or when the
      build failed (logged once, with the compiler's message); the selection
      routines then run the XLA search on the CPU as well.
    """
    if not _enabled[0]:
        return False
    with _lock:
        if _state["loaded"] is None and _state["error"] is None:
            try:
                lib = ctypes.cdll.LoadLibrary(_build())
                for target, symbol in _TARGETS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                                platform="cpu")
                _state["loaded"] = lib
            except Exception as e:  # noqa: BLE001 - any failure means: use the XLA search
                _state["error"] = e
                _log.warning("sparsejax: CPU selection kernel unavailable, using the XLA "
                             "search (slower to compile): %s", e)
    return _state["loaded"] is not None


@contextlib.contextmanager
def use(enabled: bool) -> Iterator[None]:
    """Enables or disables the CPU kernel for functions traced inside the block.

    Args:
      enabled: False runs the XLA counting search on every backend.

    Example:
      >>> with use(False):  # doctest: +SKIP
      ...     v = jax.jit(lambda x: select.kth_largest_key([x], 3))(x)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"sparsejax.native.use(enabled) takes True or False, got {enabled!r}.")
    previous = _enabled[0]
    _enabled[0] = enabled
    try:
        yield
    finally:
        _enabled[0] = previous


def enabled() -> bool:
    """Whether traced selections use the CPU kernel (see :func:`use`)."""
    return _enabled[0] and available()


def lowering(ctx: Any, x: Any, k: Any, active: Any) -> Sequence[Any]:
    """MLIR lowering of ``sparsejax.select``'s ``kth_largest_key`` primitive on the CPU.

    The kernel's answer is an int32 vector ``(v, count(keys >= v), count(keys > v))``
    for float32 values (selected by magnitude) or int32 keys in
    ``[-1, 0x7F800000]``, a kept count ``k`` and an ``active`` flag (where false:
    ``(-1, 0, 0)`` at no cost).

    Args:
      ctx: the lowering context (``jax.interpreters.mlir.LoweringRuleContext``).
      x: the keys' MLIR value.
      k: the kept count's MLIR value.
      active: the flag's MLIR value.

    Returns:
      The custom call's results.
    """
    return _lowering("sparsejax_kth_largest_key", ctx, x, k, active)


def pack_lowering(ctx: Any, x: Any, tie: Any) -> Sequence[Any]:
    """MLIR lowering of :func:`sparsejax.ops.compaction.pack_threshold` on the CPU.

    Args:
      ctx: the lowering context.
      x: the float32 tensor's MLIR value.
      tie: the float32 scalar threshold (``|x| >= tie`` is kept).

    Returns:
      ``(bits, ties, values)``: the :class:`sparsejax.ops.compaction.Packed` planes.
    """
    return _lowering("sparsejax_pack_threshold", ctx, x, tie)


def unpack_lowering(ctx: Any, bits: Any, ties: Any, values: Any, tie: Any) -> Sequence[Any]:
    """MLIR lowering of :func:`sparsejax.ops.compaction.unpack` of a threshold pack on the CPU.

    Args:
      ctx: the lowering context.
      bits, ties, values, tie: the :class:`sparsejax.ops.compaction.Packed` fields.

    Returns:
      The dense float32 tensor.
    """
    return _lowering("sparsejax_unpack_threshold", ctx, bits, ties, values, tie)


def custom_call_allowed(ctx: Any) -> bool:
    """Whether a lowering may call a kernel (else it lowers its XLA formulation).

    Not in ``jax.export``, whose artifacts must not name a target that only this
    process registered, nor in a module XLA partitions over several devices:
    a custom call has no partitioning rule, so XLA would gather its operands
    onto every device first.

    Args:
      ctx: the lowering context.

    Returns:
      True where the custom call is the lowering to use.
    """
    return not (ctx.module_context.lowering_parameters.for_export or _partitioned(ctx))


def _partitioned(ctx: Any) -> bool:
    """Whether the module is lowered for XLA to partition over several devices."""
    axes = ctx.module_context.axis_context  # duck-typed: JAX's context classes are private
    manual = getattr(axes, "manual_axes", None)
    if manual is not None:  # inside shard_map: data along the manual axes is local
        return any(size > 1 for name, size in axes.mesh.shape.items() if name not in manual)
    return getattr(axes, "num_devices", 1) > 1  # jit over a mesh; pmap bodies are local


def _lowering(target: str, ctx: Any, *operands: Any) -> Sequence[Any]:
    if _state["loaded"] is None:  # a traced primitive from elsewhere, kernels never built
        raise RuntimeError("sparsejax: the CPU kernels are not built in this process; trace "
                           "with sparsejax.native.use(False) to run the XLA formulation.")
    return jax.ffi.ffi_lowering(target)(ctx, *operands)
