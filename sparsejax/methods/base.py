"""The method protocol: :class:`Method`, :class:`LayerInfo`, field options and their checks."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import numbers
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from sparsejax import paths
from sparsejax.ops import Aux, Policy, Stats

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

logger = logging.getLogger("sparsejax")

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


def layer_state(cls: type) -> type:
    """Class decorator of a method's per-layer state: a frozen dataclass and a JAX pytree.

    Every field is a pytree of arrays (a leaf of ``jit``, ``vmap``, the
    adapters' variables and checkpoints); a field left ``None`` is one this
    layer does not use (SWAT keeps thresholds only for layers that cache them).

    Args:
      cls: a subclass of :class:`LayerState` adding the method's fields, each
        with a default (``None`` for fields only some layers use).

    Returns:
      ``cls`` as a frozen dataclass registered with ``jax.tree_util``.

    Example:
      >>> @layer_state
      ... class CountState(LayerState):
      ...     step: Optional[Array] = None
      >>> CountState(sparsity=jnp.float32(0.8), step=jnp.int32(0)).replace(step=jnp.int32(1))
    """
    if not (isinstance(cls, type) and issubclass(cls, LayerState)):
        raise TypeError(f"@layer_state decorates a subclass of LayerState, got {cls!r}.")
    return _pytree_dataclass(cls)


def _pytree_dataclass(cls: type) -> type:
    """``cls`` as a frozen dataclass whose fields are all pytree children."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    return jax.tree_util.register_dataclass(
        cls, data_fields=[f.name for f in dataclasses.fields(cls)], meta_fields=[])


@_pytree_dataclass
class LayerState:
    """A sparse layer's method state (the base of every method's state type).

    The adapters store it between steps (one variable per field that is not
    ``None``: the linen ``"sparsity"`` collection, NNX
    :class:`~sparsejax.adapters.nnx.SparsityState` variables) and find sparse
    layers by its ``sparsity``. A method with more state subclasses it with
    :func:`layer_state` and returns it from :meth:`Method.init_state`.

    Attributes:
      sparsity: the layer's sparsity (a float32 scalar; SWAT-M's budget moves it).

    Example:
      >>> state = Method.init_state(swat(0.8), info, 0.8, kernel)
      >>> state.sparsity, state.replace(sparsity=jnp.float32(0.9)).sparsity
    """

    sparsity: Array

    def replace(self, **changes: Any) -> "LayerState":
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def fields(self) -> dict[str, Any]:
        """Field name -> value of every field that is not ``None`` (what the adapters store)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    # The state was a dict before it was typed: its dict spellings name the replacement.
    def __getitem__(self, key: str) -> Any:
        raise TypeError(f"method state is a typed {type(self).__name__} (a LayerState dataclass), "
                        f"not a dict: read state.{key} instead of state[{key!r}], and build a new "
                        f"one with state.replace({key}=...).")

    def keys(self) -> Any:
        raise TypeError(f"method state is a typed {type(self).__name__} (a LayerState dataclass), "
                        "not a dict: extend it by subclassing LayerState with @layer_state "
                        "(e.g. CountState(**super().init_state(...).fields(), step=...)); "
                        "state.fields() lists its values.")


State = LayerState  # the name the hooks' annotations used when the state was a dict


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
        this package: :func:`~sparsejax.validate.check_sparsity`, :func:`boolean`, :func:`one_of`,
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
      (a :class:`LayerState`, or a subclass of it made with :func:`layer_state`
      holding the method's own fields, named by the class attribute
      ``state_type``) and :meth:`update` (and the ``shared`` hooks for state
      that spans layers, SWAT-M's budgets).

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
    state_type: ClassVar[type] = LayerState  # what init_state returns (a @layer_state class)

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
    def init_state(self, info: LayerInfo, sparsity: float, kernel: ArrayLike) -> LayerState:
        """Initial per-layer state: a :class:`LayerState` holding the layer's ``sparsity``.

        A method with more state returns its own :func:`layer_state` subclass
        and names it in ``state_type`` (the adapters rebuild the state from
        their stored variables with it), e.g.
        ``CountState(**super().init_state(...).fields(), step=jnp.int32(0))``.
        """
        del info, kernel
        return LayerState(sparsity=jnp.asarray(sparsity, jnp.float32))

    def init_shared(self, plan: Mapping[str, float]) -> Optional[dict[str, Any]]:
        """Initial state shared by all layers (``None``: the method needs none)."""
        del plan
        return None

    def refresh_shared(self, shared: dict[str, Any], sizes: Mapping[str, int],
                       kernels: Optional[Mapping[str, Array]] = None,
                       states: Optional[Mapping[str, LayerState]] = None) -> dict[str, Any]:
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

    def policy_aux(self, info: LayerInfo, sparsity: float, state: LayerState,
                   shared: Optional[dict[str, Any]], training: bool
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

    def update(self, info: LayerInfo, state: LayerState, shared: Optional[dict[str, Any]],
               stats: Stats, kernel: Array) -> tuple[LayerState, Optional[dict[str, Any]]]:
        """New state after a training call, from the op's :class:`~sparsejax.ops.Stats`."""
        del info, stats, kernel
        return state, shared


def first_last(layers: list[LayerInfo], chosen: list[LayerInfo], dense_first: bool,
               dense_last: bool, name: str) -> list[LayerInfo]:
    """``chosen`` without the first and/or last layer in call order (each logged as dense).

    Args:
      layers: every supported layer, in call order.
      chosen: the layers a method would make sparse.
      dense_first: drop the first of ``layers``.
      dense_last: drop the last of ``layers``.
      name: the method's name, for the log.

    Returns:
      The remaining chosen layers, in order.

    Example:
      >>> def choose_layers(self, layers, chosen):
      ...     return first_last(layers, chosen, True, False, self.name)
    """
    drop = {}
    if dense_first and layers:
        drop[layers[0].path] = "first"
    if dense_last and layers:
        drop[layers[-1].path] = "last"
    for c in chosen:
        if c.path in drop:
            stays_dense(name, c.path, f"{drop[c.path]} layer")
    return [c for c in chosen if c.path not in drop]
