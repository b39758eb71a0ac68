"""Backend hints: what the sparse ops and adapters do only for a compiler's sake, and the switch.

Every hint changes no value; each exists for one compiler behaviour, named
below with the benchmark figure that justifies it (``benchmarks/
bench_training_methods.py`` memory ratios; README, "Benchmarks" and "Memory").

**Ordering (XLA:CPU).** XLA:CPU drops ``optimization_barrier`` before
scheduling, and its scheduler places an operation as early as its operands
allow: a buffer that needs nothing (a zero fill, a masked kernel) is allocated
at the start of the step and held until its use. :func:`live` gives such work
an operand that exists only once some other value does. Where the sparse-op
algebra (:mod:`sparsejax.ops`, :mod:`sparsejax.ops.compaction`) uses them:

* the forward's ``W_s`` is built once the layer's input exists
  (:func:`sparsejax.ops` forward), or every layer's masked kernel is held
  through the forward pass;
* a packed saved activation (``Policy.saved``) is packed in the forward pass
  (the layer's output waits for it, :func:`depends_on`), or the pack runs
  lazily in the backward pass and the dense activation stays alive across the
  network; everything rebuilt from a packed or rematerialised residual, and
  a kernel rebuilt from its threshold, reads ``dY`` (:func:`after`), or XLA
  hoists the rebuild into the forward pass;
* a compacted layer's scatter fills its zeros only once its values exist
  (:func:`zeros_after` in :func:`sparsejax.ops.compaction.put`).

**One saved copy of a shared activation (XLA's common-subexpression merging,
every backend).** :class:`SharedActivations`: layers that read one activation
with cached thresholds (SWAT ``period > 1``) take the first reader's threshold,
so XLA sees one masked copy instead of one per layer (ResNet-18, batch 32,
``swat(0.8, period=20)``: 12.9 MiB less temporary memory in ``jit(grad)``,
1.09x -> 1.03x dense; the whole training step holds 1.00x of dense with it).

Switch: ``SPARSEJAX_BACKEND_HINTS=off`` (or :func:`set_enabled`) turns every
hint off; ``on`` forces them; the default ``auto`` applies the ordering hints
on the CPU backend only, so GPU and TPU compilers schedule the plain math, and
the shared copy everywhere (:func:`sharing_enabled`).

Example:
  >>> x = jnp.arange(3.0)
  >>> bool(live(x))
  True
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from sparsejax.rule import Rule

ENV = "SPARSEJAX_BACKEND_HINTS"
_override: Optional[bool] = None


def set_enabled(value: Optional[bool]) -> None:
    """Turns the hints on (``True``), off (``False``) or back to the default (``None``:
    the environment variable, else on the CPU backend only).

    It affects functions traced after the call: a ``jit`` function already traced
    keeps its compiled program (set it before the first step, or use the
    environment variable)."""
    global _override
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"set_enabled takes True, False or None, got {value!r}.")
    _override = value


def _setting() -> str:
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting not in ("on", "off", "auto"):
        raise ValueError(f"{ENV}={setting!r}; use on, off or auto (the default).")
    return setting


def enabled() -> bool:
    """Whether the ordering hints apply to what is traced now (see the module docstring).

    Raises:
      ValueError: ``SPARSEJAX_BACKEND_HINTS`` is not ``on``, ``off`` or ``auto``.
    """
    if _override is not None:
        return _override
    setting = _setting()
    return setting == "on" or (setting == "auto" and jax.default_backend() == "cpu")


def sharing_enabled() -> bool:
    """Whether :class:`SharedActivations` shares cached thresholds (on unless switched off).

    Raises:
      ValueError: ``SPARSEJAX_BACKEND_HINTS`` is not ``on``, ``off`` or ``auto``.
    """
    if _override is not None:
        return _override
    return _setting() != "off"


def live(dep: jax.typing.ArrayLike) -> jax.Array:
    """A boolean scalar that is always True but, with the hints on, computed from ``dep``.

    ``where(live(dep), x, 0)`` is ``x``, scheduled only once ``dep`` exists.
    Exact: ``0 * finite`` is not folded for floats, and NaN cannot leak, since
    only ``isnan`` of one value of ``dep`` is read. With the hints off it is a
    constant, which the compiler folds away.

    Args:
      dep: any array (the value the work must wait for).

    Returns:
      ``True`` (traced from ``dep`` when the hints are on).
    """
    dep = jnp.asarray(dep)
    if dep.size == 0 or not enabled():
        return jnp.asarray(True)
    return jnp.isnan(dep.reshape(-1)[0]).astype(jnp.float32) * 0.0 == 0.0


def after(dep: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
    """``x``, computed only once ``dep`` exists (with the hints on)."""
    return jnp.where(live(dep), x, jnp.zeros((), x.dtype))


def zeros_after(dep: jax.typing.ArrayLike, dtype) -> jax.Array:
    """A zero scalar of ``dtype`` that, with the hints on, is computed from ``dep``.

    Unlike ``after(dep, zeros)``, which the compiler folds to a constant (both
    branches are 0), this selects between 0 and 1, so a buffer filled from it
    (a scatter's zeros) waits for ``dep``.
    """
    if not enabled():
        return jnp.zeros((), dtype)
    return jnp.where(live(dep), jnp.zeros((), dtype), jnp.ones((), dtype))


def depends_on(arrays: Sequence[Optional[jax.Array]], dtype) -> jax.Array:
    """A zero scalar of ``dtype`` that reads all of ``arrays`` (with the hints on).

    Adding it to a value makes that value wait for ``arrays`` (e.g. a layer's
    output for its packed saved activation). Exact for the same reason as
    :func:`live`: only ``max`` and ``isnan`` of the arrays are read, times 0.
    """
    if not enabled():
        return jnp.zeros((), dtype)
    probe = jnp.float32(0.0)
    for x in arrays:
        if x is None:
            continue
        m = jnp.max(x)
        probe = probe + (jnp.isnan(m).astype(jnp.float32) if jnp.issubdtype(m.dtype, jnp.floating)
                         else m.astype(jnp.float32))
    return (probe * 0.0).astype(dtype)


class SharedActivations:
    """Trace-time record letting layers that read one activation share its saved copy.

    At a ResNet stage boundary a block's output feeds two sparse layers, the next
    block's first conv and its projection shortcut, and each saves the top-K of
    that one tensor for its dW. With exact thresholds (SWAT ``period=1``) both
    layers compute the same threshold from the same tensor and XLA merges the
    two saved copies. With cached thresholds (``period > 1``) each layer reads
    its threshold and refresh flag from its own state: the values are always
    equal (the same tensor, sparsity and step), but XLA cannot know it and keeps
    one masked, transposed copy per layer (the figure: module docstring).
    :meth:`share` hands every later reader of a tensor the first reader's
    threshold and refresh flag, so the copies are one value again; each layer
    still stores the threshold it used, which is then the same in both states.

    Readers are matched by the identity of the value they receive, which is one
    tracer per tensor under ``jit`` (the only place where XLA sees the copies
    together); an eager ``jax.grad`` re-wraps the tensor for every layer, so there
    each layer reads its own (equal) threshold. One instance lives for one model
    call (linen) or one sparsified model (NNX); it holds weak references only,
    so no tracer outlives its trace through it.

    Example:
      >>> shared, x = SharedActivations(), jnp.ones((2, 3))
      >>> first = shared.share(x, TopK(0.8, cached=True), ops.Aux(act_saved=SlotInput(threshold=jnp.float32(1.))))
      >>> float(shared.share(x, TopK(0.8, cached=True), ops.Aux(act_saved=SlotInput(threshold=jnp.float32(2.)))).act_saved.threshold)
      1.0

    References:
      Raihan & Aamodt, NeurIPS 2020 (``topk_period`` in the official code).
    """

    def __init__(self):
        # Weak references only: (tensor, rule, its first reader's threshold and refresh flag).
        self._seen: list[tuple[weakref.ref, Rule, weakref.ref, Optional[weakref.ref]]] = []

    def __reduce__(self):
        # A copied or pickled model starts with an empty record (it only ever
        # describes the trace in progress).
        return SharedActivations, ()

    def share(self, lhs: Any, rule: Any, aux: Any) -> Any:
        """``aux`` with the cached activation threshold of the first reader of ``lhs``.

        Args:
          lhs: the layer's activation (array or tracer; compared by identity).
          rule: the policy's ``act_saved`` rule; only cached ``TopK`` rules with
            a static sparsity (no per-layer ``act_saved.sparsity``, which SWAT-M sets)
            are shared, and only with an equal rule.
          aux: the layer's dynamic inputs (an :class:`sparsejax.ops.Aux`, or ``None``).

        Returns:
          ``aux``, its ``act_saved`` threshold and refresh flag replaced by those of the
          first layer that read ``lhs`` under the same rule, if any (``aux`` itself
          with the hints switched off).
        """
        saved = None if aux is None else aux.act_saved
        if (not sharing_enabled() or not (isinstance(rule, Rule) and rule.cached) or saved is None
                or saved.threshold is None or saved.sparsity is not None):
            return aux
        self._seen = [e for e in self._seen if e[0]() is not None]
        for tensor, seen_rule, threshold, refresh in self._seen:
            if (tensor() is lhs and seen_rule == rule
                    and (refresh is None) == (saved.refresh is None)):
                t, r = threshold(), refresh and refresh()
                if t is None or (refresh is not None and r is None):
                    return aux
                return aux._replace(act_saved=saved._replace(threshold=t, refresh=r))
        try:
            self._seen.append((weakref.ref(lhs), rule, weakref.ref(saved.threshold),
                               None if saved.refresh is None else weakref.ref(saved.refresh)))
        except TypeError:  # a Python scalar: nothing to share
            pass
        return aux
