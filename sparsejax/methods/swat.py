"""SWAT (Sparse Weight Activation Training): SWAT-U, SWAT-ERK, SWAT-M and its structured variants."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, Optional

import jax
import jax.numpy as jnp

from sparsejax.distributions import erk_sparsities
from sparsejax.methods.base import (Array, ArrayLike, LayerInfo, LayerState, Method, boolean,
                                    first_last, integer, layer_state, logger, one_of, option)
from sparsejax.ops import SAVED, Aux, Policy
from sparsejax.patterns import Channel
from sparsejax.rule import SlotInput
from sparsejax.sparsifiers import TopK
from sparsejax.validate import check_sparsity

# SWAT-M caps every layer's density (Raihan & Aamodt, official code).
MOMENTUM_DENSITY_CAP = 0.99
# How SWAT-M re-shares the budget of layers over the cap (see momentum_budgets).
_REDISTRIBUTIONS = ("official", "proportional")
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


@layer_state
class SWATState(LayerState):
    """A SWAT layer's state (fields a layer does not use stay ``None``).

    Attributes:
      sparsity: the layer's sparsity (SWAT-M: its current momentum budget).
      step: training calls so far, for layers that cache thresholds (``period > 1``).
      w_threshold: the cached (or, SWAT-M, the last) weight threshold.
      a_threshold: the cached saved-activation threshold.
      prev_kernel: SWAT-M: the kernel of the previous step, for its momentum.
    """

    step: Optional[Array] = None
    w_threshold: Optional[Array] = None
    a_threshold: Optional[Array] = None
    prev_kernel: Optional[Array] = None


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
        (:class:`sparsejax.backend_hints.SharedActivations`). The cache is per
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
    state_type: ClassVar[type] = SWATState
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
        chosen = first_last(layers, chosen, self.first_dense, self.dense_last, self.name)
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
        zero = jnp.zeros((), jnp.float32)
        state = SWATState(sparsity=jnp.asarray(sparsity, jnp.float32))
        if self._cached(info):
            state = state.replace(step=jnp.zeros((), jnp.int32), w_threshold=zero, a_threshold=zero)
        if self._momentum:
            # W_t and the threshold of step t: SWAT-M scores |W_{t+1} - W_t| on |W_t| >= it.
            state = state.replace(prev_kernel=jnp.asarray(kernel), w_threshold=zero)
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
            score = {p: _momentum_score(kernels[p], states[p].prev_kernel,
                                        states[p].w_threshold) for p in sizes}
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
        w_in, a_in = {}, {}
        if pattern is not None and info.kind == "conv":
            w_rule = dataclasses.replace(pattern, sparsity=sparsity)
        elif cached:
            w_rule = TopK(sparsity, cached=True)
            w_in["threshold"] = state.w_threshold
        else:
            w_rule = TopK(sparsity, ties="all")
        # The saved-activation rule only shapes the backward pass, so it is set in
        # read-only calls too: a gradient taken through an evaluation call still
        # follows SWAT (nothing is computed for it when no gradient is taken).
        a_rule = (TopK(sparsity, sample_size=self.sample_size, cached=True) if cached
                  else TopK(sparsity, sample_size=self.sample_size, ties="all"))
        if cached:
            a_in["threshold"] = state.a_threshold
        if training and cached:
            refresh = state.step % self.period == 0
            a_in["refresh"] = refresh
            if w_rule.cached:
                w_in["refresh"] = refresh
        if self._momentum:
            s = shared["sparsity"][info.path]
            if not w_rule.cached or training:
                w_in["sparsity"] = s
            if not a_rule.cached or training:
                a_in["sparsity"] = s
        return (Policy(weight=w_rule, act_saved=a_rule, straight_through=self.straight_through,
                       saved=self.saved),
                Aux(weight=SlotInput(**w_in), act_saved=SlotInput(**a_in)))

    def update(self, info, state, shared, stats, kernel):
        if self._momentum:
            # W_t - W_{t-1} on |W_{t-1}| >= its threshold: the previous step's momentum,
            # used by refresh_shared only when the adapter passes no kernels (NNX).
            score = _momentum_score(kernel, state.prev_kernel, state.w_threshold)
            shared = {"score": {**shared["score"], info.path: score}, "sparsity": shared["sparsity"]}
            state = state.replace(prev_kernel=jnp.asarray(kernel, state.prev_kernel.dtype),
                                  w_threshold=stats.w_threshold,
                                  sparsity=shared["sparsity"][info.path])
        if self._cached(info):
            state = state.replace(step=state.step + 1, w_threshold=stats.w_threshold,
                                  a_threshold=stats.a_threshold)
        return state, shared


swat = SWAT
