"""Training recipes: a method's config becomes a list of :class:`Phase` values.

``config.method.name`` picks a recipe of :data:`RECIPES`; the other fields of
``config.method`` are the recipe's keyword arguments. Every phase is trained by
the one loop :func:`sparsejax.experiment.train.run_phase`, which hands params,
model collections and pruning masks to the next phase. Recipes only *compose*
the library's APIs: :func:`sparsejax.transform.pruning` (masks in the optimizer
state) and :func:`sparsejax.methods.sparsify` (sparse forward/backward).

==============  =================================================================
recipe          phases
==============  =================================================================
dense           train
magnitude       train dense → (prune one-shot → retrain at ``retrain_lr_scale``)
                × ``iterations`` (Han et al. 2015; iterative when > 1); by
                magnitude, random or saliency (``criterion``); ``criterion=snip``:
                prune at initialisation, train sparse (Lee et al. 2019)
asp             train dense → one-shot N:M (2:4) → retrain with the same schedule
                and length (NVIDIA ASP), optionally after ASP's channel
                permutation (``permute=True``, Pool & Yu 2021)
gradual         train with a cubic sparsity ramp (Zhu & Gupta 2017; ``criterion``:
                magnitude, random or saliency)
ste             train with N:M forward weights, dense gradients (STE / SR-STE)
swat            train with SWAT (U / ERK / M, structured variants)
meprop          train with top-k output gradients (meProp, unified meProp)
dsg             train with DSG's random-projection neuron selection
grad_drop       train with weight-gradient drop before the optimizer
forward_topk    train with top-K forward input activations or weights (SWAT's
                sensitivity study of forward-side operands)
static          train with static random masks (the DST lower baseline)
set             train with SET (magnitude drop, random regrowth every ΔT)
rigl            train with RigL (magnitude drop, gradient regrowth, cosine drop fraction)
snfs            train with sparse momentum (momentum regrowth and redistribution)
acdc            train with AC/DC (dense warm-up, alternating sparse / dense phases,
                sparse fine-tuning)
wanda           train dense → one-shot Wanda (``|W| · ‖X‖₂`` per output) or magnitude
                pruning, 50% or N:M, evaluated without retraining (Sun et al. 2024)
==============  =================================================================

A phase's training-FLOP estimate follows from the policies its layers train
with (:meth:`Phase.fractions`, :func:`sparsejax.analysis.costs.policy_fractions`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax

from sparsejax import criteria, schedules
from sparsejax.analysis import costs
from sparsejax.distributions import DISTRIBUTIONS
from sparsejax.experiment.config import ConfigError, nearest
from sparsejax.analysis.summary import summary
from sparsejax.patterns import NM, Pattern, Unstructured
from sparsejax.transform import pruning


@dataclasses.dataclass(frozen=True)
class Phase:
    """One training phase of a recipe.

    Attributes:
      name: short label (checkpoint directory, logs, metrics).
      num_steps: optimizer steps of the phase.
      lr_scale: factor on the config's learning-rate schedule.
      method: a :mod:`sparsejax.methods` method applied with ``sparsify`` to the
        model, or ``None`` (the model as is).
      pruning: a :func:`sparsejax.transform.pruning` transform placed last in the
        optimizer chain, or ``None``.
      gradient_transform: an optax transform applied to the raw gradients first
        (weight-gradient drop), or ``None``.
      mean_sparsity_ratio: mean over the phase's steps of the scheduled sparsity
        divided by its final value (1 for fixed masks; below 1 for ramps), used to
        scale the FLOP estimate.
      prepare: ``(params, collections) -> (params, collections, info)``, a host-side
        transform of the incoming params and model collections (numpy trees) that
        :func:`~sparsejax.experiment.train.run_phase` applies once, when the phase
        starts fresh (not when it resumes from its own checkpoint), before the
        optimizer state and the pruning masks are built; e.g. ASP's channel
        permutation. ``info`` (a JSON-able dict) is saved in the phase's checkpoint
        directory, logged and reported under the phase in ``summary.json``
        (``phases[i]["permutation"]``); ``None``: no transform.
      optimizer_wrapper: ``optimizer -> optimizer`` wrapping the phase's whole optimizer
        chain (a :mod:`sparsejax.dst` method or :func:`sparsejax.alternating.acdc`: it must see
        the raw gradients and own the optimizer state to reset it), or ``None``. Its
        masks live in the optimizer state (checkpointed with it; ``get_masks`` finds
        them) and the phase is costed as pruned (``costs.PRUNED`` at the counted weight
        density, scaled by ``mean_sparsity_ratio``).
    """

    name: str
    num_steps: int
    lr_scale: float = 1.0
    method: Any = None
    pruning: optax.GradientTransformation | None = None
    gradient_transform: optax.GradientTransformation | None = None
    mean_sparsity_ratio: float = 1.0
    prepare: Optional[Callable[[Any, Any], tuple[Any, Any, dict]]] = None
    optimizer_wrapper: Optional[Callable[[optax.GradientTransformation],
                                         optax.GradientTransformation]] = None

    def model(self, base: nn.Module) -> nn.Module:
        """The model this phase trains: ``base`` or ``sparsify(base, method)``."""
        if self.method is None:
            return base
        from sparsejax.adapters import sparsify

        return sparsify(base, self.method)

    def policies(self, layers: Sequence[costs.Layer]) -> dict[str, Any]:
        """Kernel path -> the :class:`~sparsejax.ops.Policy` each sparse layer trains with.

        The method's layers (:meth:`~sparsejax.methods.Method.plan` and
        :meth:`~sparsejax.methods.Method.layer_policy`), or every layer under
        :data:`sparsejax.analysis.costs.PRUNED` in a phase with pruning masks (``pruning``
        or ``optimizer_wrapper``); empty for a dense phase.
        """
        if self.method is not None:
            infos = self._infos(layers)
            return {f"{p}/kernel": self.method.layer_policy(infos[p], s)
                    for p, s in self.method.plan(list(infos.values())).items()}
        if self.pruning is not None or self.optimizer_wrapper is not None:
            return {l.kernel: costs.PRUNED for l in layers}
        return {}

    def densities(self, state: Mapping[str, Any], layers: Sequence[costs.Layer]
                  ) -> dict[str, float]:
        """Kernel path -> density of the weights the phase's forward pass multiplies with.

        A method's weight rule gives it (SWAT and STE report their per-layer plan
        ``1 - s_l``; SWAT-M's budgets move during training around the same
        total); otherwise the nonzeros of the final params are counted with
        :func:`sparsejax.analysis.summary.summary` (pruned weights are exactly 0).
        """
        kernels = {l.kernel: l for l in layers}
        rows = summary(jax.device_get(state["params"])).layers if state else []
        out = {r.path: r.nonzero / r.params for r in rows if r.path in kernels and r.params}
        for kernel, policy in self.policies(layers).items():
            rule = None if policy is None else policy.weight
            d = None if rule is None else rule.density(kernels[kernel].out_features)
            if d is not None:
                out[kernel] = d
        return out

    def fractions(self, layers: Sequence[costs.Layer], densities: Mapping[str, float]
                  ) -> dict[str, costs.Fractions]:
        """Kernel path -> ``(f, a, w)`` cost fractions of the phase's layers
        (:func:`sparsejax.analysis.costs.policy_fractions`; ``densities`` give the weight
        density of masks only the data decides)."""
        by_kernel = {l.kernel: l for l in layers}
        return {k: costs.policy_fractions(p, by_kernel[k], densities.get(k, 1.0))
                for k, p in self.policies(layers).items()}

    def _infos(self, layers: Sequence[costs.Layer]) -> dict[str, Any]:
        from sparsejax.methods import LayerInfo

        return {l.path: LayerInfo(l.path, l.kind, l.kernel_shape, l.out_features)
                for l in layers}


def _rule(regex: str) -> str | None:
    """``exclude`` as a path rule (``""`` = none); an invalid regex is a config error."""
    if not isinstance(regex, str):
        raise ConfigError(f"config.method.exclude must be a regex string, got {regex!r}.")
    try:
        re.compile(regex)
    except re.error as error:
        raise ConfigError(f"config.method.exclude={regex!r} is not a valid regular expression "
                          f"({error}); e.g. 'head' or 'conv1|fc3'.") from None
    return regex or None


def _check(ok: bool, field: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"config.method.{field} must be {want}, got {value!r}.")


def _check_distribution(distribution: str) -> None:
    _check(distribution in DISTRIBUTIONS, "distribution", distribution,
           f"one of {', '.join(DISTRIBUTIONS)}")


def dense(ctx: "Context") -> list[Phase]:
    """Dense training (the baseline): one phase of the main length."""
    return [Phase("train", ctx.main_steps)]


def _criterion(name: str, recipe: str, allowed: Sequence[str], seed: int) -> criteria.Criterion:
    """``config.method.criterion`` as a criterion value (a config error lists the valid names)."""
    if name not in allowed:
        hint = ("; snip prunes at initialisation: use the magnitude recipe "
                "(experiments/han.py:criterion=snip)" if name == "snip" else "")
        raise ConfigError(f"config.method.criterion={name!r} is not a criterion of recipe "
                          f"{recipe!r}; valid: {', '.join(allowed)}{hint}.")
    return {"magnitude": criteria.Magnitude(), "random": criteria.Random(seed),
            "saliency": criteria.Saliency()}[name]


def magnitude(ctx: "Context", *, sparsity: float = 0.9, iterations: int = 1,
              retrain_epochs: float = 0.0, retrain_lr_scale: float = 0.1,
              distribution: str = "uniform", q: float = 0.0, layers: str = "",
              exclude: str = "", criterion: str = "magnitude") -> list[Phase]:
    """Han et al.'s prune → retrain: dense training, then ``iterations`` rounds of
    one-shot pruning (by magnitude or another ``criterion``) followed by retraining with
    fixed masks; or, with ``criterion="snip"``, pruning at initialisation (SNIP).

    Args:
      ctx: recipe context.
      sparsity: final sparsity; round ``i`` of ``n`` prunes to
        ``1 - (1 - sparsity) ** (i / n)`` (equal fractions of the survivors).
      iterations: prune → retrain rounds (Han: 1 for LeNets, 5 for VGG-16).
      retrain_epochs: length of each retraining phase (0: the main length).
      retrain_lr_scale: retraining LR relative to the original (Han: 1/10 for
        LeNets, 1/100 for AlexNet).
      distribution: per-layer spread of the sparsity (``uniform``, ``erk``, ``global``).
      q: if > 0, Han's rule ``|W| > q · std(W)`` per layer instead of a target.
      layers: per-layer final targets instead of ``sparsity``,
        ``"regex=sparsity,..."`` (the first regex that matches a kernel path
        wins; every pruned kernel must match one; uniform only), e.g. Han's
        LeNet-300-100 ``"fc1=0.92,fc2=0.91,fc3=0.74"``; each round prunes every
        layer to ``1 - (1 - s_l) ** (i / n)``.
      exclude: regex of parameters left dense (e.g. ``"head"``).
      criterion: what ranks the weights at each pruning (:mod:`sparsejax.criteria`):
        ``magnitude`` (Han), ``random`` (seeded by the run's seed; the lower baseline),
        ``saliency`` (``|w · g|`` with the gradient of the retraining phase's
        first batch, at the trained weights: the masks are made at that phase's
        first step, so no "accuracy right after pruning" is reported), or ``snip`` (Lee et al. 2019: no dense phase; ``|w · g|`` at the
        initial weights with the gradient of the first training batch, masks
        fixed, one phase of the main length at the full learning rate;
        ``iterations`` must be 1 and ``retrain_*`` are unused; the paper
        prunes globally: ``distribution=global``). ``q`` takes ``magnitude`` only.

    Returns:
      ``1 + iterations`` phases (one for ``snip``).

    References:
      Han et al., "Learning both Weights and Connections for Efficient Neural
      Networks", NeurIPS 2015; Lee et al., "SNIP: Single-shot Network Pruning
      based on Connection Sensitivity", ICLR 2019; Molchanov et al., ICLR 2017.
    """
    if iterations < 1:
        raise ValueError(f"config.method.iterations must be >= 1, got {iterations}.")
    _check(isinstance(iterations, int), "iterations", iterations, "an int >= 1")
    _check(retrain_epochs >= 0, "retrain_epochs", retrain_epochs, ">= 0 (0: the main length)")
    _check(retrain_lr_scale > 0, "retrain_lr_scale", retrain_lr_scale, "positive")
    _check(q >= 0, "q", q, ">= 0 (0: prune to the target sparsity)")
    _check_distribution(distribution)
    rule = (criteria.Saliency() if criterion == "snip"
            else _criterion(criterion, "magnitude", criteria.CRITERIA, ctx.seed))
    _check(q == 0 or criterion == "magnitude", "q", q,
           f"0 with criterion={criterion!r} (Han's q·std rule thresholds the weights: "
           "criterion=magnitude)")
    targets = _layer_targets(layers, q, distribution)
    if criterion == "snip":
        # SNIP = |w · g| at the initial weights: a saliency refresh at step 0 of a phase
        # that starts from the initialisation, with the first batch's raw gradient.
        _check(iterations == 1, "iterations", iterations, "1 with criterion='snip' (one "
               "pruning at initialisation)")
        tx = pruning(sparsity if targets is None else targets, distribution=distribution,
                     update_every=None, exclude=_rule(exclude), criterion=rule)
        return [Phase("snip", ctx.main_steps, pruning=tx)]
    steps = ctx.epochs_to_steps(retrain_epochs) if retrain_epochs > 0 else ctx.main_steps
    phases = [Phase("dense", ctx.main_steps)]
    for i in range(1, iterations + 1):
        round_ = lambda s: 1.0 - (1.0 - s) ** (i / iterations)
        target = (None if q > 0 else round_(sparsity) if targets is None
                  else {regex: round_(s) for regex, s in targets.items()})
        tx = pruning(target, distribution=distribution, update_every=None,
                     exclude=_rule(exclude), q=q * i / iterations if q > 0 else None,
                     criterion=rule)
        phases.append(Phase(f"retrain{i}", steps, lr_scale=retrain_lr_scale, pruning=tx))
    return phases


def _layer_targets(text: str, q: float, distribution: str) -> dict[str, float] | None:
    """``"fc1=0.92,fc3=0.74"`` as ``{regex: sparsity}`` (``""``: ``None``)."""
    _check(isinstance(text, str), "layers", text, "a string 'regex=sparsity,...'")
    if not text:
        return None
    _check(q == 0 and distribution == "uniform", "layers", text,
           "used with q=0 and distribution='uniform' (it sets every layer's target itself)")
    targets = {}
    for item in text.split(","):
        regex, _, value = item.strip().rpartition("=")
        try:
            re.compile(regex)
            targets[regex] = float(value)
        except (re.error, ValueError):
            regex = ""
        _check(bool(regex) and 0.0 <= targets.get(regex, -1.0) < 1.0, "layers", text,
               "'regex=sparsity' pairs with valid regexes and sparsities in [0, 1) (e.g. "
               "'fc1=0.92,fc2=0.91,fc3=0.74')")
    return targets


def _asp_eligible(axes: Mapping[str, tuple[int, ...]] | None) -> Callable[[str, Any], bool]:
    """ASP's layer rule: kernels with ``out % 8 == 0`` and ``in % 16 == 0``.

    ``in`` is the flattened contraction size and ``out`` the size of the axes after
    the last contraction axis, read from ``axes`` (the model's
    :func:`sparsejax.contraction_axes`); without a map, or for a leaf it does not
    list, the bare-kernel rule: ``in`` = axis -2, ``out`` = axis -1.
    """

    def eligible(path: str, leaf: Any) -> bool:
        shape = tuple(getattr(leaf, "shape", ()))
        if axes is not None and path in axes:
            contracted = axes[path]
            size_in = math.prod(shape[a] for a in contracted)
            size_out = math.prod(shape[max(contracted) + 1:])
            return size_in % 16 == 0 and size_out % 8 == 0
        if axes is not None:
            return False  # Not a layer kernel (a bias, a norm scale, an embedding).
        return len(shape) >= 2 and shape[-1] % 8 == 0 and shape[-2] % 16 == 0

    return eligible


def asp(ctx: "Context", *, n: int = 2, m: int = 4, exclude: str = "",
        permute: bool = False) -> list[Phase]:
    """NVIDIA ASP: train dense → one-shot N:M magnitude masks → retrain, same schedule.

    N:M groups run along each kernel's contraction axes, flattened, read from the
    model (``ctx.axes``, :func:`sparsejax.contraction_axes`: an attention
    query ``(in, heads, head_dim)`` groups along ``in``, its output projection
    ``(heads, head_dim, out)`` along ``heads × head_dim``); as in ASP only kernels
    with ``out % 8 == 0`` and ``in % 16 == 0`` are pruned (the first conv of an
    RGB network is skipped), biases and norms never. Without ``ctx.axes`` the
    bare-tree rule of :func:`sparsejax.tree.compute_masks` applies (Dense
    ``(in, out)``: axis 0, Conv ``(h, w, in, out)``: axis 2; other ranks refused).

    With ``permute=True`` (ASP's channel permutation, Pool & Yu 2021), the trained
    dense params are permuted right before the masks are computed: for every
    producer → consumer pair of consecutive layers whose consumer is pruned, the
    consumer's input channels are regrouped to maximise the magnitude its N:M
    masks keep (:func:`sparsejax.permutation.search_permutation`), and the
    producer's output channels (kernel, bias, per-channel norm parameters and
    statistics) follow, so the network function is unchanged
    (:func:`sparsejax.permutation.permute_model`: pairs inferred in call order,
    each checked on the model's logits for a random input batch). Only models
    whose layer outputs reach the next layer through per-channel operations are
    supported (MLPs, conv chains without residual connections or concatenation);
    others raise a ``ValueError`` naming the unsafe pairs. The retrain phase
    reports, per consumer, ``kept_base``, ``kept_perm``, ``kept_unstructured``,
    ``total`` (sums of ``|w|``), ``efficacy`` and ``regroupings`` under
    ``phases[1]["permutation"]`` of ``summary.json``.

    Args:
      ctx: recipe context.
      n: kept weights per group.
      m: group size.
      exclude: regex of parameters left dense.
      permute: search and apply channel permutations before pruning.

    Returns:
      Two phases of the main length.

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378;
      NVIDIA apex ``apex.contrib.sparsity``; Pool & Yu, "Channel Permutations for
      N:M Sparsity", NeurIPS 2021.
    """
    _check(isinstance(permute, bool), "permute", permute,
           "a bool (True: search channel permutations before pruning)")
    tx = pruning(None, pattern=NM(n, m), update_every=None, include=_asp_eligible(ctx.axes),
                 exclude=_rule(exclude), axes=ctx.axes)
    prepare = _permute_prepare(ctx, n, m, exclude) if permute else None
    return [Phase("dense", ctx.main_steps),
            Phase("retrain", ctx.main_steps, pruning=tx, prepare=prepare)]


def _permute_prepare(ctx: "Context", n: int, m: int, exclude: str
                     ) -> Callable[[Any, Any], tuple[Any, Any, dict]]:
    """:attr:`Phase.prepare` of ASP's channel permutation (see :func:`asp`)."""

    def prepare(params: Any, collections: Any) -> tuple[Any, Any, dict]:
        import numpy as np

        from sparsejax import paths, permutation

        if ctx.model is None or ctx.input_shape is None:
            raise ValueError("config.method.permute=True needs the model and its input shape "
                             "in the recipe context (train_and_evaluate passes them).")
        eligible = _asp_eligible(ctx.axes)
        pruned = set(paths.selected_paths(params, include=eligible, exclude=_rule(exclude)))
        axes = ctx.axes or {}
        # Only consumers grouped along their input-channel axis (-2) alone.
        include = lambda path: path in pruned and (
            path not in axes or tuple(axes[path]) == (np.ndim(paths.leaf_paths(params)[path]) - 2,))
        kept = {k: v for k, v in collections.items() if k != "sparsity"}
        x = np.random.default_rng(0).standard_normal((8, *ctx.input_shape)).astype(np.float32)
        try:
            variables, found = permutation.permute_model(
                ctx.model, {"params": params, **kept}, x, include=include, n=n, m=m,
                train=False)
        except ValueError as error:
            raise ValueError(
                f"config.method.permute=True: {error} permute=True supports only models whose "
                "layer outputs feed the next layer through per-channel operations (MLPs; conv "
                "chains without flatten or residual connections); use permute=False for this "
                "model.") from error
        variables = dict(variables)
        params = variables.pop("params")
        info = {consumer: {"producer": producer, "efficacy": result.efficacy,
                           "kept_base": result.kept_base, "kept_perm": result.kept_perm,
                           "kept_unstructured": result.kept_unstructured,
                           "total": result.total, "regroupings": result.regroupings,
                           "converged": result.converged}
                for consumer, (producer, result) in found.items()}
        return params, {**collections, **variables}, info

    return prepare


def gradual(ctx: "Context", *, sparsity: float = 0.9, begin: float = 0.1, end: float = 0.6,
            frequency: int = 10, distribution: str = "uniform",
            exclude: str = "", criterion: str = "magnitude") -> list[Phase]:
    """Gradual magnitude pruning in one phase: ``s_t = s_f (1 - (1 - (t - t0)/(t1 - t0))^3)``
    for ``t`` in ``[t0, t1]``, masks refreshed every ``frequency`` steps, then fixed.

    Args:
      ctx: recipe context.
      sparsity: final sparsity.
      begin: start of the ramp as a fraction of the training steps.
      end: end of the ramp (masks are then fixed) as a fraction of the steps.
      frequency: steps between mask refreshes.
      distribution: per-layer spread (``uniform``, ``erk``, ``global``).
      exclude: regex of parameters left dense.
      criterion: what ranks the weights at each refresh: ``magnitude`` (Zhu &
        Gupta), ``random`` (seeded by the run's seed, a fresh draw among the surviving weights per
        refresh) or ``saliency`` (``|w · g|`` with the refresh step's gradient;
        jaxpruner's saliency pruning). Pruned weights score 0 under the last
        two, so the masks only grow sparser.

    Returns:
      One phase.

    References:
      Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878; Molchanov et
      al., ICLR 2017 (saliency).
    """
    _check(0 <= begin < end <= 1, "begin/end", (begin, end),
           "fractions of training with 0 <= begin < end <= 1")
    _check(isinstance(frequency, int) and frequency >= 1, "frequency", frequency, "an int >= 1")
    _check_distribution(distribution)
    rule = _criterion(criterion, "gradual", ("magnitude", "random", "saliency"), ctx.seed)
    total = ctx.main_steps
    t0, t1 = int(begin * total), max(int(end * total), int(begin * total) + 1)
    sched = schedules.polynomial(sparsity, begin_step=t0, end_step=t1, frequency=frequency)
    tx = pruning(sched, distribution=distribution, update_every=frequency, begin_step=t0,
                 end_step=t1 + 1, exclude=_rule(exclude), criterion=rule)
    values = [float(sched(t)) for t in range(0, total, max(1, total // 200))]
    return [Phase("train", total, pruning=tx,
                  mean_sparsity_ratio=(sum(values) / len(values)) / sparsity)]


_STRUCTURED = {"none": False, "slice": "slice", "filter": "filter", "channel": "channel"}


def swat(ctx: "Context", *, sparsity: float = 0.8, distribution: str = "uniform",
         structured: str = "none", period: int = 1, dense_first: bool = True,
         dense_last: bool = False, exclude: str = "", saved: str = "auto") -> list[Phase]:
    """SWAT: top-K weights forward, top-K weights and activations saved for backward.

    Args:
      ctx: recipe context.
      sparsity: weight and activation sparsity (global target for ERK / momentum).
      distribution: ``"uniform"`` (SWAT-U), ``"erk"`` (SWAT-ERK), ``"momentum"`` (SWAT-M).
      structured: ``"none"``, ``"slice"`` (kernel slices), ``"filter"`` or ``"channel"``.
      period: steps between exact top-K threshold refreshes (official: 10–20 on CIFAR).
      dense_first: keep the first layer dense (the official SWAT-U configs; the
        official ERK and momentum configs sparsify it: ``experiments/swat.py``
        sets False for them).
      dense_last: keep the last layer dense.
      exclude: regex of module paths kept dense.
      saved: how the activation saved for dW is kept (``swat(saved=...)``):
        ``"auto"`` (packed wherever the kept count is static, else masked),
        ``"packed"`` (bits + kept values; needs ``period=1`` and a uniform or ERK
        budget), ``"masked"`` (a masked dense array) or ``"remat"`` (recomputed
        in the backward pass: least memory with BatchNorm).

    Returns:
      One phase.

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020.
    """
    from sparsejax import methods, ops

    if structured not in _STRUCTURED:
        raise ValueError(f"config.method.structured={structured!r}; valid: "
                         f"{', '.join(_STRUCTURED)}.")
    if saved not in ops.SAVED:
        raise ValueError(f"config.method.saved={saved!r}; valid: {', '.join(ops.SAVED)}.")
    method = methods.swat(sparsity, distribution=distribution, structured=_STRUCTURED[structured],
                          period=period, dense_first=dense_first, dense_last=dense_last,
                          exclude=_rule(exclude), saved=saved)
    return [Phase("train", ctx.main_steps, method=method)]


def ste(ctx: "Context", *, pattern: str = "2:4", sparsity: float = 0.0, decay: float = 0.0,
        exclude: str = "") -> list[Phase]:
    """STE / SR-STE: forward with N:M (or top-K) masked weights, dense gradient to W.

    Args:
      ctx: recipe context.
      pattern: ``"N:M"`` (e.g. ``"2:4"``) or ``"unstructured"``.
      sparsity: sparsity of an unstructured pattern (N:M fixes its own).
      decay: SR-STE's λ (0 = plain STE; the paper uses 2e-4).
      exclude: regex of module paths kept dense.

    Returns:
      One phase.

    References:
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", ICLR 2021.
    """
    from sparsejax import methods

    rule = parse_pattern(pattern)
    method = methods.ste(rule, sparsity=None if rule.fixed_sparsity is not None else sparsity,
                         decay=decay, exclude=_rule(exclude))
    return [Phase("train", ctx.main_steps, method=method)]


def meprop(ctx: "Context", *, k: float = 0.2, unified: bool = False,
           exclude: str = "") -> list[Phase]:
    """meProp: top-k output gradients per row in the backward of hidden layers.

    Args:
      ctx: recipe context.
      k: kept entries per row: a count if ``>= 1`` (the paper: 80 of 500), else
        the kept fraction of each layer's width.
      unified: one shared set of k columns per batch (smaller dense GEMMs).
      exclude: regex of module paths kept dense.

    Returns:
      One phase.

    References:
      Sun et al., "meProp", ICML 2017.
    """
    from sparsejax import methods

    k = int(k) if k >= 1 else float(k)
    method = methods.meprop(k, unified=unified, exclude=_rule(exclude))
    return [Phase("train", ctx.main_steps, method=method)]


def dsg(ctx: "Context", *, sparsity: float = 0.5, epsilon: float = 0.5,
        exclude: str = "") -> list[Phase]:
    """DSG: output neurons chosen per row by a sparse random projection.

    Args:
      ctx: recipe context.
      sparsity: fraction γ of output neurons dropped per row.
      epsilon: Johnson–Lindenstrauss distortion of the projection.
      exclude: regex of module paths kept dense.

    Returns:
      One phase.

    References:
      Liu et al., "Dynamic Sparse Graph for Efficient Deep Learning", ICLR 2019.
    """
    from sparsejax import methods

    method = methods.dsg(sparsity, epsilon=epsilon, exclude=_rule(exclude))
    return [Phase("train", ctx.main_steps, method=method)]


def grad_drop(ctx: "Context", *, sparsity: float = 0.9, exclude: str = "") -> list[Phase]:
    """Weight-gradient drop: the smallest fraction of each dW is zeroed before the optimizer.

    Args:
      ctx: recipe context.
      sparsity: fraction of each kernel gradient dropped.
      exclude: regex of parameter paths left untouched.

    Returns:
      One phase.

    References:
      Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017.
    """
    from sparsejax import methods

    tx = methods.grad_drop(sparsity, exclude=_rule(exclude))
    return [Phase("train", ctx.main_steps, gradient_transform=tx)]


def forward_topk(ctx: "Context", *, sparsity: float = 0.8, operand: str = "activations",
                 dense_first: bool = True, dense_last: bool = False,
                 exclude: str = "") -> list[Phase]:
    """SWAT's sensitivity study: top-K of one forward-side operand of every sparse layer.

    Args:
      ctx: recipe context.
      sparsity: fraction of the operand removed per layer.
      operand: ``"activations"`` (the layer's input A: forward, dA and dW run on
        the kept inputs) or ``"weights"`` (top-K W in the forward and dA, dense
        dW, as STE).
      dense_first: keep the first layer dense (as SWAT-U).
      dense_last: keep the last layer dense.
      exclude: regex of module paths kept dense.

    Returns:
      One phase.

    References:
      Raihan & Aamodt, "Sparse Weight Activation Training", NeurIPS 2020 (Section 3).
    """
    from sparsejax import methods

    method = methods.forward_topk(sparsity, operand=operand, dense_first=dense_first,
                                  dense_last=dense_last, exclude=_rule(exclude))
    return [Phase("train", ctx.main_steps, method=method)]


_ONE_SHOT_CRITERIA = ("wanda", "magnitude", "magnitude_output")


def wanda(ctx: "Context", *, criterion: str = "wanda", sparsity: float = 0.5,
          pattern: str = "unstructured", calibration_batches: int = 8,
          sequential: bool = False, exclude: str = "") -> list[Phase]:
    """One-shot pruning of the trained dense model, without retraining: Wanda or magnitude.

    Phases: ``dense`` (the main length), then ``pruned`` (0 steps), whose
    :attr:`Phase.prepare` prunes the dense params once; the run's final accuracy
    (``summary.json``) is that of the pruned model, the dense one is the
    ``dense`` phase's last eval in ``metrics.jsonl``; the prepare info (criterion,
    pruned layers, their sparsity) is ``phases[1]["permutation"]`` of ``summary.json``
    (the report's field for a phase's prepare info). Multi-process runs: every
    process reads the calibration batches on the host (single-process only).
    Pruned layers: every ``nn.Dense`` / ``nn.DenseGeneral`` / ``nn.Einsum``
    kernel except the last one called (the head), as in the paper (the blocks'
    linear layers); Conv kernels (a ViT's patch embedding) stay dense.

    Args:
      ctx: recipe context (needs ``model`` and ``calibration``, which
        :func:`~sparsejax.experiment.train.train_and_evaluate` passes).
      criterion: ``"wanda"`` (``|W| · ‖X‖₂``, per output), ``"magnitude"``
        (``|W|`` per layer, the paper's baseline) or ``"magnitude_output"``
        (``|W|`` per output: Wanda's comparison group without the norms).
      sparsity: fraction removed (unstructured).
      pattern: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``, along each
        kernel's contraction axes; ``sparsity`` is then ignored).
      calibration_batches: training batches whose layer inputs give the norms
        (the first ones of the training stream).
      sequential: re-collect the inputs block by block after pruning the
        earlier blocks (the official LLM code) instead of one pass through the
        dense model (the official image-classifier code).
      exclude: regex of kernels left dense besides the head.

    Returns:
      Two phases.

    References:
      Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large
      Language Models", ICLR 2024.
    """
    _check(criterion in _ONE_SHOT_CRITERIA, "criterion", criterion,
           f"one of {list(_ONE_SHOT_CRITERIA)}")
    _check(isinstance(calibration_batches, int) and calibration_batches >= 1,
           "calibration_batches", calibration_batches, "an int >= 1")
    _check(isinstance(sequential, bool), "sequential", sequential, "a bool")
    target = parse_pattern(pattern)
    if isinstance(target, Unstructured):
        _check(isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0, "sparsity",
               sparsity, "in [0, 1)")
        target = float(sparsity)
    _rule(exclude)

    def prepare(params: Any, collections: Any) -> tuple[Any, Any, dict]:
        import numpy as np

        from sparsejax import paths
        from sparsejax.wanda import wanda as one_shot, wanda_layers, wanda_masks
        from sparsejax.tree import apply_masks, prune

        if ctx.model is None or ctx.calibration is None:
            raise ValueError("the wanda recipe needs the model and calibration batches in the "
                             "recipe context (train_and_evaluate passes them).")
        batches = [np.asarray(ctx.calibration(i)) for i in range(calibration_batches)]
        kept = {k: v for k, v in collections.items() if k != "sparsity"}
        # Wanda's layer selection (every supported kernel but the head), for every criterion.
        axes = wanda_layers(ctx.model, params, batches[0], collections=kept,
                                      apply_kwargs={"train": False})
        axes = {p: a for p, a in list(axes.items())[:-1]
                if not (exclude and re.search(exclude, p))}
        if not axes:
            raise ValueError("the wanda recipe found no layer to prune (the model's only "
                             "Dense / DenseGeneral / Einsum layer is its head).")
        chosen = set(axes)
        include = lambda path, _: path in chosen
        if criterion == "wanda":
            params, _ = one_shot(ctx.model, params, batches, target, include=include,
                                            collections=kept, apply_kwargs={"train": False},
                                            sequential=sequential)
        elif criterion == "magnitude_output":
            leaves = paths.leaf_paths(params)
            scores = {p: np.abs(np.asarray(leaves[p], np.float32)) for p in chosen}
            params = apply_masks(params, wanda_masks(params, scores, target, axes))
        else:
            pattern_ = target if isinstance(target, NM) else Unstructured()
            params, _ = prune(params, None if isinstance(target, NM) else target,
                              pattern=pattern_, include=include, axes=axes)
        rows = [r for r in summary(params).layers if r.path in chosen]
        info = {"criterion": criterion, "target": str(target), "pruned_layers": len(rows),
                "calibration_batches": calibration_batches if criterion == "wanda" else 0,
                "sequential": sequential,
                "pruned_sparsity": 1.0 - sum(r.nonzero for r in rows) / sum(r.params
                                                                          for r in rows)}
        return params, collections, info

    return [Phase("dense", ctx.main_steps), Phase("pruned", 0, prepare=prepare)]


def _end_step(ctx: "Context", end: float) -> int:
    """``end`` (a fraction of training, in ``(0, 1]``) as a step of the main phase."""
    _check(isinstance(end, (int, float)) and 0 < end <= 1, "end", end,
           "a fraction of training in (0, 1] (e.g. 0.75: mask updates stop at 75%)")
    return max(1, round(end * ctx.main_steps))


def _wrapped_phase(ctx: "Context", factory: Callable[..., optax.GradientTransformation],
                   mean_sparsity_ratio: float = 1.0, **kwargs: Any) -> list[Phase]:
    """One phase of the main length whose optimizer ``factory`` wraps (a DST method or
    AC/DC); the factory's argument checks run here, at config validation."""
    kwargs["exclude"] = _rule(kwargs.get("exclude", ""))
    factory(optax.identity(), **kwargs)  # validates the arguments now (cheap: no init)
    wrapper = lambda optimizer: factory(optimizer, **kwargs)
    return [Phase("train", ctx.main_steps, optimizer_wrapper=wrapper,
                  mean_sparsity_ratio=mean_sparsity_ratio)]


def static(ctx: "Context", *, sparsity: float = 0.9, distribution: str = "erk",
           seed: int = 0, exclude: str = "") -> list[Phase]:
    """Static random sparse training: random masks at init, never changed (the lower
    baseline of dynamic sparse training; :func:`sparsejax.dst.static_random`).

    Args:
      ctx: recipe context.
      sparsity: fraction of the kernels' weights removed (the global target for ERK).
      distribution: ``"erk"`` (as RigL's baselines) or ``"uniform"``.
      seed: added to the run's seed (``config.seed``) for the random masks, so every
        seed of a sweep draws its own.
      exclude: regex of parameters left dense.

    Returns:
      One phase.

    References:
      Evci et al., "Rigging the Lottery", ICML 2020 (static / ERK baselines).
    """
    from sparsejax import dst

    return _wrapped_phase(ctx, dst.static_random, sparsity=sparsity, distribution=distribution,
                          seed=ctx.seed + seed, exclude=exclude)


def sparse_evolutionary(ctx: "Context", *, sparsity: float = 0.9, distribution: str = "erk",
                        update_every: int = 100, drop_fraction: float = 0.3, end: float = 1.0,
                        seed: int = 0, exclude: str = "") -> list[Phase]:
    """SET: every ``update_every`` steps drop the smallest-magnitude fraction of each
    layer's active weights, regrow as many at random (:func:`sparsejax.dst.sparse_evolutionary`).

    Args:
      ctx: recipe context.
      sparsity: fraction of the kernels' weights removed (the global target for ERK).
      distribution: ``"erk"`` or ``"uniform"``.
      update_every: ``ΔT``, steps between mask updates.
      drop_fraction: ``ζ``, fraction of the active weights replaced per update.
      end: fraction of training after which the masks stay fixed (1: never).
      seed: added to the run's seed (``config.seed``) for the random masks, so every
        seed of a sweep draws its own.
      exclude: regex of parameters left dense.

    Returns:
      One phase.

    References:
      Mocanu et al., Nature Communications 9, 2383 (2018).
    """
    from sparsejax import dst

    return _wrapped_phase(ctx, dst.sparse_evolutionary, sparsity=sparsity,
                          distribution=distribution, update_every=update_every,
                          drop_fraction=drop_fraction, end_step=_end_step(ctx, end),
                          seed=ctx.seed + seed, exclude=exclude)


def rigl(ctx: "Context", *, sparsity: float = 0.9, distribution: str = "erk",
         update_every: int = 100, drop_fraction: float = 0.3, end: float = 0.75,
         seed: int = 0, exclude: str = "") -> list[Phase]:
    """RigL: drop by magnitude, regrow by the dense gradient's magnitude, drop fraction
    on a cosine to ``end`` (:func:`sparsejax.dst.rigl`).

    Args:
      ctx: recipe context.
      sparsity: fraction of the kernels' weights removed (the global target for ERK).
      distribution: ``"erk"`` (the paper) or ``"uniform"``.
      update_every: ``ΔT`` (100 in the paper).
      drop_fraction: ``α``, the initial drop fraction (0.3).
      end: ``T_end`` as a fraction of training (0.75).
      seed: added to the run's seed (``config.seed``) for the random masks, so every
        seed of a sweep draws its own.
      exclude: regex of parameters left dense.

    Returns:
      One phase.

    References:
      Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020.
    """
    from sparsejax import dst

    return _wrapped_phase(ctx, dst.rigl, sparsity=sparsity, distribution=distribution,
                          update_every=update_every, drop_fraction=drop_fraction,
                          end_step=_end_step(ctx, end), seed=ctx.seed + seed, exclude=exclude)


def snfs(ctx: "Context", *, sparsity: float = 0.9, distribution: str = "erk",
         update_every: int = 100, drop_fraction: float = 0.5, momentum: float = 0.9,
         end: float = 1.0, seed: int = 0, exclude: str = "") -> list[Phase]:
    """Sparse momentum (SNFS): prune by magnitude, redistribute and regrow by the
    gradient momentum (:func:`sparsejax.dst.snfs`).

    Args:
      ctx: recipe context.
      sparsity: fraction of the kernels' weights removed (the global target for ERK).
      distribution: initial ``"erk"`` or ``"uniform"`` sparsities.
      update_every: steps between mask updates (the paper: every epoch).
      drop_fraction: the initial prune rate (0.5), cosine-decayed to ``end``.
      momentum: decay of the gradient momentum regrowth ranks by (0.9).
      end: fraction of training where mask updates stop (1: the end).
      seed: added to the run's seed (``config.seed``) for the random masks, so every
        seed of a sweep draws its own.
      exclude: regex of parameters left dense.

    Returns:
      One phase.

    References:
      Dettmers & Zettlemoyer, "Sparse Networks from Scratch", arXiv:1907.04840, 2019.
    """
    from sparsejax import dst

    return _wrapped_phase(ctx, dst.snfs, sparsity=sparsity, distribution=distribution,
                          update_every=update_every, drop_fraction=drop_fraction,
                          momentum=momentum, end_step=_end_step(ctx, end),
                          seed=ctx.seed + seed, exclude=exclude)


def acdc(ctx: "Context", *, sparsity: float = 0.9, distribution: str = "uniform",
         warmup: float = 0.1, sparse_phase: float = 0.05, dense_phase: float = 0.05,
         finetune: float = 0.9, reset_state: str = "dense", exclude: str = "") -> list[Phase]:
    """AC/DC: dense warm-up, alternating sparse (magnitude masks) and dense phases, then
    sparse fine-tuning, in one phase of the main length (:func:`sparsejax.alternating.acdc`).

    Args:
      ctx: recipe context.
      sparsity: sparsity of the sparse phases.
      distribution: ``"uniform"``, ``"erk"`` or ``"global"``.
      warmup: dense warm-up as a fraction of training (the paper: 10 of 100 epochs).
      sparse_phase: length of each sparse phase, a fraction of training (5 epochs).
      dense_phase: length of each dense phase, a fraction of training (5 epochs).
      finetune: fraction of training where the final sparse phase starts (1: none).
      reset_state: ``"dense"`` (reset the optimizer state at each dense-phase start, as
        the paper), ``"all"`` (at every phase start) or ``"none"``.
      exclude: regex of parameters left dense.

    Returns:
      One phase; its ``mean_sparsity_ratio`` is the fraction of sparse steps.

    References:
      Peste et al., "AC/DC: Alternating Compressed/DeCompressed Training of Deep
      Neural Networks", NeurIPS 2021.
    """
    import numpy as np

    from sparsejax.alternating import acdc as acdc_factory, sparse_phase as sparse_at

    for field, value in (("warmup", warmup), ("sparse_phase", sparse_phase),
                         ("dense_phase", dense_phase), ("finetune", finetune)):
        _check(isinstance(value, (int, float)) and 0 <= value <= 1, field, value,
               "a fraction of training in [0, 1]")
    steps = lambda f: max(1, round(f * ctx.main_steps))
    schedule = dict(warmup_steps=round(warmup * ctx.main_steps),
                    sparse_steps=steps(sparse_phase), dense_steps=steps(dense_phase),
                    finetune_step=None if finetune >= 1 else round(finetune * ctx.main_steps))
    sparse = np.asarray(sparse_at(np.arange(ctx.main_steps), **schedule))
    return _wrapped_phase(ctx, acdc_factory, mean_sparsity_ratio=float(sparse.mean()),
                          sparsity=sparsity, distribution=distribution,
                          reset_state=reset_state, exclude=exclude, **schedule)


@dataclasses.dataclass(frozen=True)
class Context:
    """What a recipe needs to know about the run.

    Attributes:
      main_steps: steps of the main (dense-length) phase.
      steps_per_epoch: training batches per epoch.
      axes: ``{kernel path: contraction axes}`` of the model
        (:func:`sparsejax.contraction_axes`), for N:M pruning; ``None`` when the
        model is not known (config validation): the bare-kernel rule.
      model: the unmodified (zoo) model, for recipes that transform the params
        with it (ASP's channel permutation); ``None`` during config validation.
      input_shape: shape of one input example, e.g. ``(32, 32, 3)``; ``None``
        during config validation.
      calibration: ``i -> the i-th training batch's inputs`` (a host array), for
        recipes whose ``prepare`` runs the model on data (Wanda's input norms);
        ``None`` during config validation.
      seed: the run's seed (``config.seed``); recipes derive their random draws
        from it (random masks and criteria), so every seed of a sweep draws its own.
    """

    main_steps: int
    steps_per_epoch: int
    axes: Optional[Mapping[str, tuple[int, ...]]] = None
    model: Any = None
    input_shape: Optional[tuple[int, ...]] = None
    calibration: Optional[Callable[[int], Any]] = None
    seed: int = 0

    def epochs_to_steps(self, epochs: float) -> int:
        """``epochs`` of training as a number of steps (at least 1)."""
        return max(1, round(epochs * self.steps_per_epoch))


RECIPES: dict[str, Callable[..., list[Phase]]] = {
    "dense": dense,
    "magnitude": magnitude,
    "asp": asp,
    "gradual": gradual,
    "ste": ste,
    "swat": swat,
    "meprop": meprop,
    "dsg": dsg,
    "grad_drop": grad_drop,
    "forward_topk": forward_topk,
    "static": static,
    "set": sparse_evolutionary,
    "rigl": rigl,
    "snfs": snfs,
    "acdc": acdc,
    "wanda": wanda,
}
"""Recipe name (``config.method.name``) -> recipe function (add yours with :func:`register`)."""
_BUILT_IN = frozenset(RECIPES)


def register(name: str, factory: Callable[..., Any], *, recipe: bool = False) -> None:
    """Makes a method defined outside the library a ``config.method.name``.

    Call it in a config file (``launch.py`` imports the file before it reads the
    config, in every process): the method then trains, sweeps, checkpoints and
    reports like a built-in one, its FLOPs following from its policy
    (:meth:`Phase.fractions`).

    Args:
      name: the ``config.method.name`` (not a built-in recipe's name).
      factory: by default a method factory: keyword arguments (the other
        ``config.method`` fields, with defaults) -> a
        :class:`~sparsejax.methods.Method`, trained for one phase of the main
        length. With ``recipe=True``, a recipe ``(ctx, **fields) -> [Phase]``
        (several phases, pruning, a shorter schedule...).
      recipe: ``factory`` is a recipe, not a method factory.

    Raises:
      ValueError: ``name`` is a built-in recipe, or ``factory`` is not callable.

    Example:
      >>> # experiments/my_method.py
      >>> def act_only_swat(sparsity=0.8):
      ...     return ActOnlySWAT(sparsity=sparsity)      # a Method subclass
      >>> recipes.register("act_only_swat", act_only_swat)
      >>> # python launch.py --config=experiments/my_method.py --config.method.sparsity=0.9
    """
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in recipe of sparsejax; register your method "
                         "under another name.")
    if not callable(factory):
        raise ValueError(f"register({name!r}, ...) needs a callable, got {factory!r}.")
    if recipe:
        RECIPES[name] = factory
        return

    def method_recipe(ctx: "Context", **fields: Any) -> list[Phase]:
        return [Phase("train", ctx.main_steps, method=factory(**fields))]

    method_recipe.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(factory).parameters.values()])
    method_recipe.__doc__ = factory.__doc__
    RECIPES[name] = method_recipe


def parse_pattern(text: str) -> Pattern:
    """Parses ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``) into a pattern."""
    if text == "unstructured":
        return Unstructured()
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return NM(int(parts[0]), int(parts[1]))  # along each layer's contraction axes
    raise ValueError(f"Unknown pattern {text!r}; use 'unstructured' or 'N:M' such as '2:4'.")


def method_fields(name: str) -> list[str]:
    """The valid ``config.method`` fields of recipe ``name``: ``"name"`` and its arguments.

    Raises:
      ConfigError: an unknown recipe (the message lists the valid ones).

    Example:
      >>> method_fields("dsg")
      ['name', 'sparsity', 'epsilon', 'exclude']
    """
    if name not in RECIPES:
        match = nearest(str(name), RECIPES)
        hint = f" Did you mean {match!r}?" if match else ""
        raise ConfigError(f"Unknown method {name!r}; valid names: "
                          f"{', '.join(sorted(RECIPES))}.{hint}")
    return ["name"] + [p for p in inspect.signature(RECIPES[name]).parameters if p != "ctx"]


def with_method_defaults(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A config dict whose ``method`` lists every argument of its recipe, the omitted ones at
    the recipe's defaults (unknown recipes: unchanged).

    Sweeps record each run's config this way (``sweep.json``), so results say exactly
    which arguments made them, and an argument added to a recipe later, with a default
    that keeps the old behaviour, does not make them look stale.

    Example:
      >>> with_method_defaults({"method": {"name": "dsg", "sparsity": 0.8}})["method"]["epsilon"]
      0.5
    """
    method = config.get("method")
    recipe = RECIPES.get(method.get("name")) if isinstance(method, Mapping) else None
    if recipe is None:
        return config
    defaults = {n: p.default for n, p in inspect.signature(recipe).parameters.items()
                if n != "ctx" and p.default is not inspect.Parameter.empty}
    return {**config, "method": {**defaults, **method}}


def check_method(config: ml_collections.ConfigDict, main_steps: int,
                 steps_per_epoch: int) -> list[Phase]:
    """Validates ``config.method`` by building its phases (cheap: no data, no model).

    Args:
      config: the run config.
      main_steps: steps of the main phase (an estimate is fine).
      steps_per_epoch: training batches per epoch (an estimate is fine).

    Returns:
      The phases (discarded by :func:`sparsejax.experiment.config.validate`).

    Raises:
      ConfigError: one line naming ``config.method``, what is wrong and the fix.
    """
    try:
        return build_phases(config, main_steps, steps_per_epoch)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        text = " ".join(str(error).split())
        raise ConfigError(
            f"Invalid config.method for recipe {config.method.name!r}: {text} Fix it in the "
            "config file or with --config.method.<field>=...") from None


def build_phases(config: ml_collections.ConfigDict, main_steps: int,
                 steps_per_epoch: int,
                 axes: Optional[Mapping[str, tuple[int, ...]]] = None, *,
                 model: Any = None,
                 input_shape: Optional[tuple[int, ...]] = None,
                 calibration: Optional[Callable[[int], Any]] = None) -> list[Phase]:
    """The phases of ``config.method`` (``name`` + the recipe's arguments).

    Args:
      config: the run config.
      main_steps: steps of the main phase.
      steps_per_epoch: training batches per epoch.
      axes: the model's ``{kernel path: contraction axes}``
        (:func:`sparsejax.contraction_axes`), used by N:M pruning recipes.
      model: the unmodified model (ASP's channel permutation needs it at run time).
      input_shape: shape of one input example.
      calibration: ``i -> the i-th training batch's inputs`` (Wanda's calibration).

    Returns:
      The recipe's phases, in order.

    Raises:
      ValueError: unknown method name or argument (a ``ConfigError``; the message
        names the nearest valid one) or a bad argument value.

    Example:
      >>> config.method = ml_collections.ConfigDict({"name": "magnitude", "sparsity": 0.8})
      >>> [p.name for p in build_phases(config, 500, 11)]
      ['dense', 'retrain1']
    """
    kwargs = config.method.to_dict()
    name = kwargs.pop("name")
    valid = method_fields(name)[1:]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        hints = [f"method.{key}" + (f" (did you mean 'method.{match}'?)"
                                    if (match := nearest(key, valid)) else "")
                 for key in unknown]
        raise ConfigError(f"Method {name!r} has no argument(s) {', '.join(hints)}; valid "
                          f"config.method fields: name, {', '.join(valid)}.")
    recipe = RECIPES[name]
    phases = recipe(Context(main_steps, steps_per_epoch, axes, model,
                            tuple(input_shape) if input_shape is not None else None,
                            calibration, int(config.get("seed", 0))), **kwargs)
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"Recipe {name!r} produced duplicate phase names {names}.")
    return phases
