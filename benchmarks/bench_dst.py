"""Step cost of dynamic sparse training (RigL, SET) against plain dense training.

Model: the reference CNN (``zoo.get_model("refcnn")``), batch 32 of 32x32x3, SGD
momentum 0.9, one jitted step (forward, backward, optimizer update); the DST
methods wrap the same optimizer at 90% ERK sparsity with ``ΔT = 100``
(:func:`sparsejax.dst.rigl`, :func:`sparsejax.dst.sparse_evolutionary`,
default ``check=True``). Ratios to the plain optimizer's dense step of the same
run (benchmarks/common.py):

  * over a whole period (``ΔT = 100`` consecutive steps, one of them a mask
    update), as a ratio to 100 dense steps: the median over periods of the
    per-period ratio, DST and dense periods interleaved      <= 1.02x
  * the mask-update step alone (the same compiled step, called on a state whose
    count is a multiple of ΔT, so the ``lax.cond`` takes the update branch), as a
    ratio to a dense step: median over rounds of the per-round ratio  <= 1.5x

Also reported, unbounded: a plain (non-update) DST step's ratio.

Run: ``python benchmarks/bench_dst.py [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import logging

import jax
import jax.numpy as jnp
import optax

from bench_training_methods import period_ratio
from common import Target, median_ratios, report, time_samples
from sparsejax import dst, zoo
from sparsejax.tree import apply_masks

BATCH = 32
DELTA_T = 100
SPARSITY = 0.9
METHODS = {
    "rigl": lambda opt: dst.rigl(opt, SPARSITY, update_every=DELTA_T, end_step=10**9),
    "set": lambda opt: dst.sparse_evolutionary(opt, SPARSITY, update_every=DELTA_T,
                                               distribution="erk"),
}
PERIOD_BOUND, UPDATE_BOUND = 1.02, 1.5


def make(method, model, params, x, y):
    """Thunks of one config: ``carried`` (steps carrying the state, as training does) and,
    for DST, ``at(count)`` (a step from a fixed state whose count is ``count``)."""
    tx = optax.sgd(0.05, momentum=0.9)
    if method is not None:
        tx = METHODS[method](tx)

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    if method is not None:
        params = apply_masks(params, opt_state.masks)
    carry = [params, opt_state]
    for _ in range(2):  # compile, and move past count 0 (no update at step 0)
        carry[:] = step(*carry)

    def carried():
        carry[0], carry[1] = step(*carry)
        return carry[0]

    def at(count):
        fixed = (carry[0], carry[1]._replace(count=jnp.int32(count))) if method else tuple(carry)
        return lambda: step(*fixed)[0]

    return carried, at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    args = parser.parse_args()
    logging.getLogger("sparsejax").setLevel(logging.WARNING)
    repeats, inner, periods = (3, 2, 1) if args.quick else (15, 5, 7)
    model = zoo.get_model("refcnn")
    x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3))
    y = jnp.arange(BATCH) % 10
    params = model.init(jax.random.key(0), x)["params"]
    built = {name: make(None if name == "dense" else name, model, params, x, y)
             for name in ("dense", *METHODS)}
    single = {"dense": built["dense"][1](0)}
    for name in METHODS:
        single[f"{name}_update"] = built[name][1](DELTA_T)
        single[f"{name}_plain"] = built[name][1](DELTA_T + 1)
    samples = time_samples(single, repeats=repeats, inner=inner, warmup=1)
    ratios = median_ratios(samples, "dense")
    rows, targets = [], []
    for name in METHODS:
        over_period = period_ratio(built[name][0], built["dense"][0], DELTA_T, periods)
        rows.append({"config": name, "delta_t": DELTA_T, "sparsity": SPARSITY,
                     "dense_ms": 1e3 * sorted(samples["dense"])[len(samples["dense"]) // 2],
                     "period_ratio": over_period,
                     "update_step_ratio": ratios[f"{name}_update"],
                     "plain_step_ratio": ratios[f"{name}_plain"]})
        targets.append(Target(f"{name} step ratio over a ΔT={DELTA_T} period", over_period,
                              "<=", PERIOD_BOUND))
        targets.append(Target(f"{name} mask-update step ratio", ratios[f"{name}_update"],
                              "<=", UPDATE_BOUND))
    report(rows, targets, args.json, title="dynamic sparse training (refcnn)")


if __name__ == "__main__":
    main()
