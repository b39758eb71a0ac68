"""Training-step cost of the sparse-training methods through the linen adapter.

Models: CIFAR ResNet-18 (``zoo.get_model("resnet18")``) and the reference CNN
(``"refcnn"``), batch 32 of 32x32x3, SGD momentum 0.9, one jitted step
(forward, backward, update, method state update). Step time as a ratio to the
unmodified dense model's step, same run, configs interleaved, median over
rounds of the per-round ratio (benchmarks/common.py):

  * SWAT-U 80 %, period 1 (exact top-K every step)      <= 1.15x
  * SWAT-U 80 %, period 20 (cached thresholds)          <= 1.05x
    (over whole periods, refresh steps included: ``period_ratio``, median of
    five per-period ratios, each the mean of the period's step ratios, every
    step paired with a dense one; the median-of-rounds ``ratio`` mostly times
    cached steps)
  * STE 2:4                                             <= 1.05x
  * meProp, keep 20 %                                   <= 1.15x
  * structured SWAT 80 % with compaction                <= 0.5x
    (``swat80_channel_cdw``: whole input channels, ``straight_through=False``,
    so the forward, dA and dW convolutions all run on the kept 20 % of the
    channels; ``swat80_channel`` is the paper's straight-through variant,
    reported without a bound: its dW stays dense over all channels, so at
    best (0.2 + 0.2 + 1) / 3 = 0.47 of the conv cost before any elementwise
    work)
  * memory by default: the residuals the sparse layers of the default
    ``swat(0.8)`` save for the backward pass (``residual_ratio``: bytes of
    JAX's saved residuals, :func:`sparsejax.analysis.residuals.residual_bytes`, as a
    ratio to what the same layers save when dense; portable, no compiler
    involved)                                            <= 0.35x
    on both models; and on ResNet-18 the default's whole-step temporary
    memory (``compiled.memory_analysis().temp_size_in_bytes``, XLA:CPU)
    <= 0.75x dense with its step <= 1.05x dense. The other formats
    (``saved="masked"``: a masked dense copy; ``saved="remat"``: recomputed in
    the backward pass from its producer's inputs, which BatchNorm keeps
    anyway; structured SWAT with compacted channels) are reported unbounded.
  * jit compile time (trace + lower + compile) of a      <= 1.5x dense
    SWAT step (median over five rounds of the per-round ratio, configs
    interleaved, caches cleared before each compile)

The step is compiled without buffer donation. Donating the parameters and
optimizer state (as the library's training loop does) moves the updated
values into XLA's temporary buffers: the old values are still read by the
backward pass when the new ones are computed. On ResNet-18 that adds 53 MiB
(dense) to 78 MiB (``saved="remat"``) of parameter-sized temporaries that no
activation format touches, so ``temp_ratio`` is taken without donation.
``footprint_MiB`` is the whole step (arguments + outputs + temporaries,
minus aliased buffers), the figure a device's memory must hold.

Run: ``python benchmarks/bench_training_methods.py [--quick] [--json out.json]
[--models refcnn,resnet18] [--configs swat80_p1,swat80_remat]`` (``--configs``
runs a subset, always with ``dense``; a target is checked where its configs ran).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from common import Target, median_ratios, report, time_samples
from sparsejax import zoo
from sparsejax.adapters import sparsify
from sparsejax.methods import meprop, ste, swat
from sparsejax.patterns import NM
from sparsejax.analysis.residuals import residual_bytes

BATCH = 32
COMPILE_REPEATS = 5  # compile-time rounds (caches cleared before each compile)
MUTABLE = ["batch_stats", "sparsity"]

CONFIGS = {
    "dense": None,
    "swat80_p1": swat(0.8),  # saved="auto": packed wherever the kept count is static
    "swat80_masked": swat(0.8, saved="masked"),
    "swat80_remat": swat(0.8, saved="remat"),
    "swat80_p20": swat(0.8, period=20),
    "ste_2:4": ste(NM(2, 4)),
    "meprop_20%": meprop(0.2),
    "swat80_channel": swat(0.8, structured="channel"),
    "swat80_channel_cdw": swat(0.8, structured="channel", straight_through=False),
}
BOUNDS = {"swat80_p1": 1.15, "ste_2:4": 1.05, "meprop_20%": 1.15, "swat80_channel_cdw": 0.5}
PERIOD_BOUNDS = {"swat80_p20": (20, 1.05)}  # config: (period, bound on the amortised ratio)


def make_loss(model, x, y):
    """The training loss of ``model`` as a function of ``(params, state)``."""

    def loss_fn(params, state):
        logits, updates = model.apply({**state, "params": params}, x, train=True, mutable=MUTABLE)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    return loss_fn


def make_step(model, variables, x, y):
    """The jitted train step, its initial carry and a thunk running it."""
    tx = optax.sgd(0.05, momentum=0.9)
    loss_fn = make_loss(model, x, y)

    def step(params, state, opt_state):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state)
        u, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, u), {**state, **updates}, opt_state, loss

    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    carry = [params, state, tx.init(params)]
    return step, carry


def build(method, model, x, y):
    """The compiled step of ``method`` on ``model``: a thunk running it, a thunk
    compiling it again from scratch (caches cleared), and its memory analysis."""
    wrapped = model if method is None else sparsify(model, method)
    variables = wrapped.init(jax.random.key(0), x, train=True)
    step, carry = make_step(wrapped, variables, x, y)

    def compile_again():
        jax.clear_caches()
        return jax.jit(step).lower(*carry).compile()

    compiled = compile_again()
    loss = lambda p: make_loss(wrapped, x, y)(p, carry[1])[0]
    layers = [l for l in residual_bytes(loss, carry[0]) if l.sparse]
    residual = (sum(l.saved_bytes for l in layers) / sum(l.dense_bytes for l in layers)
                if layers else None)
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    footprint = None if temp is None else (temp + mem.argument_size_in_bytes
                                           + mem.output_size_in_bytes - mem.alias_size_in_bytes)

    def run():
        carry[0], carry[1], carry[2], loss = compiled(*carry)
        return loss

    return run, compile_again, temp, footprint, residual


def compile_samples(compilers, rounds):
    """Seconds to trace, lower and compile each step, one sample per round,
    configs interleaved (as the step times): a ratio pairs samples of one round,
    which cancels most of the machine's drift (one compile varies by +-20%)."""
    samples = {name: [] for name in compilers}
    for _ in range(rounds):
        for name, compile_again in compilers.items():
            start = time.perf_counter()
            compile_again()
            samples[name].append(time.perf_counter() - start)
    return samples


def period_ratio(run, dense_run, period, periods):
    """Step time over whole periods (each holds one threshold refresh, whatever
    the phase) as a ratio to dense steps: every step of a period is timed next
    to a dense step (each blocked, the two orders alternating) and the period's
    ratio is the mean of its ``period`` paired ratios; the median over
    ``periods`` periods is returned.

    Pairing adjacent steps cancels the machine's drift, which timing each whole
    period in one block did not: on the 2-core VM a ResNet-18 period lasts ~40 s
    and the same compiled program's whole-period ratios ranged 0.77-1.17 within
    one run (README, "Benchmarks")."""
    ratios = []
    for i in range(periods):
        steps = []
        for j in range(period):
            took = {}
            for fn in ((run, dense_run) if (i + j) % 2 == 0 else (dense_run, run)):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                took[fn] = time.perf_counter() - start
            steps.append(took[run] / took[dense_run])
        ratios.append(statistics.fmean(steps))
    return statistics.median(ratios)


def bench_model(model_name, configs, repeats, inner, compile_repeats, periods):
    """Rows and targets of the ``configs`` (names in ``CONFIGS``, ``dense`` first) on one model."""
    model = zoo.get_model(model_name)
    x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3))
    y = jnp.arange(BATCH) % 10
    runs, compilers, rows = {}, {}, []
    info = {}
    for name in configs:
        runs[name], compilers[name], temp, footprint, residual = build(CONFIGS[name], model, x, y)
        info[name] = (temp, footprint, residual)
    compiles = compile_samples(compilers, compile_repeats)
    compile_ratios = median_ratios(compiles, "dense")
    samples = time_samples(runs, repeats=repeats, inner=inner, warmup=1)
    ratios = median_ratios(samples, "dense")
    dense_temp = info["dense"][0]
    for name in configs:
        temp, footprint, residual = info[name]
        rows.append({"model": model_name, "config": name,
                     "ms": 1e3 * sorted(samples[name])[len(samples[name]) // 2],
                     "ratio": ratios[name],
                     "compile_s": sorted(compiles[name])[len(compiles[name]) // 2],
                     "compile_ratio": compile_ratios[name],
                     "temp_MiB": -1.0 if temp is None else temp / 2**20,
                     "temp_ratio": -1.0 if not (temp and dense_temp) else temp / dense_temp,
                     "residual_ratio": -1.0 if residual is None else residual,
                     "footprint_MiB": -1.0 if footprint is None else footprint / 2**20})
    row = {r["config"]: r for r in rows}
    targets = [Target(f"{model_name} {n} step ratio", ratios[n], "<=", b)
               for n, b in BOUNDS.items() if n in row]
    for name, (period, bound) in PERIOD_BOUNDS.items():
        if name in row:
            amortised = period_ratio(runs[name], runs["dense"], period, periods)
            row[name]["period_ratio"] = amortised
            targets.append(Target(f"{model_name} {name} step ratio over whole periods",
                                  amortised, "<=", bound))
    if "swat80_p1" in row:  # memory by default
        targets.append(Target(f"{model_name} swat80_p1 residual ratio",
                              row["swat80_p1"]["residual_ratio"], "<=", 0.35))
        if model_name == "resnet18" and row["swat80_p1"]["temp_ratio"] > 0:
            targets.append(Target(f"{model_name} swat80_p1 temp memory ratio",
                                  row["swat80_p1"]["temp_ratio"], "<=", 0.75))
            targets.append(Target(f"{model_name} swat80_p1 step ratio (memory by default)",
                                  ratios["swat80_p1"], "<=", 1.05))
    if "swat80_p1" in row:
        targets.append(Target(f"{model_name} swat80 compile ratio",
                              row["swat80_p1"]["compile_ratio"], "<=", 1.5))
    return rows, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--models", default="refcnn,resnet18")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated subset of: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    configs = ["dense"] + [c for c in configs if c != "dense"]
    logging.getLogger("sparsejax").setLevel(logging.WARNING)
    repeats, inner, compiles, periods = (3, 1, 1, 1) if args.quick else (11, 2, COMPILE_REPEATS, 5)
    rows, targets = [], []
    for name in args.models.split(","):
        r, t = bench_model(name, configs, repeats, inner, compiles, periods)
        rows += r
        targets += t
    report(rows, targets, args.json, title="training methods (linen adapter)")


if __name__ == "__main__":
    main()
