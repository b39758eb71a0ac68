"""Mask selection speed: sparsejax's O(n) selection vs sort-based masks.

Targets (ratios measured in one run):
  * unstructured top-K mask of 2,359,296 floats (a 3x3x512x512 conv kernel) at
    90% sparsity: ``sparsejax.topk_mask`` >= 30x faster than a ``lax.top_k``
    mask (an argsort mask is timed for reference);
  * 2:4 mask of a 4608x512 matrix along the contraction axis:
    ``sparsejax.nm_mask`` >= 30x faster than a double-argsort mask.
The masks are checked equal to the references (random data has no ties).

Run: ``python benchmarks/bench_masks.py [--json out.json] [--repeats 9]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from common import Target, report, time_fns
from sparsejax.patterns import nm_mask, topk_mask
from sparsejax.select import keep_count

SPARSITY = 0.9


def lax_topk_mask(x: jax.Array, k: int) -> jax.Array:
    """Keep |x| >= the k-th largest magnitude, found with ``lax.top_k``."""
    a = jnp.abs(x)
    kth = jax.lax.top_k(a.reshape(-1), k)[0][-1]
    return a >= kth


def argsort_mask(x: jax.Array, k: int) -> jax.Array:
    """Keep the k entries that come last in an argsort of |x|."""
    order = jnp.argsort(jnp.abs(x).reshape(-1))
    return jnp.zeros(x.size, bool).at[order[x.size - k:]].set(True).reshape(x.shape)


def double_argsort_nm(x: jax.Array, n: int, m: int) -> jax.Array:
    """N:M along axis 0 by ranking each group with a double argsort."""
    g = jnp.abs(x).reshape(x.shape[0] // m, m, x.shape[1])
    rank = jnp.argsort(jnp.argsort(-g, axis=1, stable=True), axis=1)
    return (rank < n).reshape(x.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--inner", type=int, default=3)
    args = parser.parse_args()

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 512, 512), jnp.float32)
    matrix = jax.random.normal(jax.random.key(1), (4608, 512), jnp.float32)
    k = keep_count(SPARSITY, kernel.size)

    fns = {
        "topk_mask (sparsejax)": jax.jit(lambda x: topk_mask(x, SPARSITY)),
        "lax.top_k mask": jax.jit(lambda x: lax_topk_mask(x, k)),
        "argsort mask": jax.jit(lambda x: argsort_mask(x, k)),
        "nm_mask 2:4 (sparsejax)": jax.jit(lambda x: nm_mask(x, 2, 4, axis=-2)),
        "double-argsort 2:4": jax.jit(lambda x: double_argsort_nm(x, 2, 4)),
    }
    inputs = {name: (kernel if "2:4" not in name else matrix) for name in fns}
    outputs = {name: np.asarray(fn(inputs[name])) for name, fn in fns.items()}
    agree = {
        "topk == lax.top_k": bool(np.array_equal(outputs["topk_mask (sparsejax)"],
                                                 outputs["lax.top_k mask"])),
        "topk == argsort": bool(np.array_equal(outputs["topk_mask (sparsejax)"],
                                               outputs["argsort mask"])),
        "nm == double argsort": bool(np.array_equal(outputs["nm_mask 2:4 (sparsejax)"],
                                                    outputs["double-argsort 2:4"])),
    }
    assert outputs["topk_mask (sparsejax)"].sum() == k

    times = time_fns({name: (lambda f=fn, x=inputs[name]: f(x)) for name, fn in fns.items()},
                     repeats=args.repeats, inner=args.inner)
    rows = [{"config": name, "shape": "x".join(map(str, inputs[name].shape)),
             "median_ms": times[name] * 1e3} for name in fns]
    topk_speedup = times["lax.top_k mask"] / times["topk_mask (sparsejax)"]
    argsort_speedup = times["argsort mask"] / times["topk_mask (sparsejax)"]
    nm_speedup = times["double-argsort 2:4"] / times["nm_mask 2:4 (sparsejax)"]
    targets = [Target("speedup topk_mask vs lax.top_k mask", topk_speedup, ">=", 30),
               Target("speedup topk_mask vs argsort mask (reference)", argsort_speedup, ">=", 1),
               Target("speedup nm_mask 2:4 vs double argsort", nm_speedup, ">=", 30)]
    targets += [Target(f"masks agree: {name}", float(ok), ">=", 1) for name, ok in agree.items()]
    report(rows, targets, args.json, title="bench_masks")


if __name__ == "__main__":
    main()
