"""Input-channel permutations that raise the magnitude N:M sparsity keeps.

N:M masks keep ``n`` of every ``m`` consecutive weights along a kernel's input
(contraction) axis, so which channels share a group decides what survives. A
permutation of the input channels of a *consumer* layer, applied together with
the same permutation of the output channels of its *producer* (kernel, bias,
norm parameters and statistics), leaves the network function unchanged and can
put large weights in different groups (Pool & Yu 2021).

:func:`search_permutation` follows NVIDIA ASP's exhaustive stripe-pair search:
the channels form ``C / m`` stripes of ``m``; for every pair of stripes every
split of its ``2m`` channels into two groups of ``m`` is scored (35 splits for
``m = 4``); the best improving regroupings of disjoint stripe pairs are applied
greedily and only the pairs touching changed stripes are re-scored, until no
pair improves. Bounded random perturbations (a 3-cycle of channels between
three stripes, which no single stripe-pair move can undo) then restart the
descent, and the best permutation found is kept.

Scoring runs on the host, outside ``jit``, once per layer: split values of
fixed-size column blocks go through one jitted kernel (one compilation per
``(n, m)``), where the kept magnitude of a group is its top-``n`` sum, built
along shared sorted prefixes of the ``2m`` channels.

References:
  Pool & Yu, "Channel Permutations for N:M Sparsity", NeurIPS 2021.
  NVIDIA apex ``apex/contrib/sparsity/permutation_search_kernels``
  (exhaustive stripe-group search with escape attempts).
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import paths
from sparsejax.patterns import NM, nm_mask, topk_mask
from sparsejax.validate import check_finite, check_floating, is_concrete, normalize_axis

ArrayLike = jax.typing.ArrayLike

# Column block and batch of the jitted split scorer (fixed, so one compilation
# serves every layer); zero padding columns keep nothing and change no score.
_BLOCK_COLS = 256
_BATCH_ROWS = 256
# Largest group size for the exhaustive stripe-pair search: C(2m, m)/2 splits
# (35 for m = 4, 6435 for m = 8) are scored per pair, unrolled in the kernel.
_MAX_M = 4
# Relative gain a regrouping must bring to be applied (float32 scoring noise is
# far below it, so the descent cannot cycle).
_RTOL = 1e-5


@dataclasses.dataclass(frozen=True, eq=False)
class PermutationResult:
    """Outcome of :func:`search_permutation`.

    Attributes:
      perm: int array of input-channel indices; the permuted weight is
        ``np.take(weight, perm, axis)`` (new channel ``k`` is old ``perm[k]``).
      kept_base: total ``|w|`` kept by N:M without permutation.
      kept_perm: total ``|w|`` kept by N:M after ``perm`` (``>= kept_base``).
      kept_unstructured: total ``|w|`` kept by unstructured magnitude pruning at
        the same sparsity ``1 - n/m`` (an upper bound for ``kept_perm``).
      total: total ``|w|``.
      regroupings: improving stripe-pair regroupings applied during the search.
      converged: ``False`` when ``max_iters`` stopped a descent early.
    """

    perm: np.ndarray
    kept_base: float
    kept_perm: float
    kept_unstructured: float
    total: float
    regroupings: int
    converged: bool

    @property
    def efficacy(self) -> float:
        """``(lost_base - lost_perm) / (lost_base - lost_unstructured)`` in ``[0, 1]``.

        ``lost = total - kept``. When the identity already keeps as much as
        unstructured pruning (0/0) nothing can be recovered and the efficacy is 1.
        Sums are exact (``math.fsum``); float64 weights are ranked in float32 by
        the selection routine, so the ratio is clipped to 1 against that rounding.
        """
        recoverable = self.kept_unstructured - self.kept_base
        if recoverable <= 0.0:
            return 1.0
        return min(1.0, (self.kept_perm - self.kept_base) / recoverable)


@functools.lru_cache(maxsize=None)
def _splits(m: int) -> tuple[np.ndarray, np.ndarray]:
    """All splits of ``range(2m)`` into two groups of ``m`` (first: the identity).

    Returns:
      ``(first, second)`` int arrays of shape ``(C(2m, m) / 2, m)``; the first
      group always holds channel 0, so each split appears once.
    """
    first = [s for s in itertools.combinations(range(2 * m), m) if 0 in s]
    second = [tuple(sorted(set(range(2 * m)) - set(s))) for s in first]
    return np.array(first), np.array(second)


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _split_values(x: jax.Array, n: int, m: int) -> jax.Array:
    """N:M kept magnitude of every split of ``2m`` channels, per row.

    A group's kept magnitude is its top-``n`` sum, built along sorted prefixes:
    ``top_k(S + [c]) = max(top_k(S), x_c + top_{k-1}(S))``, so the 70 groups of
    a 2:4 stripe pair share their prefixes (about 4 operations per group and
    column); the per-column values are stacked before the column sum, which
    XLA fuses into one pass.

    Args:
      x: ``(rows, 2m, cols)`` float32 magnitudes (one stripe pair's column block
        per row).
      n: kept entries per group.
      m: group size.

    Returns:
      ``(rows, n_splits)`` float32: for each split, the sum over columns of the
      top-``n`` sums of its two groups.
    """
    first, second = _splits(m)
    channels = [x[:, c] for c in range(2 * m)]

    @functools.lru_cache(maxsize=None)
    def top(group: tuple[int, ...]) -> tuple[jax.Array | None, ...]:
        """``(top_1, ..., top_n)`` sums of ``group`` (``None`` where k > size)."""
        c = channels[group[-1]]
        if len(group) == 1:
            return (c,) + (None,) * (n - 1)
        prev = top(group[:-1])
        out = []
        for k in range(1, n + 1):
            if k > len(group):
                out.append(None)
            elif k == len(group):
                out.append(functools.reduce(jnp.add, [channels[i] for i in group]))
            else:
                out.append(jnp.maximum(prev[k - 1], c if k == 1 else c + prev[k - 2]))
        return tuple(out)

    per_column = [top(tuple(a))[n - 1] + top(tuple(b))[n - 1] for a, b in zip(first, second)]
    return jnp.sum(jnp.stack(per_column, axis=1), axis=-1)


class _StripeSearch:
    """Mutable state of one stripe-pair search (host side)."""

    def __init__(self, mag: np.ndarray, n: int, m: int):
        c, r = mag.shape
        blocks = -(-r // _BLOCK_COLS)
        padded = np.zeros((c, blocks * _BLOCK_COLS), np.float32)
        padded[:, :r] = mag
        self.mag = mag.astype(np.float64)
        self.blocks = padded.reshape(c, blocks, _BLOCK_COLS)
        self.n, self.m, self.g = n, m, c // m
        self.first, self.second = _splits(m)
        self.stripes = np.arange(c).reshape(self.g, m)
        self.gain = np.zeros((self.g, self.g))
        self.split = np.zeros((self.g, self.g), np.int64)
        self.value = np.array([self._stripe_value(s) for s in range(self.g)])
        self._score(*np.triu_indices(self.g, 1))

    def _stripe_value(self, s: int) -> float:
        rows = np.sort(self.mag[self.stripes[s]], axis=0)
        return math.fsum(rows[self.m - self.n:].ravel())

    def _score(self, ii: np.ndarray, jj: np.ndarray) -> None:
        """Re-scores stripe pairs ``(ii[k], jj[k])``: best split and its gain."""
        idx = np.concatenate([self.stripes[ii], self.stripes[jj]], axis=1)
        nb = self.blocks.shape[1]
        rows = len(ii) * nb
        values = np.empty((rows, len(self.first)))
        for start in range(0, rows, _BATCH_ROWS):
            r = np.arange(start, start + _BATCH_ROWS) % rows
            x = self.blocks[idx[r // nb], (r % nb)[:, None]]
            out = np.asarray(_split_values(x, n=self.n, m=self.m), np.float64)
            stop = min(rows, start + _BATCH_ROWS)
            values[start:stop] = out[:stop - start]
        values = values.reshape(len(ii), nb, -1).sum(axis=1)
        best = np.argmax(values, axis=1)
        current = values[:, 0]
        gain = values[np.arange(len(ii)), best] - current
        improving = gain > _RTOL * current
        self.gain[ii, jj] = np.where(improving, gain, 0.0)
        self.split[ii, jj] = np.where(improving, best, 0)

    def refresh(self, touched: Sequence[int]) -> None:
        """Re-scores every pair with a stripe in ``touched`` and their values."""
        hit = np.zeros(self.g, bool)
        hit[list(touched)] = True
        upper = np.triu(np.ones((self.g, self.g), bool), 1)
        self._score(*np.nonzero(upper & (hit[:, None] | hit[None, :])))
        for s in touched:
            self.value[s] = self._stripe_value(s)

    def descend(self, budget: int) -> tuple[int, bool]:
        """Greedy regroupings until none improves or ``budget`` are applied.

        Returns:
          ``(applied, converged)``.
        """
        applied = 0
        while True:
            ii, jj = np.nonzero(self.gain > 0.0)
            if len(ii) == 0:
                return applied, True
            if applied >= budget:
                return applied, False
            order = np.argsort(-self.gain[ii, jj], kind="stable")
            touched: list[int] = []
            used = np.zeros(self.g, bool)
            for k in order:
                i, j = ii[k], jj[k]
                if used[i] or used[j]:
                    continue
                channels = np.concatenate([self.stripes[i], self.stripes[j]])
                s = self.split[i, j]
                self.stripes[i] = channels[self.first[s]]
                self.stripes[j] = channels[self.second[s]]
                used[i] = used[j] = True
                touched += [i, j]
                applied += 1
                if applied >= budget:
                    break
            self.refresh(touched)

    def perturb(self, rng: np.random.Generator) -> None:
        """Moves one channel around a random cycle of three stripes."""
        a, b, c = rng.choice(self.g, 3, replace=False)
        pa, pb, pc = rng.integers(0, self.m, 3)
        st = self.stripes
        st[a, pa], st[b, pb], st[c, pc] = st[c, pc], st[a, pa], st[b, pb]
        self.refresh([a, b, c])

    def snapshot(self) -> tuple[np.ndarray, ...]:
        return tuple(x.copy() for x in (self.stripes, self.gain, self.split, self.value))

    def restore(self, snap: tuple[np.ndarray, ...]) -> None:
        self.stripes, self.gain, self.split, self.value = (x.copy() for x in snap)

    def total(self) -> float:
        return math.fsum(self.value)

    def perm(self) -> np.ndarray:
        """Channels stripe by stripe, each stripe sorted, stripes by first channel."""
        st = np.sort(self.stripes, axis=1)
        return st[np.argsort(st[:, 0])].ravel()


# Host-side reference masks, one compilation per shape (eagerly, the selection
# would compile each of its operations separately).
_nm_mask = jax.jit(nm_mask, static_argnums=(1, 2, 3), static_argnames=("where",))
_topk_mask = jax.jit(topk_mask, static_argnums=(1,))


def search_permutation(weight: ArrayLike, *, n: int = 2, m: int = 4, axis: int = -2,
                       max_iters: int = 100_000, seed: int = 0, perturbations: int = 50,
                       where: str | None = None) -> PermutationResult:
    """Input-channel permutation maximising the ``|w|`` kept by N:M pruning.

    ASP's search (see the module docstring): exhaustive splits of every stripe
    pair, greedy improving regroupings, then ``perturbations`` random 3-cycle
    escapes, each followed by a new descent and kept only if the total improves.
    The result never keeps less than the identity permutation (checked exactly
    with :func:`sparsejax.patterns.nm_mask` at the end). Runs on the host.

    Args:
      weight: floating kernel, e.g. Dense ``(in, out)`` or Conv
        ``(h, w, in, out)``; must be concrete (not traced) and finite.
      n: kept entries per group.
      m: group size, at most 4 (the exhaustive stripe-pair search scores
        ``C(2m, m)/2`` splits per pair); ``weight.shape[axis] % m == 0``.
      axis: the permuted (input/contraction) axis, ``-2`` for Flax kernels.
      max_iters: upper bound on regroupings applied over all descents; when it
        stops a descent, ``converged`` is ``False`` (the result is still valid).
      seed: seed of the perturbations (the search is deterministic given it).
      perturbations: number of random escape attempts after the first descent
        (0 for pure greedy). Skipped with fewer than 3 stripes, where one
        stripe-pair search is already exhaustive, and stopped once the
        unstructured bound is reached.
      where: parameter path for error messages.

    Returns:
      A :class:`PermutationResult`.

    Example:
      >>> w = np.array([[4.], [3.], [2.], [1.], [0.1], [0.2], [0.3], [0.4]])
      >>> r = search_permutation(w, n=2, m=4)
      >>> r.efficacy, r.kept_perm > r.kept_base
      (1.0, True)

    References:
      Pool & Yu, "Channel Permutations for N:M Sparsity", NeurIPS 2021; NVIDIA
      apex ASP (``permutation_search_kernels``).
    """
    NM(n, m, axis)
    label = f" for {where!r}" if where else ""
    check_floating(weight, where)
    if not is_concrete(weight):
        raise TypeError(f"search_permutation{label} needs a concrete weight: it runs on the "
                        "host, once per layer; call it outside jit.")
    w = np.asarray(weight)
    check_finite(w, where)
    ax = normalize_axis(axis, w.ndim, where)
    c = w.shape[ax]
    if c % m:
        raise ValueError(f"N:M {n}:{m} permutation needs axis {axis} of length divisible by {m}"
                         f"{label}, got shape {w.shape}; skip this layer or pick another m.")
    if m > _MAX_M:
        raise ValueError(f"the exhaustive stripe-pair search{label} scores C(2m, m)/2 = "
                         f"{math.comb(2 * m, m) // 2} splits per stripe pair for {n}:{m}; it "
                         f"supports m <= {_MAX_M} (2:4 is the sparse tensor-core pattern).")
    for name, val in (("max_iters", max_iters), ("perturbations", perturbations)):
        if not isinstance(val, int) or val < 0:
            raise ValueError(f"{name} must be a non-negative int, got {val!r}.")

    abs_w = np.abs(w.astype(np.float64))
    kept_base = math.fsum(abs_w[np.asarray(_nm_mask(w, n, m, ax, where=where))])
    kept_unstructured = math.fsum(abs_w[np.asarray(_topk_mask(w, 1.0 - n / m))])
    mag = np.moveaxis(np.abs(w.astype(np.float32)), ax, 0).reshape(c, -1)
    identity = np.arange(c)
    perm, applied, converged = identity, 0, True
    if c // m >= 2 and kept_base < kept_unstructured:
        search = _StripeSearch(mag, n, m)
        applied, converged = search.descend(max_iters)
        best, best_total = search.snapshot(), search.total()
        rng = np.random.default_rng(seed)
        for _ in range(perturbations if search.g >= 3 else 0):
            if not converged or applied >= max_iters or best_total >= kept_unstructured:
                break
            search.perturb(rng)
            done, converged = search.descend(max_iters - applied)
            applied += done
            if search.total() > best_total:
                best, best_total = search.snapshot(), search.total()
            else:
                search.restore(best)
        search.restore(best)
        perm = search.perm()

    kept_perm = kept_base
    if not np.array_equal(perm, identity):
        w_perm = np.take(w, perm, axis=ax)
        kept_perm = math.fsum(np.take(abs_w, perm, axis=ax)[
            np.asarray(_nm_mask(w_perm, n, m, ax, where=where))])
        if kept_perm < kept_base:
            perm, kept_perm = identity, kept_base
    return PermutationResult(perm=perm, kept_base=kept_base, kept_perm=kept_perm,
                             kept_unstructured=kept_unstructured, total=math.fsum(abs_w.ravel()),
                             regroupings=applied, converged=converged)


def _lookup(leaves: Mapping[str, Any], path: str, role: str) -> Any:
    if path not in leaves:
        close = difflib.get_close_matches(path, list(leaves), n=4, cutoff=0.5)
        hint = f"; close matches: {close}" if close else f"; paths look like {next(iter(leaves), None)!r}"
        raise KeyError(f"{role} path {path!r} is not in the parameter tree{hint}.")
    return leaves[path]


def _check_perm(perm: ArrayLike) -> np.ndarray:
    p = np.asarray(perm)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"perm must be a 1-D integer array, got shape {p.shape} dtype {p.dtype}.")
    if not np.array_equal(np.sort(p), np.arange(p.size)):
        counts = np.bincount(p[(p >= 0) & (p < p.size)], minlength=p.size)
        raise ValueError(
            f"perm is not a permutation of range({p.size}): out of range "
            f"{p[(p < 0) | (p >= p.size)][:5].tolist()}, repeated "
            f"{np.nonzero(counts > 1)[0][:5].tolist()}, missing "
            f"{np.nonzero(counts == 0)[0][:5].tolist()}.")
    return p


def permute_channels(params: Any, *, producer: str, consumer: str, perm: ArrayLike,
                     producer_extras: Sequence[str] = ()) -> Any:
    """Permutes a producer's output channels and its consumer's input channels.

    The consumer kernel's input axis (``-2``) and the producer kernel's output
    axis (``-1``) are reindexed by the same ``perm``, together with the
    producer's bias (the sibling ``.../bias`` of a ``.../kernel`` path, when
    present) and every path in ``producer_extras`` (per-channel leaves along
    their last axis: BatchNorm scale/bias in ``params``, mean/var in
    ``batch_stats``), so the network function is unchanged as long as the
    producer's outputs reach only this consumer through per-channel operations
    (bias, norm, elementwise activation).

    Args:
      params: pytree of parameters (e.g. Flax ``params``, or the whole variables
        dict ``{"params": ..., "batch_stats": ...}``; paths are relative to it).
      producer: path of the producer kernel, e.g. ``"Conv_0/kernel"``.
      consumer: path of the consumer kernel, e.g. ``"Conv_1/kernel"``.
      perm: permutation of ``range(C)``, ``C`` the number of channels.
      producer_extras: further producer-side per-channel leaf paths, e.g.
        ``("params/BatchNorm_0/scale", "batch_stats/BatchNorm_0/mean", ...)``.

    Returns:
      A tree of the same structure with the listed leaves permuted.

    Raises:
      KeyError: a path is not in the tree (close matches are listed).
      ValueError: ``perm`` is not a permutation, a leaf's channel count differs
        from ``len(perm)``, or a path is given twice.

    Example:
      >>> p = {"Dense_0": {"kernel": jnp.eye(2), "bias": jnp.arange(2.)},
      ...      "Dense_1": {"kernel": jnp.eye(2)}}
      >>> q = permute_channels(p, producer="Dense_0/kernel",
      ...                      consumer="Dense_1/kernel", perm=[1, 0])
      >>> q["Dense_0"]["bias"].tolist()
      [1.0, 0.0]

    References:
      Pool & Yu, "Channel Permutations for N:M Sparsity", NeurIPS 2021.
    """
    p = _check_perm(perm)
    leaves = paths.leaf_paths(params)
    targets = {consumer: -2, producer: -1}
    bias = producer[:-len("kernel")] + "bias" if producer.endswith("/kernel") else None
    if bias is not None and bias in leaves and bias not in producer_extras:
        targets[bias] = -1
    for extra in producer_extras:
        if extra in (producer, consumer) or list(producer_extras).count(extra) > 1:
            raise ValueError(f"path {extra!r} is listed twice (producer, consumer and "
                             "producer_extras must be distinct).")
        targets[extra] = -1
    if producer == consumer:
        raise ValueError(f"producer and consumer are the same path {producer!r}.")
    for path, ax in targets.items():
        role = "consumer" if path == consumer else "producer" if path == producer else "extra"
        leaf = _lookup(leaves, path, role)
        shape = np.shape(leaf)
        if len(shape) < (2 if ax == -2 else 1):
            raise ValueError(f"{role} {path!r} has shape {shape}; a consumer needs a kernel with "
                             "an input axis -2, producer-side leaves a channel axis -1.")
        if shape[ax] != p.size:
            raise ValueError(
                f"{role} {path!r} has {shape[ax]} channels on axis {ax} (shape {shape}) but perm "
                f"has length {p.size} (producer {producer!r} shape {np.shape(leaves.get(producer))}, "
                f"consumer {consumer!r} shape {np.shape(leaves.get(consumer))}); pair a layer "
                "with the layer that reads its output.")
    pairs, treedef = paths.flatten(params)
    take = lambda x, ax: np.take(x, p, axis=ax) if isinstance(x, np.ndarray) else jnp.take(
        x, p, axis=ax)  # numpy leaves stay numpy (and float64)
    new = [take(leaf, targets[path]) if path in targets else leaf for path, leaf in pairs]
    return jax.tree_util.tree_unflatten(treedef, new)


def permute_for_nm(params: Any, pairs: Sequence[tuple], *, n: int = 2, m: int = 4,
                   max_iters: int = 100_000, seed: int = 0, perturbations: int = 50
                   ) -> tuple[Any, dict[str, PermutationResult]]:
    """Searches and applies an N:M channel permutation for each producer/consumer pair.

    Pairs are processed in order on the current tree: each consumer kernel's
    input channels are searched with :func:`search_permutation` (``axis=-2``)
    and the permutation is applied with :func:`permute_channels`.

    Args:
      params: parameter pytree (paths relative to it).
      pairs: ``(producer, consumer)`` or ``(producer, consumer, producer_extras)``
        tuples of paths (see :func:`permute_channels`); each consumer once.
      n: kept entries per group.
      m: group size.
      max_iters: per-layer regrouping budget (see :func:`search_permutation`).
      seed: perturbation seed (the same for every layer).
      perturbations: per-layer random escape attempts.

    Returns:
      ``(permuted params, {consumer path: PermutationResult})``.

    Example:
      >>> params, found = permute_for_nm(params, [("Dense_0/kernel", "Dense_1/kernel")])
      >>> found["Dense_1/kernel"].efficacy  # doctest: +SKIP

    References:
      Pool & Yu, "Channel Permutations for N:M Sparsity", NeurIPS 2021.
    """
    results: dict[str, PermutationResult] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise ValueError(f"each pair must be (producer, consumer) or (producer, consumer, "
                             f"producer_extras), got {pair!r}.")
        producer, consumer = pair[0], pair[1]
        extras = tuple(pair[2]) if len(pair) == 3 else ()
        if consumer in results:
            raise ValueError(f"consumer {consumer!r} appears in two pairs; a second permutation "
                             "would reorder the groups the first one chose.")
        kernel = _lookup(paths.leaf_paths(params), consumer, "consumer")
        result = search_permutation(kernel, n=n, m=m, axis=-2, max_iters=max_iters, seed=seed,
                                    perturbations=perturbations, where=consumer)
        params = permute_channels(params, producer=producer, consumer=consumer, perm=result.perm,
                                  producer_extras=extras)
        results[consumer] = result
    return params, results


# ----------------------------------------------------- model-level permutation
def _per_channel_norm(module: Any, x: Any) -> bool:
    """Whether a norm layer acts per channel of the last axis (permutation-equivariant)."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    ndim = len(np.shape(x)) if x is not None else 0
    last = lambda a: isinstance(a, int) and ndim > 0 and a % ndim == ndim - 1
    if isinstance(module, nn.BatchNorm):  # statistics over the other axes, per channel
        return last(module.axis)
    if isinstance(module, nn.LayerNorm):  # mean/var over the channels: order-invariant
        return last(module.reduction_axes) and last(module.feature_axes)
    return False


def _module_calls(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any]
                  ) -> list[tuple[str, str, dict[str, tuple[int, ...]]]]:
    """``(kind, module path, {own leaf path: shape})`` of every module call owning variables,
    in call order; ``kind`` is ``"linear"`` (Dense, or Conv without groups), ``"norm"``
    (a per-channel norm) or ``"other"``. Paths are relative to the variables dict."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    calls = []

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        module = context.module
        if context.method_name == "setup":
            return out
        prefix = "/".join(module.path)
        own = {}
        for collection, tree in module.variables.items():
            for name, leaf in tree.items():
                if not isinstance(leaf, Mapping):
                    own["/".join(filter(None, (collection, prefix, name)))] = tuple(np.shape(leaf))
        if not own:
            return out  # A container (its layers are recorded) or a stateless module.
        kernel = "/".join(filter(None, ("params", prefix, "kernel")))
        if (type(module) in (nn.Dense, nn.Conv) and kernel in own and len(own[kernel]) >= 2
                and getattr(module, "feature_group_count", 1) == 1):
            kind = "linear"
        elif _per_channel_norm(module, call_args[0] if call_args else None):
            kind = "norm"
        else:
            kind = "other"
        calls.append((kind, prefix, own))
        return out

    def init():
        with nn.intercept_methods(interceptor):
            return model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                              *args, **kwargs)

    jax.eval_shape(init)
    return calls


def chain_pairs(model: Any, *example_args: Any, **example_kwargs: Any
                ) -> list[tuple[str, str, tuple[str, ...]]]:
    """Candidate producer → consumer pairs of a Flax linen model: consecutive layers.

    The layers are read in call order from an abstract ``model.init`` (no FLOPs).
    A pair is two consecutive ``nn.Dense`` / ``nn.Conv`` calls (no feature groups)
    where the producer's output channels (kernel axis ``-1``) equal the
    consumer's input channels (axis ``-2``), with only per-channel norms
    (``BatchNorm`` / ``LayerNorm`` over the last axis, whose parameters and
    statistics become ``producer_extras``) and modules without variables
    (activations, dropout, pooling) called in between. Layers called more than
    once are skipped, and so is a pair with any other module owning variables
    between its two layers.

    These are *candidates*: call order does not show the data flow, so a
    residual add, a concatenation or a second reader of the producer's output
    makes a pair unsafe. :func:`permute_model` checks each one on the model's
    output.

    Args:
      model: an unbound linen module.
      *example_args: its call arguments (e.g. an input batch).
      **example_kwargs: keyword arguments of the call (e.g. ``train=False``).

    Returns:
      ``(producer kernel, consumer kernel, producer_extras)`` paths relative to
      the variables dict (``"params/fc1/kernel"``, ``"batch_stats/bn1/mean"``),
      as :func:`permute_for_nm` takes them with ``{"params": ..., **collections}``.

    Example:
      >>> [(p, c) for p, c, _ in chain_pairs(zoo.MLP(features=(32, 16)), jnp.zeros((1, 64)))]
      [('params/fc1/kernel', 'params/fc2/kernel'), ('params/fc2/kernel', 'params/fc3/kernel')]
    """
    calls = _module_calls(model, example_args, example_kwargs)
    counts: dict[str, int] = {}
    for _, path, _ in calls:
        counts[path] = counts.get(path, 0) + 1
    pairs = []
    producer, between, blocked = None, [], False
    for kind, path, own in calls:
        if kind == "linear":
            kernel = f"params/{path}/kernel" if path else "params/kernel"
            if (producer is not None and not blocked and counts[path] == 1
                    and counts[producer[0]] == 1 and producer[1][-1] == own[kernel][-2]):
                channels = producer[1][-1]
                extras = tuple(p for norm in between for p, s in norm.items() if s == (channels,))
                if all(len(norm) == len([s for s in norm.values() if s == (channels,)])
                       for norm in between):
                    pairs.append((producer[2], kernel, extras))
            producer, between, blocked = (path, own[kernel], kernel), [], False
        elif kind == "norm":
            between.append(own)
        else:
            blocked = True
    return pairs


def _outputs(model: Any, example_args: Sequence[Any], example_kwargs: Mapping[str, Any]
             ) -> Callable[[Any], list[np.ndarray]]:
    apply = jax.jit(lambda v: model.apply(v, *example_args, **example_kwargs))

    def outputs(variables: Any) -> list[np.ndarray]:
        with jax.default_matmul_precision("highest"):  # No TF32/bf16 passes on accelerators.
            return [np.asarray(x, np.float64) for x in jax.tree.leaves(apply(variables))]

    return outputs


def _deviation(a: Sequence[np.ndarray], b: Sequence[np.ndarray], rtol: float,
               atol: float) -> float | None:
    """Largest ``|a - b|`` if some entry is outside ``atol + rtol |a|``, else ``None``."""
    bad = [not np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b)]
    if not any(bad):
        return None
    return max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a, b))


def permute_model(model: Any, variables: Any, *example_args: Any,
                  include: Callable[[str], bool] | None = None, n: int = 2, m: int = 4,
                  seed: int = 0, max_iters: int = 100_000, perturbations: int = 50,
                  rtol: float = 1e-4, atol: float = 1e-5, **example_kwargs: Any
                  ) -> tuple[Any, dict[str, tuple[str, PermutationResult]]]:
    """N:M channel permutations of a whole linen model, checked on its output.

    The candidate pairs of :func:`chain_pairs` whose consumer kernel passes
    ``include`` and has input channels divisible by ``m`` are used. Each pair is
    first checked alone with a fixed random permutation: if the model's output
    on ``example_args`` changes beyond ``atol + rtol · |output|`` (float32
    matmuls at ``"highest"`` precision), the pair is unsafe. Then
    :func:`permute_for_nm` searches and applies the permutations, and the whole
    permuted model is checked again.

    Args:
      model: an unbound linen module (e.g. a zoo model).
      variables: its variables ``{"params": ..., **collections}`` (host arrays
        stay numpy).
      *example_args: the call arguments of the check (e.g. a small batch of
        random inputs; ``train=False`` goes in ``example_kwargs``).
      include: ``consumer kernel path -> bool`` (paths relative to ``params``,
        e.g. ``"fc2/kernel"``); ``None`` takes every candidate.
      n: kept entries per group.
      m: group size.
      seed: seed of the check permutations and of the search's perturbations.
      max_iters: per-layer regrouping budget (see :func:`search_permutation`).
      perturbations: per-layer escape attempts (see :func:`search_permutation`).
      rtol: relative tolerance of the output check.
      atol: absolute tolerance of the output check.
      **example_kwargs: keyword arguments of the call.

    Returns:
      ``(permuted variables, {consumer kernel: (producer kernel, PermutationResult)})``
      with kernel paths relative to ``params``.

    Raises:
      ValueError: a pair's permutation changes the model's output (the message
        names the pairs): the producer's output reaches more than its consumer
        (residual add, concatenation) or passes a non-per-channel op (flatten).

    Example:
      >>> variables, found = permute_model(model, variables, x, train=False)
      >>> {c: r.efficacy for c, (p, r) in found.items()}  # doctest: +SKIP

    References:
      Pool & Yu, "Channel Permutations for N:M Sparsity", NeurIPS 2021.
    """
    strip = lambda path: path[len("params/"):]
    pairs = [(p, c, e) for p, c, e in chain_pairs(model, *example_args, **example_kwargs)
             if (include is None or include(strip(c)))
             and np.shape(_lookup(paths.leaf_paths(variables), c, "consumer"))[-2] % m == 0]
    if not pairs:
        return variables, {}
    outputs = _outputs(model, example_args, example_kwargs)
    reference = outputs(variables)
    rng = np.random.default_rng(seed)
    unsafe = []
    for producer, consumer, extras in pairs:
        channels = np.shape(paths.leaf_paths(variables)[consumer])[-2]
        perm = rng.permutation(channels)
        if np.array_equal(perm, np.arange(channels)):
            perm = np.roll(perm, 1)
        trial = permute_channels(variables, producer=producer, consumer=consumer, perm=perm,
                                 producer_extras=extras)
        deviation = _deviation(reference, outputs(trial), rtol, atol)
        if deviation is not None:
            unsafe.append(f"{strip(producer)} -> {strip(consumer)} (max |change| {deviation:.3g})")
    if unsafe:
        raise ValueError(
            f"permuting the channels of {len(unsafe)} of {len(pairs)} producer -> consumer "
            f"pair(s) inferred from the call order changes the model's output: "
            f"{'; '.join(unsafe)}. The producer's output reaches more than its consumer "
            "(a residual add, a concatenation) or passes a non-per-channel operation (a "
            "flatten); permute only pairs connected through per-channel operations.")
    permuted, results = permute_for_nm(variables, pairs, n=n, m=m, max_iters=max_iters,
                                       seed=seed, perturbations=perturbations)
    deviation = _deviation(reference, outputs(permuted), rtol, atol)
    if deviation is not None:
        names = "; ".join(f"{strip(p)} -> {strip(c)}" for p, c, _ in pairs)
        raise ValueError(f"the permuted model's output differs from the original (max |change| "
                         f"{deviation:.3g}) although each pair alone keeps it: {names}.")
    return permuted, {strip(c): (strip(p), results[c]) for p, c, _ in pairs}
