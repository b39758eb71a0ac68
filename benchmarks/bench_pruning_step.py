"""Overhead of the optax ``pruning`` transform on a training step.

Reference CNN (``sparsejax.zoo`` "refcnn": five 3x3 convs 32-32-64-64-128 with
average pooling, dense 256, dense 10), batch 64 of 32x32x3, SGD momentum 0.9;
every kernel but the head is pruned. Step time relative to the dense step,
same run, configs interleaved, median over rounds of the per-round ratio:

  * fixed masks (``update_every=None``, Han / ASP retraining) <= 1.01x
  * unstructured 80 %, masks refreshed every step            <= 1.05x
  * 2:4 (N:M along the input axis), refreshed every step     <= 1.02x

Run: ``python benchmarks/bench_pruning_step.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics

import jax
import jax.numpy as jnp
import optax

from common import Target, median_ratios, report, time_samples
from sparsejax import zoo
from sparsejax.patterns import NM
from sparsejax.transform import pruning

BATCH = 64


def make_runner(model, params, tx, x, y):
    """A thunk running one jitted train step and carrying params and state along."""

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    carry = {"params": params, "opt_state": tx.init(params)}

    def run():
        carry["params"], carry["opt_state"], loss = step(carry["params"], carry["opt_state"])
        return loss

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--inner", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("sparsejax").setLevel(logging.ERROR)  # conv1 (3 inputs) skips 2:4

    model = zoo.get_model("refcnn", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (BATCH,), 0, 10)
    params = model.init(jax.random.key(0), x)["params"]
    sgd = lambda: optax.sgd(0.01, momentum=0.9)
    configs = {
        "dense": sgd(),
        "fixed mask 80%": optax.chain(sgd(), pruning(0.8, update_every=None, exclude="head")),
        # The chain check (exact zeros where the masks prune) switched off: its cost.
        "fixed mask 80%, check=False": optax.chain(
            sgd(), pruning(0.8, update_every=None, exclude="head", check=False)),
        "unstructured 80% every step": optax.chain(sgd(), pruning(0.8, exclude="head")),
        "2:4 every step": optax.chain(sgd(), pruning(None, pattern=NM(2, 4), exclude="head")),
    }
    runners = {name: make_runner(model, params, tx, x, y) for name, tx in configs.items()}
    samples = time_samples(runners, repeats=args.repeats, inner=args.inner)
    ratios = median_ratios(samples, "dense")
    rows = [{"config": name, "median_ms": statistics.median(s) * 1e3,
             "ratio_to_dense": ratios[name]} for name, s in samples.items()]
    bounds = {"fixed mask 80%": 1.01, "unstructured 80% every step": 1.05,
              "2:4 every step": 1.02}
    targets = [Target(f"{name} / dense", ratios[name], "<=", bound)
               for name, bound in bounds.items()]
    report(rows, targets, args.json, title="bench_pruning_step")


if __name__ == "__main__":
    main()
