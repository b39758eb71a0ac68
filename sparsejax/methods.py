"""Sparse-training methods as hashable values: SWAT, STE/SR-STE, meProp, DSG,
and SWAT's forward-operand study (:func:`forward_topk`).

A :class:`Method` is a small frozen dataclass (a static ``jit`` argument, a
dict key) that answers, for every linear layer an adapter finds
(:func:`sparsejax.adapters.sparsify`):

* **which layers** are sparse and at which sparsity (:meth:`Method.plan`,
  computed once from all layers' kernel shapes and call order: uniform, ERK,
  first/last layer dense, include/exclude by module path);
* **which policy** of :mod:`sparsejax.ops` runs the layer and with which
  dynamic inputs (:meth:`Method.policy_aux`): every method is a row of the
  ops' one ``custom_vjp`` algebra, no method owns its own gradient code;
* **which state** the layer keeps between steps (:meth:`Method.init_state`,
  :meth:`Method.update`): cached thresholds and a step counter (SWAT's
  ``period``), the previous kernel (SWAT-M), a step counter for DSG's PRNG
  keys. The adapters store it in an explicit variable collection named
  ``"sparsity"`` (linen) or in :class:`sparsejax.adapters.nnx.SparsityState`
  variables (NNX); nothing lives in hidden globals.

Layers are named by their module path (``"Conv_0"``, ``"ResNetBlock_0/Conv_1"``:
the ``params`` path without ``/kernel``); ``include`` / ``exclude`` are
:class:`sparsejax.paths.PathMatcher` rules (regex, sequence of regexes or a
callable ``(path, None) -> bool``) searched in that module path, ``exclude``
winning.

Training vs evaluation: the adapters run a layer in *training* mode when its
state is mutable (linen ``apply(..., mutable=["sparsity", ...])``; NNX unless
``model.eval()`` was called), updating the state; otherwise the state is read-only and, with ``sparse_eval=True``,
the forward uses the same sparse weights (SWAT evaluates with its top-K
weights, as the official code does), else the layer runs dense. Rules that only
shape the backward pass (SWAT's saved activation, meProp's ``dY``) apply in
read-only calls too, so a gradient taken without the state mutable still follows
the method (only the cached thresholds / counters do not advance); they cost
nothing when no gradient is taken.

:func:`grad_drop` is a plain optax transform (the model is left unmodified).

References:
  Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (SWAT);
  Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
  From Scratch", ICLR 2021 (STE/SR-STE); Sun et al., "meProp: Sparsified Back
  Propagation for Accelerated Deep Learning with Reduced Overfitting", ICML 2017;
  Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019;
  Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
  EMNLP 2017 (gradient drop).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import numbers
import zlib
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from sparsejax import paths, select
from sparsejax.distributions import erk_sparsities
from sparsejax.ops import SAVED, Aux, Policy, Stats
from sparsejax.patterns import NM, Channel, Pattern
from sparsejax.sparsifiers import (Cached, PatternRule, RandomProjection, RowTopK,
                                   SharedColumns, TopK)
from sparsejax.validate import check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
State = dict[str, Array]

logger = logging.getLogger("sparsejax")

# SWAT-M caps every layer's density (Raihan & Aamodt, official code).
MOMENTUM_DENSITY_CAP = 0.99
# How SWAT-M re-shares the budget of layers over the cap (see momentum_budgets).
_REDISTRIBUTIONS = ("official", "proportional")

# Where Method.explain collects why layers stay dense (None: not collecting).
_REASONS: contextvars.ContextVar[Optional[dict[str, str]]] = contextvars.ContextVar(
    "sparsejax_dense_reasons", default=None)


def stays_dense(method: str, path: str, reason: str, *, skipped: bool = False) -> None:
    """Logs (and records for :meth:`Method.explain`) that a layer stays dense.

    Args:
      method: the method's name.
      path: the layer's module path.
      reason: why, e.g. ``"first layer"`` or ``"NM(2, 4) does not fit: ..."``.
      skipped: the method would make the layer sparse but cannot (the layer
        does not fit its pattern): logged at WARNING, like the pruning
        functions' skips; a rule or a user choice (include / exclude, first /
        last layer) is logged at INFO.
    """
    (logger.warning if skipped else logger.info)("%s: %s stays dense (%s)", method, path, reason)
    reasons = _REASONS.get()
    if reasons is not None:
        reasons.setdefault(path, reason)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A linear layer as the adapters see it (static, hashable).

    Attributes:
      path: module path, ``"Block_0/Conv_1"`` (the params path minus ``/kernel``).
      kind: ``"dense"`` (Dense, DenseGeneral, Linear, LinearGeneral), ``"conv"``
        or ``"einsum"``.
      kernel_shape: the kernel's shape.
      out_features: number of output features (product of the kernel's output
        dims): the width meProp's ``k`` and DSG's neuron selection apply to.
      contraction_axes: the kernel axes the layer contracts with its input
        (non-negative, in kernel order): ``(0,)`` for Dense ``(in, out)`` and
        DenseGeneral ``(in, heads, head_dim)``, ``(0, 1)`` for an attention
        output projection ``(heads, head_dim, out)``, ``(2,)`` for Conv ``(h,
        w, in, out)``, the kernel labels in the input and not in the output for
        Einsum. N:M groups run along them, flattened. ``None``: unknown (the
        bare-kernel rule :func:`sparsejax.patterns.default_contraction_axes`).
    """

    path: str
    kind: str
    kernel_shape: tuple[int, ...]
    out_features: int
    contraction_axes: Optional[tuple[int, ...]] = None

    @property
    def size(self) -> int:
        """Number of kernel entries."""
        return math.prod(self.kernel_shape)


def _check_rule(rule: Any, where: str) -> Any:
    if rule is None or callable(rule) or isinstance(rule, str):
        return rule
    if isinstance(rule, (list, tuple)) and all(isinstance(r, str) for r in rule):
        return tuple(rule)
    raise TypeError(f"{where} must be a regex string, a sequence of regex strings or a callable "
                    f"(path, leaf) -> bool, got {rule!r}.")


Check = Callable[[Any, str], Any]
"""A field's rule: ``check(value, where)`` raises an error naming ``where`` (e.g.
``"swat(period=...)"``) and the fix, or returns the value to store (a normalised
one, e.g. a list of regexes as a tuple; ``None`` keeps the value as given)."""


def option(default: Any = dataclasses.MISSING, check: Optional[Check] = None) -> Any:
    """A method field and its validity rule, checked by :class:`Method` on construction.

    Every method validates its fields in one place, ``Method.__post_init__``:
    each field's ``check`` with ``where = "<method name>(<field>=...)"``, then the
    method's :meth:`Method.check` for rules that relate several fields.

    Args:
      default: the field's default (omit for a required field).
      check: ``check(value, where)``: raises naming ``where`` and the fix, or
        returns the value to store (``None``: the value as given). The checks of
        this module: :func:`check_sparsity`, :func:`boolean`, :func:`one_of`,
        :func:`integer`.

    Returns:
      A ``dataclasses.field``.

    Example:
      >>> @dataclasses.dataclass(frozen=True)
      ... class Mine(Method):
      ...     sparsity: float = option(check=check_sparsity)
      ...     period: int = option(1, integer(1))
    """
    return dataclasses.field(default=default, metadata={"check": check})


def boolean(value: Any, where: str) -> None:
    """:func:`option` check: ``True`` or ``False`` (not 0/1, not a string).

    Example:
      >>> boolean("yes", "swat(dense_last=...)")  # raises TypeError
    """
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be True or False, got {value!r}.")


def one_of(values: Sequence[Any], what: str = "") -> Check:
    """:func:`option` check: one of ``values`` (compared by ``==``, bools by identity).

    Args:
      values: the valid values.
      what: what they choose, for the message (``"the forward-side operand"``).

    Returns:
      The check.

    Example:
      >>> one_of(("uniform", "erk"))("global", "swat(distribution=...)")  # raises ValueError
    """
    def check(value: Any, where: str) -> None:
        if not any(value is v if isinstance(v, bool) or isinstance(value, bool) else value == v
                   for v in values):
            why = f" ({what})" if what else ""
            raise ValueError(f"{where} must be one of {', '.join(map(repr, values))}{why}, got "
                             f"{value!r}.")
    return check


def integer(minimum: int, what: str = "", *, optional: bool = False) -> Check:
    """:func:`option` check: an int (not a bool) ``>= minimum`` (or ``None`` if ``optional``).

    Args:
      minimum: the smallest valid value.
      what: what the value means, for the message.
      optional: ``None`` is valid too.

    Returns:
      The check.

    Example:
      >>> integer(1, "steps between refreshes")(0, "swat(period=...)")  # raises ValueError
    """
    def check(value: Any, where: str) -> None:
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            why = f" ({what})" if what else ""
            none = " or None" if optional else ""
            raise ValueError(f"{where} must be an int >= {minimum}{none}{why}, got {value!r}.")
    return check


def _non_negative(what: str) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0.0:
            raise ValueError(f"{where} must be a number >= 0 ({what}), got {value!r}.")
    return check


def _open_unit(what: str) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not 0.0 < value < 1.0:
            raise ValueError(f"{where} must be in (0, 1) ({what}), got {value!r}.")
    return check


def _seed(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} must be an int, got {value!r}.")


def _pattern(value: Any, where: str) -> None:
    if not isinstance(value, Pattern):
        raise TypeError(f"{where} needs a sparsejax.patterns Pattern (NM(2, 4), Unstructured(), "
                        f"Channel(...), Block(...)), got {value!r}.")


def _kept(value: Any, where: str) -> None:
    """meProp's ``k``: an int count >= 1 or a kept fraction in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be an int (entries kept per row) or a fraction in (0, 1), "
                        f"got {value!r}.")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{where} must be >= 1 (entries kept per row), got {value}.")
    elif not 0.0 < value < 1.0:
        raise ValueError(f"{where}: a float k is the kept fraction and must be in (0, 1), got "
                         f"{value}; pass an int for a count.")


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class: a hashable value turning layers into sparse-op policies.

    A method answers three questions, each one hook:

    * **which layers, at which sparsity**: :meth:`sparsities` (each chosen
      layer's sparsity from the kernel shapes) and, optionally,
      :meth:`choose_layers` (which layers, after ``include`` / ``exclude``);
      :meth:`plan` runs both;
    * **which policy** runs a layer: :meth:`policy_aux` (the layer's
      :class:`~sparsejax.ops.Policy` and its dynamic inputs);
    * **what state** it keeps between steps, if any: :meth:`init_state`
      (extending the base state, which holds the layer's ``"sparsity"``) and
      :meth:`update` (and the ``shared`` hooks for state that spans layers,
      SWAT-M's budgets).

    A method is a frozen dataclass: its own fields come first
    (``MyMethod(0.8)``), the base fields below are keyword-only. Declare a field
    with :func:`option` to have it validated on construction; rules that relate
    several fields go in :meth:`check`. Renamed arguments are listed in the
    class attribute ``renamed`` (old name -> replacement) and refused with a
    message naming the replacement.

    Attributes:
      include: optional module-path rule; only matching layers are sparse.
      exclude: optional module-path rule; matching layers stay dense.
      sparse_eval: in evaluation mode (read-only state) run the sparse forward
        (True) or the dense layer (False).
    """

    _: dataclasses.KW_ONLY  # A subclass's own fields come first: MyMethod(0.8).
    include: Any = option(None, _check_rule)
    exclude: Any = option(None, _check_rule)
    sparse_eval: bool = option(True, boolean)

    name: ClassVar[str] = "method"
    renamed: ClassVar[Mapping[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any):
        for old in kwargs.keys() & cls.renamed.keys():
            raise TypeError(f"{cls.name}({old}=...) became {cls.renamed[old]}.")
        return super().__new__(cls)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                value = check(getattr(self, field.name), f"{self.name}({field.name}=...)")
                if value is not None:
                    object.__setattr__(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Rules that relate several fields (each field's own rule is its :func:`option`).

        Raises:
          ValueError: naming the conflicting arguments and the fix.
        """

    # ----------------------------------------------------------------- plan
    def plan(self, layers: Sequence[LayerInfo]) -> dict[str, float]:
        """Sparse layers and their sparsity, from all layers in call order.

        Args:
          layers: every supported layer the model calls, in call order (each path
            once).

        Returns:
          Path -> sparsity (a Python float) for the layers this method makes
          sparse, in call order; the others stay dense. Decisions are logged on
          the ``"sparsejax"`` logger.

        Raises:
          ValueError: when the method cannot apply to a chosen layer (e.g. meProp's
            ``k`` above the layer's width); the message names the layer.
        """
        names = [info.path for info in layers]
        inc = paths.PathMatcher(self.include, "include") if self.include is not None else None
        exc = paths.PathMatcher(self.exclude, "exclude") if self.exclude is not None else None
        for m in (inc, exc):
            if m is not None:
                m.warn_unmatched(names)
        chosen = []
        for info in layers:
            if inc is not None and inc(info.path, None) is None:
                stays_dense(self.name, info.path, "not matched by include")
                continue
            veto = exc(info.path, None) if exc is not None else None
            if veto is not None:
                stays_dense(self.name, info.path, str(veto))
                continue
            chosen.append(info)
        chosen = self.choose_layers(list(layers), chosen)
        plan = self.sparsities({c.path: c.kernel_shape for c in chosen})
        for path, s in plan.items():
            logger.info("%s: %s sparse at %.4f", self.name, path, s)
        return plan

    def explain(self, layers: Sequence[LayerInfo]) -> tuple[dict[str, float], dict[str, str]]:
        """:meth:`plan` plus, for every layer left dense, why.

        Args:
          layers: every supported layer the model calls, in call order.

        Returns:
          ``(plan, reasons)``: the :meth:`plan` and ``path -> reason`` for each
          dense layer (``"first layer"``, ``"excluded by ..."``, ``"NM(2, 4) does
          not fit: ..."``).

        Example:
          >>> plan, why = swat(0.8).explain(layers)
          >>> why["Conv_0"]
          'first layer'
        """
        token = _REASONS.set({})
        try:
            plan = self.plan(layers)
            reasons = _REASONS.get()
        finally:
            _REASONS.reset(token)
        default = f"{self.name} makes no layer sparse" if not plan else f"not chosen by {self.name}"
        return plan, {i.path: reasons.get(i.path, default) for i in layers if i.path not in plan}

    def choose_layers(self, layers: list[LayerInfo], chosen: list[LayerInfo]
                      ) -> list[LayerInfo]:
        """Method-specific filtering of the layers left by include/exclude.

        Args:
          layers: every supported layer, in call order.
          chosen: those ``include`` / ``exclude`` leave, in call order.

        Returns:
          The sparse layers (default: ``chosen``). Report each layer dropped here
          with :func:`stays_dense` (its reason then shows in :meth:`explain` and
          :func:`sparsejax.plan`).
        """
        return chosen

    def sparsities(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
        """Static per-layer sparsity of the sparse layers (path -> kernel shape).

        A pure function of the sparse layers' kernel shapes, so the adapters can
        recompute it at every trace from the state they stored at init.
        """
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    def init_state(self, info: LayerInfo, sparsity: float, kernel: ArrayLike) -> State:
        """Initial per-layer state; every sparse layer stores its ``sparsity``."""
        del info, kernel
        return {"sparsity": jnp.asarray(sparsity, jnp.float32)}

    def init_shared(self, plan: Mapping[str, float]) -> Optional[State]:
        """Initial state shared by all layers (``None``: the method needs none)."""
        del plan
        return None

    def refresh_shared(self, shared: State, sizes: Mapping[str, int],
                       kernels: Optional[Mapping[str, Array]] = None,
                       states: Optional[Mapping[str, State]] = None) -> State:
        """Updates the shared state once per training step, before the layers run.

        Args:
          shared: the shared state.
          sizes: sparse layer path -> kernel size.
          kernels: sparse layer path -> its current kernel, when the adapter can
            see every kernel before the first layer runs (linen); ``None`` otherwise.
          states: sparse layer path -> its per-layer state, with ``kernels``.
        """
        del sizes, kernels, states
        return shared

    def policy_aux(self, info: LayerInfo, sparsity: float, state: State,
                   shared: Optional[State], training: bool
                   ) -> tuple[Optional[Policy], Optional[Aux]]:
        """The layer's policy (``None``: run the dense op) and dynamic inputs.

        Args:
          info: the layer.
          sparsity: its static sparsity from :meth:`sparsities`.
          state: its current state (arrays).
          shared: the shared state, if the method has one.
          training: whether this call trains (state mutable).
        """
        raise NotImplementedError

    def layer_policy(self, info: LayerInfo, sparsity: float) -> Optional[Policy]:
        """The layer's training :class:`~sparsejax.ops.Policy` from a fresh state.

        Builds the state with :meth:`init_state` / :meth:`init_shared` and calls
        :meth:`policy_aux` abstractly (``jax.eval_shape``: no FLOPs), so code that
        reasons about a method without running it (the cost model of
        :func:`sparsejax.analysis.costs.policy_fractions`) sees what it does.

        Args:
          info: the layer.
          sparsity: its sparsity from :meth:`plan`.

        Returns:
          The policy (``None``: the layer runs the dense op).

        Example:
          >>> swat(0.8).layer_policy(info, 0.8).act_saved
          TopK(sparsity=0.8, ties='all')
        """
        found = []

        def trace():
            kernel = jnp.zeros(info.kernel_shape, jnp.float32)
            state = self.init_state(info, sparsity, kernel)
            policy, aux = self.policy_aux(info, sparsity, state,
                                          self.init_shared({info.path: sparsity}), True)
            found.append(policy)
            return aux

        jax.eval_shape(trace)
        return found[0]

    def update(self, info: LayerInfo, state: State, shared: Optional[State], stats: Stats,
               kernel: Array) -> tuple[State, Optional[State]]:
        """New state after a training call, from the op's :class:`~sparsejax.ops.Stats`."""
        del info, stats, kernel
        return state, shared


def _first_last(layers: list[LayerInfo], chosen: list[LayerInfo], dense_first: bool,
                dense_last: bool, name: str) -> list[LayerInfo]:
    drop = {}
    if dense_first and layers:
        drop[layers[0].path] = "first"
    if dense_last and layers:
        drop[layers[-1].path] = "last"
    for c in chosen:
        if c.path in drop:
            stays_dense(name, c.path, f"{drop[c.path]} layer")
    return [c for c in chosen if c.path not in drop]


# --------------------------------------------------------------------- SWAT
_STRUCTURES = {False: None, True: Channel((-2, -1)), "slice": Channel((-2, -1)),
               "filter": Channel((-1,)), "channel": Channel((-2,))}


def momentum_budgets(sizes: Mapping[str, int], scores: Mapping[str, ArrayLike],
                     sparsity: float, cap: float = MOMENTUM_DENSITY_CAP,
                     redistribution: str = "official") -> dict[str, Array]:
    """SWAT-M per-layer sparsities: non-zero budget ∝ mean |momentum|, capped.

    Every layer ``l`` first asks for ``ceil(m_l · (1 − sparsity) · Σ size)``
    non-zeros, ``m_l`` its score (mean |momentum| of its active weights)
    normalised to sum 1 over the layers. A layer asking for more than
    ``cap · size`` is the overflow the two rules handle differently:

    * ``"official"`` (default; the official code's ``sparsity_regrowth`` in
      ``dynamic_sparsity.py``): that layer becomes fully **dense** (``size``
      non-zeros, sparsity 0) and what it asked beyond ``size`` is the residual.
      Rounds follow: while the residual exceeds the number of layers ``L`` (all
      budgeted layers, capped ones included), every layer's count grows by the
      same ``ceil(residual / L)``; a capped layer hands its share straight back
      to the residual, a layer that now passes the cap becomes dense too. The
      rounds stop when the residual is ``<= L`` (that remainder is dropped), when
      the previous round's total already exceeded the global budget (the last
      round stands, so the total may overshoot it by a few weights), or after
      1000 rounds. Counts are integers (int32), as in the official code.
    * ``"proportional"`` (sparsejax's earlier rule): the layer is held at exactly
      ``cap · size`` and the budget left after the capped layers is re-shared in
      proportion to the remaining layers' scores (at most ``L`` rounds), so the
      total is exactly the global budget.

    Both run under ``jit`` (the official rounds as a ``lax.while_loop``).
    All-zero scores give the uniform split (the official code stops with
    "Total Momentum was zero!"). Every layer keeps at least one weight.

    Args:
      sizes: layer path -> kernel size.
      scores: layer path -> non-negative score (traced scalars allowed).
      sparsity: global target in ``[0, 1)``.
      cap: density cap per layer (0.99 in SWAT-M).
      redistribution: ``"official"`` or ``"proportional"`` (see above).

    Returns:
      Layer path -> float32 sparsity scalar.

    Example:
      >>> s = momentum_budgets({"a": 100, "b": 100}, {"a": 3., "b": 1.}, 0.5)
      >>> [round(float(v), 4) for v in s.values()]
      [0.25, 0.75]
      >>> s = momentum_budgets({"a": 10, "b": 100}, {"a": 1., "b": 1.}, 0.8)
      >>> [round(float(v), 4) for v in s.values()]  # "a" asks for 11 > 9.9: dense
      [0.0, 0.89]

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (SWAT-M;
      official code ``dynamic_sparsity.py``); Dettmers & Zettlemoyer, "Sparse
      Networks from Scratch: Faster Training without Losing Performance", 2019
      (momentum redistribution).
    """
    if redistribution not in _REDISTRIBUTIONS:
        raise ValueError(f"redistribution must be one of {_REDISTRIBUTIONS}, got "
                         f"{redistribution!r}.")
    names = list(sizes)
    if not names:
        return {}
    size = jnp.asarray([sizes[n] for n in names], jnp.float32)
    score = jnp.maximum(jnp.stack([jnp.asarray(scores[n], jnp.float32) for n in names]), 0.0)
    score = jnp.where(jnp.sum(score) > 0, score, size)

    if redistribution == "proportional":
        budget = (1.0 - sparsity) * jnp.sum(size)

        def share(capped):
            left = budget - jnp.sum(jnp.where(capped, cap * size, 0.0))
            free = jnp.sum(jnp.where(capped, 0.0, score))
            return jnp.where(capped, cap * size, left * score / jnp.where(free > 0, free, 1.0))

        capped = jnp.zeros(len(names), bool)
        for _ in range(len(names)):
            capped = capped | (share(capped) > cap * size)
        density = jnp.clip(share(capped) / size, 1.0 / size, cap)
        return {n: 1.0 - density[i] for i, n in enumerate(names)}

    # Official rounds, in integer counts. target is a host float (static sizes)
    # when sparsity is; an integer total exceeds it iff it exceeds floor(target).
    n_layers = len(names)
    full = jnp.asarray([sizes[n] for n in names], jnp.int32)
    target = (1.0 - sparsity) * float(sum(sizes[n] for n in names))
    limit = jnp.floor(jnp.asarray(target, jnp.float32)).astype(jnp.int32) \
        if not isinstance(target, float) else jnp.int32(math.floor(target))
    ask = jnp.ceil(score / jnp.sum(score) * jnp.asarray(target, jnp.float32)).astype(jnp.int32)
    over = cap * size

    def cond(c):
        _, _, residual, total, i = c
        return (residual > 0) & (i < 1000) & (total <= limit)

    def body(c):
        count, extra, _, _, i = c
        want = count + extra
        capped = want.astype(jnp.float32) > over
        count = jnp.where(capped, full, want)
        residual = jnp.sum(jnp.where(capped, want - full, 0))
        spread = residual > n_layers
        extra = jnp.where(spread, (residual + n_layers - 1) // n_layers, extra)
        return count, extra, jnp.where(spread, residual, 0), jnp.sum(count), i + 1

    count, *_ = jax.lax.while_loop(cond, body, (ask, jnp.int32(0), jnp.int32(1),
                                                jnp.int32(0), jnp.int32(0)))
    dropped = (full - jnp.maximum(count, 1)).astype(jnp.float32)  # exact 0 for a dense layer
    return {n: dropped[i] / size[i] for i, n in enumerate(names)}


def _momentum_score(kernel: Array, prev_kernel: Array, threshold: Array) -> Array:
    """Mean ``|kernel − prev_kernel|`` over the weights with ``|prev_kernel| >= threshold``.

    With SGD the change is ``lr ·`` the momentum buffer, the same ``lr`` for every
    layer, so after normalising over layers this is SWAT-M's mean |momentum| of
    the active weights (official ``momentum_redistribution``).
    """
    new = jax.lax.stop_gradient(jnp.asarray(kernel, jnp.float32))
    old = jnp.asarray(prev_kernel, jnp.float32)
    active = jnp.abs(old) >= threshold
    delta = jnp.where(active, jnp.abs(new - old), 0.0)
    return jnp.sum(delta) / jnp.maximum(jnp.sum(active), 1)


@dataclasses.dataclass(frozen=True)
class SWAT(Method):
    """SWAT: top-K weights forward, top-K weights and activations saved for backward.

    Per sparse layer with sparsity ``s``: the forward uses ``W_s = TopK(W, s)``
    (whole-tensor magnitude top-K) on the dense input A; the backward computes
    ``dA`` with ``W_s`` and ``dW`` with ``TopK(A, s)`` (one threshold over the
    whole batch tensor), dense over every position so pruned weights keep
    learning (straight-through); the output gradient is never sparsified, so the
    bias gradient is dense. BatchNorm and biases are dense and outside the
    budget. Top-K keeps ``|x| >=`` the magnitude of the k-th largest entry, as
    the paper states it (``TopK(ties="all")``: ties at the threshold are all
    kept, which needs no tie-resolution pass). Evaluation (read-only state) uses the top-K weights unless
    ``sparse_eval=False``.

    Args:
      sparsity: weight and activation sparsity ``s`` in ``[0, 1)`` (the global
        target for ``"erk"`` / ``"momentum"``).
      distribution: ``"uniform"`` (SWAT-U); ``"erk"`` (SWAT-ERK: Erdős–Rényi-
        Kernel budgets via :func:`sparsejax.distributions.erk_sparsities`);
        ``"momentum"`` (SWAT-M: each step every layer's non-zero budget is
        proportional to the mean |momentum| of its active weights; a layer over
        99% density becomes dense and the excess is shared equally, see
        :func:`momentum_budgets` and ``redistribution``). The momentum is read as
        the optimizer's last update, ``|W_{t+1} − W_t|`` on the weights active
        at step ``t`` (for SGD ``ΔW = −lr · momentum`` with one ``lr`` for every
        layer, so the proportions are the momentum's); each layer keeps ``W_t``
        and its threshold in its state, and the linen adapter scores every
        layer with the current kernels before the first layer of step ``t + 1``
        runs, so step ``t + 1`` uses the budgets of step ``t``'s momentum, as the
        official code (which re-budgets right after ``optimizer.step()``). The
        NNX adapter cannot see every kernel before its first layer runs and
        scores ``|W_t − W_{t−1}|`` instead: one step behind. No optimizer
        plumbing is needed. Budgets reach a cached layer (``period > 1``) at its
        next refresh, as in the official conv layers.
      structured: ``False``: unstructured weights. ``True``/``"slice"``: score
        each (output filter, input channel) kernel slice of a conv by L1 and keep
        the top ``ceil((1 − s)·K·C)`` slices; ``"filter"``/``"channel"``: whole
        output filters / input channels, which the ops compact into smaller dense
        forward and dA convolutions. Activations stay unstructured top-K; Dense
        layers stay unstructured.
      period: recompute the exact thresholds every ``period`` steps and reuse the
        cached ones in between (the official ``topk_period``: 10–20 on CIFAR);
        ``1`` = exact top-K every step. Which layers cache is ``cache``'s
        choice. The realised sparsity between refreshes is reported by the
        monitor. Refresh counter: each cached layer counts its own training calls
        (the global step, for a layer called once per step) and refreshes when
        ``count % period == 0``; the official code refreshes when the batch
        index *within the epoch* is a multiple of ``period``, so its phase
        restarts each epoch. On CIFAR-10 (391 batches per epoch) at period 20
        that is 20 refreshes per epoch against 19.55 here (3,000 against 2,933
        over 150 epochs) and a mean threshold age of 9.37 against 9.5 steps; at
        period 10, 40 against 39.1. Both refresh at step 0 and keep the same
        threshold between refreshes, so the difference is one shorter window
        per epoch and no counter option is offered. Layers that read one activation at the same
        sparsity (a block's output feeding conv1 and the projection shortcut)
        share its cached threshold under ``jit``, so they save one copy of it
        (:class:`sparsejax.adapters.common.SharedActivations`). The cache is per
        layer: a layer called more than once per step (shared weights) advances
        its counter once per call and caches its last call's activation
        threshold, so keep such layers at ``period=1`` (or exclude them).
      cache: with ``period > 1``, ``"conv"`` (default, the official code: its
        conv layer reuses the cached weight and activation thresholds between
        refreshes while its linear layer re-selects an exact top-K every batch)
        caches convolutions only: Dense, DenseGeneral and Einsum layers select
        exactly every step and keep no threshold state. ``"all"`` caches every
        layer (cheaper selection, but a dense layer's kept fraction drifts
        between refreshes: at period 2 one kept 10.6% of W and 21.9% of A at a
        10% target).
      dense_first: keep the first layer (in call order) dense. ``None``
        (default) follows the official configs: dense for SWAT-U (the
        ``unstructured_constant_*`` configs set ``sparsify_first_layer: False``),
        sparse and inside the budget for SWAT-ERK and SWAT-M (every
        ``unstructured_erdos_renyi_kernel_*`` and ``unstructured_momentum_*``
        config sparsifies the first and the last layer). ``True`` keeps it dense
        and outside the ERK / momentum budget.
      dense_last: keep the last layer dense (the CIFAR configs keep the last FC
        sparse, so the default is False).
      redistribution: SWAT-M only: how the budget of layers over the 99% cap is
        re-shared (:func:`momentum_budgets`). ``"official"`` (default, the
        official ``sparsity_regrowth``): a layer over the cap becomes dense and
        the excess is added in equal ``ceil(residual / #layers)`` shares, in
        rounds, until the residual is at most one weight per layer.
        ``"proportional"`` (sparsejax's earlier rule): the layer is held at 99%
        density and the rest is re-shared in proportion to the scores, so the
        total is exact. They agree while no layer reaches the cap.
      include: module-path rule of the layers to sparsify (default: all).
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the top-K weights (True) or dense (False).
      sample_size: ``None`` = exact activation top-K. An int estimates each
        activation threshold from an evenly strided sample of that many entries
        (Spartan's monitor idea): one cheap pass instead of ~20 counting passes
        over the batch tensor, at the price of an approximate kept count; the
        realised activation sparsity is reported by the monitor. Weights stay
        exact.
      straight_through: ``True`` (the paper): ``dW`` is dense over every
        position, so pruned weights keep learning and can return. ``False``:
        pruned weights get a zero gradient (``dW`` masked like ``W``, the true
        gradient of the masked layer); with ``structured="filter"`` or
        ``"channel"`` the ``dW`` convolution is then compacted too, so all three
        GEMMs (forward, dA, dW) run at the kept size instead of two. Pruned
        weights can still return when the selection changes, since the kernel
        is re-scored every step, but they no longer accumulate gradient.
      saved: how each saved activation is kept until the backward pass
        (``Policy.saved``): ``"auto"`` (default: bits + kept values, about a
        quarter of the dense bytes at 80%, wherever the kept count is static,
        i.e. ``period=1``, uniform or ERK, no ``sample_size``; a masked dense
        copy otherwise), ``"packed"`` (always packed; other settings raise),
        ``"masked"`` (never packed: no pack/unpack work) or ``"remat"``
        (recomputed in the backward pass from its producer's inputs, which a
        BatchNorm model keeps anyway). The kernels save only their threshold.
        Figures per format: the README's benchmark table.

    Earlier names ``pack_saved=True`` / ``remat_saved=True`` raise, naming
    ``saved=``.

    Example:
      >>> method = swat(0.8, period=20)
      >>> model = sparsify(zoo.get_model("resnet18"), method)
      >>> swat(0.9, distribution="erk")                    # first + last layer in the budget
      >>> swat(0.9, distribution="momentum", period=20)    # SWAT-M as the official configs

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (and its
      official code, github.com/AamirRaihan/SWAT); Evci et al., "Rigging the
      Lottery: Making All Tickets Winners", ICML 2020 (ERK); Dettmers &
      Zettlemoyer, "Sparse Networks from Scratch: Faster Training without Losing
      Performance", 2019 (momentum redistribution).
    """

    sparsity: float = option(check=check_sparsity)
    _: dataclasses.KW_ONLY
    distribution: str = option("uniform", one_of(("uniform", "erk", "momentum")))
    structured: Any = option(False, one_of(tuple(_STRUCTURES), "kernel slices (True = 'slice'), "
                                                               "whole filters or channels"))
    period: int = option(1, integer(1, "steps between exact top-K refreshes; 1 = exact top-K "
                                       "every step"))
    cache: str = option("conv", one_of(("conv", "all"), "with period > 1, 'conv' caches only "
                                                        "convolutions, as the official code"))
    dense_first: Optional[bool] = option(None, lambda v, where: None if v is None
                                         else boolean(v, where))
    dense_last: bool = option(False, boolean)
    redistribution: str = option("official", one_of(_REDISTRIBUTIONS, "SWAT-M's re-share of "
                                                                      "capped budgets"))
    sample_size: Optional[int] = option(None, integer(1, "entries sampled per threshold",
                                                      optional=True))
    straight_through: bool = option(True, boolean)
    saved: str = option("auto", one_of(SAVED))

    name: ClassVar[str] = "swat"
    renamed: ClassVar[Mapping[str, str]] = {
        "pack_saved": "swat(saved='packed'); the default saved='auto' already packs wherever "
                      "the kept count is static",
        "remat_saved": "swat(saved='remat')"}

    def check(self):
        if self.structured is not False and self.distribution == "momentum":
            raise ValueError("structured SWAT supports distribution='uniform' or 'erk'; SWAT-M "
                             "(distribution='momentum') is unstructured.")
        if self.saved == "packed" and (self.period > 1 or self.sample_size is not None
                                       or self._momentum):
            raise ValueError(
                f"swat(saved='packed') packs each saved activation into a fixed number of value "
                f"slots, so its kept count must be known when tracing: period=1, no sample_size, "
                f"distribution 'uniform' or 'erk'; got period={self.period}, sample_size="
                f"{self.sample_size}, distribution={self.distribution!r}. With cached, sampled "
                f"or momentum budgets use saved='remat' (or 'auto', which keeps those masked).")

    @property
    def _momentum(self) -> bool:
        return self.distribution == "momentum"

    @property
    def first_dense(self) -> bool:
        """Whether the first layer stays dense: ``dense_first``, or when it is ``None``
        the official configs' choice (SWAT-U: dense; SWAT-ERK and SWAT-M: sparse)."""
        if self.dense_first is not None:
            return self.dense_first
        return self.distribution == "uniform"

    def _cached(self, info: LayerInfo) -> bool:
        """Whether ``info`` reuses cached thresholds between refreshes."""
        return self.period > 1 and (self.cache == "all" or info.kind == "conv")

    def choose_layers(self, layers, chosen):
        chosen = _first_last(layers, chosen, self.first_dense, self.dense_last, self.name)
        if self.structured is not False:
            for c in chosen:
                if c.kind != "conv":
                    logger.info("%s: %s is a %s layer: unstructured top-K weights (structured=%r "
                                "applies to convolutions)", self.name, c.path, c.kind,
                                self.structured)
        return chosen

    def sparsities(self, shapes):
        if self.distribution == "erk":
            return erk_sparsities(shapes, float(self.sparsity))
        return {p: float(self.sparsity) for p in shapes}

    def init_state(self, info, sparsity, kernel):
        state = super().init_state(info, sparsity, kernel)
        if self._cached(info):
            state.update(step=jnp.zeros((), jnp.int32), w_threshold=jnp.zeros((), jnp.float32),
                         a_threshold=jnp.zeros((), jnp.float32))
        if self._momentum:
            # W_t and the threshold of step t: SWAT-M scores |W_{t+1} - W_t| on |W_t| >= it.
            state["prev_kernel"] = jnp.asarray(kernel)
            state.setdefault("w_threshold", jnp.zeros((), jnp.float32))
        return state

    def init_shared(self, plan):
        if not self._momentum:
            return None
        return {"score": {p: jnp.zeros((), jnp.float32) for p in plan},
                "sparsity": {p: jnp.asarray(s, jnp.float32) for p, s in plan.items()}}

    def refresh_shared(self, shared, sizes, kernels=None, states=None):
        if not self._momentum:
            return shared
        score = shared["score"]
        if kernels is not None and states is not None:
            # The current step's momentum: W_{t+1} - W_t is the optimizer's last update.
            score = {p: _momentum_score(kernels[p], states[p]["prev_kernel"],
                                        states[p]["w_threshold"]) for p in sizes}
        budgets = momentum_budgets(sizes, score, self.sparsity,
                                   redistribution=self.redistribution)
        # No update seen yet (the first step): keep the initial budgets, as the
        # official code trains its first batch with them.
        seen = sum(jnp.asarray(score[p], jnp.float32) for p in sizes) > 0
        return {"score": score,
                "sparsity": {p: jnp.where(seen, budgets[p], shared["sparsity"][p])
                             for p in budgets}}

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        pattern = _STRUCTURES[self.structured]
        cached = self._cached(info)
        kw = {}
        if pattern is not None and info.kind == "conv":
            w_rule = PatternRule(pattern, sparsity)
        elif cached:
            w_rule = Cached(sparsity)
            kw["w_threshold"] = state["w_threshold"]
        else:
            w_rule = TopK(sparsity, ties="all")
        # The saved-activation rule only shapes the backward pass, so it is set in
        # read-only calls too: a gradient taken through an evaluation call still
        # follows SWAT (nothing is computed for it when no gradient is taken).
        a_rule = (Cached(sparsity, sample_size=self.sample_size) if cached
                  else TopK(sparsity, sample_size=self.sample_size, ties="all"))
        if cached:
            kw["a_threshold"] = state["a_threshold"]
        if training and cached:
            refresh = state["step"] % self.period == 0
            kw["a_refresh"] = refresh
            if isinstance(w_rule, Cached):
                kw["w_refresh"] = refresh
        if self._momentum:
            s = shared["sparsity"][info.path]
            if not isinstance(w_rule, Cached) or training:
                kw["w_sparsity"] = s
            if not isinstance(a_rule, Cached) or training:
                kw["a_sparsity"] = s
        return (Policy(weight=w_rule, act_saved=a_rule, straight_through=self.straight_through,
                       saved=self.saved),
                Aux(**kw))

    def update(self, info, state, shared, stats, kernel):
        state = dict(state)
        if self._momentum:
            # W_t - W_{t-1} on |W_{t-1}| >= its threshold: the previous step's momentum,
            # used by refresh_shared only when the adapter passes no kernels (NNX).
            score = _momentum_score(kernel, state["prev_kernel"], state["w_threshold"])
            state["prev_kernel"] = jnp.asarray(kernel, state["prev_kernel"].dtype)
            state["w_threshold"] = stats.w_threshold
            shared = {"score": {**shared["score"], info.path: score}, "sparsity": shared["sparsity"]}
            state["sparsity"] = shared["sparsity"][info.path]
        if self._cached(info):
            state.update(step=state["step"] + 1, w_threshold=stats.w_threshold,
                         a_threshold=stats.a_threshold)
        return state, shared


swat = SWAT


# ---------------------------------------------------------------------- STE
@dataclasses.dataclass(frozen=True)
class STE(Method):
    """STE / SR-STE: forward with the masked weight, dense gradient to the dense weight.

    Every step the mask is recomputed from the current dense weights (N:M groups
    along each layer's flattened contraction dimension, read from the layer:
    the input axis of Dense / Conv kernels, axis 0 of a DenseGeneral ``(in,
    heads, head_dim)``, axes ``(0, 1)`` of an attention output projection
    ``(heads, head_dim, out)``, the contracted labels of an Einsum; see
    :class:`sparsejax.patterns.NM`); the backward passes the
    gradient of the masked weight straight through to all of W. ``decay > 0``
    is SR-STE: ``λ · (1 − mask) · W`` is added to the gradient of the pruned
    weights. Layers that do not fit the pattern (e.g. a first conv with 3 input
    channels for 2:4) stay dense, with the reason logged.

    Args:
      pattern: a :mod:`sparsejax.patterns` value: ``NM(2, 4)`` (default),
        ``Unstructured()``, ``Channel(...)``, ``Block(...)``.
      sparsity: required for patterns that do not fix it (all but N:M).
      decay: SR-STE's λ (``0`` = plain STE).
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the masked weights (True) or dense (False).

    Example:
      >>> ste(NM(2, 4), decay=2e-4)            # SR-STE 2:4
      >>> ste(Unstructured(), sparsity=0.8)    # unstructured STE

    References:
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", ICLR 2021; Bengio et al., "Estimating or Propagating
      Gradients Through Stochastic Neurons", 2013 (straight-through estimator).
    """

    pattern: Pattern = option(NM(2, 4), _pattern)
    _: dataclasses.KW_ONLY
    sparsity: Optional[float] = option(None, lambda v, where: None if v is None
                                       else check_sparsity(v, where))
    decay: float = option(0.0, _non_negative("SR-STE's λ; 0 = plain STE"))

    name: ClassVar[str] = "ste"

    def check(self):
        if self.pattern.fixed_sparsity is not None:
            if self.sparsity is not None:
                raise ValueError(f"{self.pattern!r} fixes its sparsity "
                                 f"({self.pattern.fixed_sparsity}); drop sparsity={self.sparsity}.")
        elif self.sparsity is None:
            raise ValueError(f"ste({self.pattern!r}) needs sparsity=... in [0, 1), e.g. "
                             f"ste(Unstructured(), sparsity=0.8).")

    def choose_layers(self, layers, chosen):
        kept = []
        for c in chosen:
            reason = self.pattern.along(c.contraction_axes).ineligible(c.kernel_shape)
            if reason:
                stays_dense(self.name, c.path, f"{self.pattern!r} does not fit: {reason}",
                            skipped=True)
            else:
                kept.append(c)
        return kept

    def sparsities(self, shapes):
        s = self.pattern.fixed_sparsity if self.sparsity is None else self.sparsity
        return {p: float(s) for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        rule = PatternRule(self.pattern.along(info.contraction_axes),
                           None if self.pattern.fixed_sparsity is not None
                           else sparsity)
        return Policy(weight=rule, weight_decay_pruned=float(self.decay),
                      straight_through=True), None


ste = STE


# ------------------------------------------------------------------- meProp
@dataclasses.dataclass(frozen=True)
class MeProp(Method):
    """meProp: keep the top-k output gradients of each row in the backward pass.

    The forward is unchanged. In the backward of every hidden linear layer each
    row of ``dY`` (one example; one example × position for a conv) keeps its
    ``k`` largest magnitudes, and ``dA``/``dW`` use that sparse ``dY``; the bias
    gradient uses the dense ``dY``. The last layer (the classifier) stays dense.

    Args:
      k: an int (entries kept per row; larger than a layer's output width is an
        error naming the layer) or a float in (0, 1) (the kept fraction of each
        layer's width, rounded up).
      unified: one shared set of ``k`` output columns for the whole batch, chosen
        by ``Σ_batch |dY|``, so the backward runs as smaller dense GEMMs. On a
        convolution the columns are output channels, shared by every example and
        position: far more aggressive than per-example meProp, since only ``k``
        filters get a gradient and ``dA`` passes through only those channels, so
        in a deep residual net the early layers receive a small fraction of the
        dense gradient and a learning rate tuned for dense training can overshoot
        (use a smaller one, a larger ``k``, or per-example meProp there).
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.

    Returns:
      A hashable :class:`MeProp` method (the forward, hence evaluation, is
      dense: the method only changes the backward pass).

    Example:
      >>> meprop(80)                 # MNIST MLP 784-500-500-10, k = 80
      >>> meprop(0.2, unified=True)  # keep 20% of the columns

    References:
      Sun et al., "meProp: Sparsified Back Propagation for Accelerated Deep
      Learning with Reduced Overfitting", ICML 2017; Sun et al., "Training
      Simplification and Model Simplification for Deep Learning: A Minimal
      Effort Back Propagation Method", IEEE TKDE 2018 (unified meProp).
    """

    k: Any = option(check=_kept)
    _: dataclasses.KW_ONLY
    unified: bool = option(False, boolean)

    name: ClassVar[str] = "meprop"

    def kept(self, width: int) -> int:
        """Kept gradient entries per row for a layer with ``width`` output features."""
        if isinstance(self.k, numbers.Integral):
            return int(self.k)
        return max(1, math.ceil(round(self.k * width, 9)))

    def choose_layers(self, layers, chosen):
        chosen = _first_last(layers, chosen, False, True, self.name)
        for c in chosen:
            if self.kept(c.out_features) > c.out_features:
                raise ValueError(f"meprop(k={self.k}) keeps more gradient entries than layer "
                                 f"{c.path!r} has output features ({c.out_features}); use k <= "
                                 f"{c.out_features}, a fraction, or exclude={c.path!r}.")
        return chosen

    def sparsities(self, shapes):
        # Dropped fraction of dY per row, for reporting only (int k: relative to the
        # kernel's last dim); the kept count itself comes from LayerInfo.out_features.
        return {p: 1.0 - self.kept(s[-1]) / s[-1] if isinstance(self.k, numbers.Integral)
                else 1.0 - float(self.k) for p, s in shapes.items()}

    def policy_aux(self, info, sparsity, state, shared, training):
        # Backward-only: read-only (evaluation) calls get the rule too, so a
        # gradient through them still follows meProp; the forward is unchanged.
        k = self.kept(info.out_features)
        rule = SharedColumns(k) if self.unified else RowTopK(k)
        return Policy(grad_out=rule), None


meprop = MeProp


# ---------------------------------------------------------------------- DSG
@dataclasses.dataclass(frozen=True)
class DSG(Method):
    """DSG: per row, compute only the output neurons a random projection ranks highest.

    Each output neuron's pre-activation is estimated with a sparse ternary random
    projection (Johnson–Lindenstrauss dimension for ``epsilon``) and every row
    (sample, or sample × position for a conv) keeps the top ``1 − sparsity``
    neurons, scored as if followed by a ReLU; the output is zero elsewhere and
    the backward reuses the same mask on ``dY``. The projection is redrawn every
    training step from a key folded from ``seed``, the layer path and the
    layer's step counter (state ``"step"``). The last layer (the classifier)
    stays dense.

    Conv → BN → ReLU models: DSG reorders layers to conv → ReLU → BN and
    re-applies the mask after BN ("double mask"), which needs a model change.
    Applied to an unmodified model this adapter applies the *single* mask at the
    conv output only: BN then shifts the dropped neurons to ``β − μ·γ/σ`` and the
    following ReLU may re-activate them, so the sparsity after BN is lower than
    ``sparsity`` (the memory saving of the paper's ordering is not reproduced).

    Args:
      sparsity: fraction γ of output neurons dropped per row, in ``[0, 1)``.
      epsilon: JL distortion in (0, 1).
      seed: base seed of the projections.
      include: module-path rule of the layers to sparsify.
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the selection too (True) or dense (False).

    Example:
      >>> dsg(0.8)

    References:
      Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
    """

    sparsity: float = option(check=check_sparsity)
    _: dataclasses.KW_ONLY
    epsilon: float = option(0.5, _open_unit("Johnson–Lindenstrauss distortion; DSG uses 0.5"))
    seed: int = option(0, _seed)

    name: ClassVar[str] = "dsg"

    def choose_layers(self, layers, chosen):
        return _first_last(layers, chosen, False, True, self.name)

    def sparsities(self, shapes):
        return {p: float(self.sparsity) for p in shapes}

    def init_state(self, info, sparsity, kernel):
        state = super().init_state(info, sparsity, kernel)
        state["step"] = jnp.zeros((), jnp.int32)
        return state

    def key(self, info: LayerInfo, step: ArrayLike) -> Array:
        """The layer's projection key at ``step``: ``fold_in(fold_in(seed, crc32(path)), step)``."""
        layer = zlib.crc32(info.path.encode()) & 0x7FFFFFFF
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), layer), step)

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        policy = Policy(out=RandomProjection(sparsity, float(self.epsilon), relu=True))
        return policy, Aux(key=self.key(info, state["step"]))

    def update(self, info, state, shared, stats, kernel):
        return {**state, "step": state["step"] + 1}, shared


dsg = DSG


# -------------------------------------------------------------- forward top-K
# The forward-side operands forward_topk can sparsify.
FORWARD_OPERANDS = ("activations", "weights")


@dataclasses.dataclass(frozen=True)
class ForwardTopK(Method):
    """SWAT's sensitivity study: sparsify one forward-side operand of every chosen layer.

    Each sparse layer applies a whole-tensor magnitude top-K (SWAT's rule,
    ``TopK(sparsity, ties="all")``: every entry with ``|x| >=`` the k-th largest
    magnitude is kept) to one operand of its forward pass; everything else is
    dense:

    * ``operand="activations"``: the layer multiplies ``TopK(A)`` (its input
      ``A ⊙ mask``, one threshold over the whole batch tensor) with the dense W;
      ``dA`` is masked by the same mask (the true gradient of
      ``op(A ⊙ mask, W)`` for the mask held fixed) and ``dW`` uses the sparse A
      (``Policy(act=TopK(s))``). After a ReLU with more than ``sparsity`` zeros
      no non-zero is dropped.
    * ``operand="weights"``: the forward and ``dA`` use ``TopK(W)``; ``dW`` is
      computed with the dense A at every position (straight-through), so pruned
      weights keep learning (``Policy(weight=TopK(s), straight_through=True)``:
      the same math as ``ste(Unstructured(), sparsity=s)``).

    The paper's Section 3 compares these forward-side operands with the
    backward-side ones (SWAT's saved activations, :class:`SWAT`). Layers are
    chosen as in SWAT-U: the first layer (in call order) stays dense by default.
    Evaluation (read-only state) applies the same top-K unless
    ``sparse_eval=False``.

    Args:
      sparsity: fraction of the operand removed, in ``[0, 1)``, the same for
        every sparse layer.
      operand: ``"activations"`` (the layer's input A) or ``"weights"`` (W).
      dense_first: keep the first layer dense (the SWAT-U configs).
      dense_last: keep the last layer dense.
      include: module-path rule of the layers to sparsify (default: all).
      exclude: module-path rule of layers to keep dense.
      sparse_eval: evaluate with the top-K operand (True) or dense (False).

    Raises:
      ValueError: ``sparsity`` outside ``[0, 1)`` (or NaN), or an unknown ``operand``.

    Example:
      >>> model = sparsify(zoo.get_model("resnet18"), forward_topk(0.8))
      >>> forward_topk(0.9, operand="weights")    # forward weights only

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020
      (Section 3, the sensitivity of forward- and backward-side operands).
    """

    sparsity: float = option(check=check_sparsity)
    _: dataclasses.KW_ONLY
    operand: str = option("activations", one_of(FORWARD_OPERANDS,
                                                "the forward-side operand to sparsify"))
    dense_first: bool = option(True, boolean)
    dense_last: bool = option(False, boolean)

    name: ClassVar[str] = "forward_topk"

    def choose_layers(self, layers, chosen):
        return _first_last(layers, chosen, self.dense_first, self.dense_last, self.name)

    def sparsities(self, shapes):
        return {p: float(self.sparsity) for p in shapes}

    def policy_aux(self, info, sparsity, state, shared, training):
        if not (training or self.sparse_eval):
            return None, None
        rule = TopK(sparsity, ties="all")  # SWAT's rule: |x| >= the k-th largest magnitude.
        if self.operand == "weights":
            return Policy(weight=rule, straight_through=True), None
        return Policy(act=rule), None


forward_topk = ForwardTopK


# -------------------------------------------------------------------- dense
@dataclasses.dataclass(frozen=True)
class Dense(Method):
    """The dense baseline, so experiment code can treat every run alike.

    :func:`sparsejax.adapters.sparsify` with it returns a model that runs
    exactly like the original and adds no state.

    Example:
      >>> model = sparsify(zoo.get_model("refcnn"), dense())
    """

    name: ClassVar[str] = "dense"

    def choose_layers(self, layers, chosen):
        return []

    def sparsities(self, shapes):
        return {}

    def policy_aux(self, info, sparsity, state, shared, training):
        return None, None


dense = Dense


# ---------------------------------------------------------------- grad drop
class GradDropState(NamedTuple):
    """State of :func:`grad_drop`: the step count."""

    count: Array


def grad_drop(sparsity: float, *, include: Any = None,
              exclude: Any = None) -> optax.GradientTransformation:
    """Weight-gradient drop: zero the smallest-magnitude fraction of each dW.

    Put it first in the optimizer chain (before momentum / the optimizer), e.g.
    ``optax.chain(grad_drop(0.99), optax.sgd(0.1, momentum=0.9))``; the model
    stays unmodified. Each selected leaf keeps exactly its
    ``ceil((1 − sparsity) · size)`` largest-magnitude gradient entries (one
    :func:`sparsejax.select.select_topk` per leaf). Leaves are selected like the
    pruning functions (default: floating kernels with ``ndim >= 2``; ``include`` /
    ``exclude`` regexes on ``"Dense_0/kernel"``-style paths); others pass through.

    Args:
      sparsity: fraction of each selected gradient zeroed, in ``[0, 1)``.
      include: optional path rule replacing the default selection.
      exclude: optional path rule of leaves left untouched.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> tx = optax.chain(grad_drop(0.9), optax.sgd(0.1, momentum=0.9))

    References:
      Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
      EMNLP 2017.
    """
    check_sparsity(sparsity, "grad_drop(sparsity=...)")

    def init_fn(params):
        del params
        return GradDropState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        chosen = set(paths.selected_paths(updates, include, exclude))
        pairs, treedef = paths.flatten(updates)
        out = []
        for path, g in pairs:
            if path in chosen:
                [m] = select.select_topk([select.magnitude_keys(g)], select.keep_count(sparsity, g.size))
                g = jnp.where(m, g, jnp.zeros((), g.dtype))
            out.append(g)
        return jax.tree_util.tree_unflatten(treedef, out), GradDropState(count=state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)
