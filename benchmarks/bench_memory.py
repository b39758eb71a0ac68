"""SWAT train-step memory: XLA temp bytes of a whole SGD step, dense vs SWAT 80%.

Every ``nn.Conv`` / ``nn.Dense`` of a zoo model except the first conv (the
image input, kept dense as in SWAT-U on CIFAR) runs through
:func:`sparsejax.ops.sparse_conv_general_dilated` /
:func:`sparsejax.ops.sparse_dot_general` with SWAT's rule
``Policy(weight=TopK(0.8, ties="all"), act_saved=TopK(0.8, ties="all"))``
(what :func:`sparsejax.methods.swat` builds), saving A either as a masked
dense array (``pack_saved=False``), packed as bits + kept values + a tie
plane (``pack_saved=True``, ``swat(pack_saved=True)``, which also saves W as
itself plus its mask bits instead of a masked copy), or recomputed in the
backward pass (``remat_saved=True``: XLA then rebuilds the masked activation
from the BatchNorm input it keeps anyway). The step is ``jax.jit``-ed loss + grad + SGD
update (params donated); its temporary memory is
``memory_analysis().temp_size_in_bytes`` of the compiled step. Step time is
the median per-round ratio to dense.

Targets (Raihan & Aamodt, NeurIPS 2020, report 23-50% less activation memory):
  * SWAT 80% packed and remat temp memory <= 0.75x dense on the reference CNN
    (batch 64, 32x32x3) and on CIFAR ResNet-18 (batch 32).

What bounds the saving on XLA:CPU (read from the buffer assignment and live
ranges, ``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text``):
  * ResNet-18: the peak is in the backward pass, made of the BatchNorm
    residuals (two dense tensors per BN: its input and the centred input),
    which SWAT does not touch; packing removes the saved layer inputs, and
    ``remat_saved`` rebuilds them from the BatchNorm input. Without either,
    XLA:CPU computes the dW convolution's transposed copy of each saved
    activation in the forward pass (its inputs are all there) and keeps it
    until the backward pass, as the dense step does.
  * Reference CNN (buffer assignment read in session 2): the peak is in the
    forward pass, at the first sparse layer's exact top-K selection over its
    input A: A, a float32 0/1 array of A's size (XLA:CPU's reduction kernels
    take materialised inputs), the previous
    layer's pre-activation kept for the ReLU backward, and activation-sized
    constant broadcasts that XLA:CPU's fused ReLU/pooling kernels take as
    inputs and the scheduler emits at the start of the forward pass (dense has
    them too). The saved activations are not what is live there, so packing
    them cannot lower that peak, and with no BatchNorm input to rebuild the
    activation from, ``remat_saved`` cannot either.

Run: ``python benchmarks/bench_memory.py [--json out.json] [--resnet-width 64]``.
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from common import Target, median_ratios, report, time_samples
from sparsejax import zoo
from sparsejax.ops import Policy, sparse_conv_general_dilated, sparse_dot_general
from sparsejax.sparsifiers import TopK

SPARSITY = 0.8
CONFIGS = {
    "dense": None,
    "swat80 unpacked": Policy(weight=TopK(SPARSITY, ties="all"),
                              act_saved=TopK(SPARSITY, ties="all"), pack_saved=False),
    "swat80 packed": Policy(weight=TopK(SPARSITY, ties="all"),
                            act_saved=TopK(SPARSITY, ties="all"), pack_saved=True),
    "swat80 remat": Policy(weight=TopK(SPARSITY, ties="all"),
                           act_saved=TopK(SPARSITY, ties="all"), remat_saved=True),
}


def with_policy(policy: Policy | None):
    """An ``nn.intercept_methods`` interceptor running Conv/Dense through the sparse ops.

    The first conv (3 input channels: the image) stays dense.
    """

    def interceptor(next_fun, args, kwargs, ctx):
        mod = ctx.module
        if policy is None or ctx.method_name != "__call__" or not isinstance(mod, (nn.Conv,
                                                                                   nn.Dense)):
            return next_fun(*args, **kwargs)
        if isinstance(mod, nn.Conv):
            if args[0].shape[-1] <= 3:
                return next_fun(*args, **kwargs)
            field, op = "conv_general_dilated", sparse_conv_general_dilated
        else:
            field, op = "dot_general", sparse_dot_general
        object.__setattr__(mod, field, functools.partial(op, policy=policy, where=mod.name))
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(mod, field, None)

    return interceptor


def make_step(model: nn.Module, policy: Policy | None, has_bn: bool):
    """jit-ed SGD step ``(params, batch_stats, x, y) -> (params, batch_stats, loss)``."""

    def loss_fn(params, batch_stats, x, y):
        variables = {"params": params, **({"batch_stats": batch_stats} if has_bn else {})}
        with nn.intercept_methods(with_policy(policy)):
            if has_bn:
                logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
                batch_stats = upd["batch_stats"]
            else:
                logits = model.apply(variables, x, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, batch_stats

    def step(params, batch_stats, x, y):
        (loss, batch_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
        params = jax.tree.map(lambda p, d: p - 0.1 * d, params, g)
        return params, batch_stats, loss

    return jax.jit(step, donate_argnums=(0, 1))


def measure(name: str, model: nn.Module, batch: int, repeats: int) -> list[dict]:
    """Temp memory and step time of every config on one model."""
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    variables = model.init(jax.random.key(2), x, train=True)
    has_bn = "batch_stats" in variables
    rows, fns = [], {}
    for cfg, policy in CONFIGS.items():
        step = make_step(model, policy, has_bn)
        state = {"p": variables["params"], "b": variables.get("batch_stats", {})}
        state = jax.tree.map(jnp.copy, state)
        compiled = step.lower(state["p"], state["b"], x, y).compile()
        mem = compiled.memory_analysis()

        def run(step=compiled, state=state):
            state["p"], state["b"], loss = step(state["p"], state["b"], x, y)
            return loss

        fns[cfg] = run
        rows.append({"model": name, "config": cfg, "temp_MiB": mem.temp_size_in_bytes / 2**20})
    samples = time_samples(fns, repeats=repeats, inner=1, warmup=1)
    ratios = median_ratios(samples, "dense")
    dense_temp = rows[0]["temp_MiB"]
    for row in rows:
        row["temp_vs_dense"] = row["temp_MiB"] / dense_temp
        row["step_ms"] = sorted(samples[row["config"]])[len(samples[row["config"]]) // 2] * 1e3
        row["time_vs_dense"] = ratios[row["config"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resnet-width", type=int, default=64,
                        help="ResNet-18 first-stage width (64 = the paper's model)")
    args = parser.parse_args()

    rows = measure("refcnn b64", zoo.get_model("refcnn"), 64, args.repeats)
    rows += measure(f"resnet18(w={args.resnet_width}) b32",
                    zoo.get_model("resnet18", width=args.resnet_width), 32, args.repeats)
    targets = [Target(f"{r['model']}: {r['config']} temp / dense", r["temp_vs_dense"], "<=", 0.75)
               for r in rows if r["config"] in ("swat80 packed", "swat80 remat")]
    report(rows, targets, args.json, title="bench_memory")


if __name__ == "__main__":
    main()
