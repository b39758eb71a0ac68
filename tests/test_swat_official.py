"""SWAT as the official code does it (github.com/AamirRaihan/SWAT, SWAT-code/cifar10-100-code).

Every expected value here is derived by hand from the official code's semantics
(custom_layers/custom_conv.py, custom_layers/custom_linear.py, dynamic_sparsity.py,
run_configurations/*.yaml), not from sparsejax:

* with a top-K period > 1 only the conv layers reuse their cached thresholds; the
  linear layers select an exact top-K every batch;
* SWAT-M: a layer over the 99% cap becomes dense, the excess is shared in equal
  ceil(residual / #layers) rounds; the budgets of step t + 1 come from step t's momentum;
* SWAT-ERK: the first and the last layer are sparse and inside the ERK budget.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import methods
from sparsejax.adapters import sparsify
from sparsejax.analysis import monitor
from sparsejax.methods import LayerInfo

MUT = ["batch_stats", "sparsity"]
EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")


# ------------------------------------------------------------ period > 1
class ConvDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), name="conv")(x)  # no ReLU: the Dense input has no zeros
        return nn.Dense(3, name="fc")(h.reshape(h.shape[0], -1))


def _kth_largest(a, k):
    return np.sort(np.abs(np.asarray(a)).ravel())[-k]


def test_dense_layer_reselects_exactly_each_step_while_conv_reuses_its_threshold():
    s, period = 0.5, 3
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    c = jax.random.normal(jax.random.key(2), (2, 3))
    model = sparsify(ConvDense(), methods.swat(s, period=period, dense_first=False),
                     monitor=monitor.MonitorConfig(tile=8))
    v = model.init(jax.random.key(0), x)

    @jax.jit
    def step(v):
        def loss(p):
            y, upd = model.apply({**v, "params": p}, x, mutable=MUT + ["sparsity_metrics"])
            return jnp.sum(y * c), upd

        (_, upd), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
        params = jax.tree.map(lambda p, d: p - 0.5 * d, v["params"], g)
        metrics = upd.pop("sparsity_metrics")
        return {**v, **upd, "params": params}, metrics

    params, metrics = [v["params"]], []
    for _ in range(period):  # steps 0 (refresh), 1, 2 (between refreshes)
        v, m = step(v)
        params.append(v["params"])
        metrics.append(monitor.flatten_metrics(m))

    # fc: kernel 64 x 3 = 192 entries and a saved input of 2 x 64 = 128 entries;
    # the official linear layer keeps exactly ceil(0.5 * n) of each, every step.
    for t in (1, 2):
        assert float(metrics[t]["fc/w_sparsity"]) == 1 - 96 / 192
        assert float(metrics[t]["fc/a_saved_sparsity"]) == 1 - 64 / 128
    # conv: kernel 3 x 3 x 3 x 4 = 108 entries; the threshold of step 0 (the 54th
    # largest |W_0|) is reused at steps 1 and 2, whatever the weights became.
    thr0 = _kth_largest(params[0]["conv"]["kernel"], 54)
    for t in (1, 2):
        w_t = np.asarray(params[t]["conv"]["kernel"])
        assert float(metrics[t]["conv/w_sparsity"]) == pytest.approx(
            np.mean(np.abs(w_t) < thr0), abs=1e-6)
    assert np.mean(np.abs(np.asarray(params[2]["conv"]["kernel"])) < thr0) != 0.5  # it drifted
    assert float(v["sparsity"]["conv"]["w_threshold"]) == pytest.approx(thr0, rel=1e-6)


def test_cache_all_keeps_the_dense_layer_on_its_cached_threshold():
    # The explicit option: the fc layer at step 1 uses step 0's threshold.
    s = 0.5
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    model = sparsify(ConvDense(), methods.swat(s, period=3, dense_first=False, cache="all"))
    v = model.init(jax.random.key(0), x)
    _, upd = model.apply(v, x, mutable=MUT)
    thr0 = _kth_largest(v["params"]["fc"]["kernel"], 96)
    assert float(upd["sparsity"]["fc"]["w_threshold"]) == pytest.approx(thr0, rel=1e-6)
    with pytest.raises(ValueError, match="cache"):
        methods.swat(s, period=3, cache="dense")


# ------------------------------------------------------------------ SWAT-M
def test_swat_m_budgets_follow_the_official_rounds_when_layers_hit_the_cap():
    # Four layers, global sparsity 0.9: target = 0.1 * (100 + 100 + 500 + 10001) = 1070.1.
    # Normalised scores .3 .3 .3 .1 ask ceil(321.03) = 322, 322, 322 and ceil(107.01) = 108.
    # Caps (99%): 99, 99, 495, 9900.99. Each round: r = count + extra; r > cap -> the layer is
    # dense (count = size) and r - size goes to the residual; extra = ceil(residual / 4)
    # while residual > 4; stop when the previous round's total exceeded 1070.1.
    #   round  r (a, b, c, d)         count               residual  total  extra
    #   1      322 322 322 108        100 100 322 108     444       630    111
    #   2      211 211 433 219        100 100 433 219     222       852    56
    #   3      156 156 489 275        100 100 489 275     112       964    28
    #   4      128 128 517 303        100 100 500 303     73        1003   19   (c > 495: dense)
    #   5      119 119 519 322        100 100 500 322     57        1022   15
    #   6      115 115 515 337        100 100 500 337     45        1037   12
    #   7      112 112 512 349        100 100 500 349     36        1049   9
    #   8      109 109 509 358        100 100 500 358     27        1058   7
    #   9      107 107 507 365        100 100 500 365     21        1065   6
    #   10     106 106 506 371        100 100 500 371     18        1071   5
    # 1071 > 1070.1: stop. a, b, c dense; d keeps 371 of 10001.
    sizes = {"a": 100, "b": 100, "c": 500, "d": 10001}
    scores = {"a": 3.0, "b": 3.0, "c": 3.0, "d": 1.0}
    want = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1 - 371 / 10001}
    for fn in (lambda sc: methods.momentum_budgets(sizes, sc, 0.9),
               jax.jit(lambda sc: methods.momentum_budgets(sizes, sc, 0.9))):
        got = {p: float(v) for p, v in fn(scores).items()}
        assert got == pytest.approx(want, abs=1e-6)
    # The earlier rule (explicit option): a, b, c held at 99%, d gets the exact rest.
    prop = methods.momentum_budgets(sizes, scores, 0.9, redistribution="proportional")
    kept_d = 1070.1 - 0.99 * 700
    assert {p: float(v) for p, v in prop.items()} == pytest.approx(
        {"a": 0.01, "b": 0.01, "c": 0.01, "d": 1 - kept_d / 10001}, abs=1e-5)


def test_swat_m_budgets_without_a_capped_layer_round_each_share_up():
    # sizes 10 and 100 at 0.8: target 22, equal scores ask ceil(11) = 11 each;
    # 11 > 9.9 makes "a" dense, residual 1 <= 2 layers: dropped.
    got = methods.momentum_budgets({"a": 10, "b": 100}, {"a": 1.0, "b": 1.0}, 0.8)
    assert [float(v) for v in got.values()] == pytest.approx([0.0, 1 - 11 / 100], abs=1e-6)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8)(x))  # Dense_0: (6, 8)
        return nn.Dense(4)(h)  # Dense_1: (8, 4)


def test_swat_m_budgets_of_the_next_step_come_from_the_current_steps_momentum():
    x = jax.random.normal(jax.random.key(1), (5, 6))
    model = sparsify(MLP(), methods.swat(0.6, distribution="momentum", dense_first=False))
    v = model.init(jax.random.key(0), x)
    # Step 0: the initial (uniform) budgets; Dense_0 keeps ceil(0.4 * 48) = 20 weights.
    _, upd = model.apply(v, x, mutable=MUT)
    w0 = {p: np.asarray(v["params"][p]["kernel"]) for p in ("Dense_0", "Dense_1")}
    thr0 = _kth_largest(w0["Dense_0"], 20)
    active = np.abs(w0["Dense_0"]) >= thr0
    # The optimizer's update of step 0 (W_1 - W_0 = -lr * momentum_0), chosen by hand:
    # Dense_0 moves 0.01 on its active weights (0.3 on the pruned ones, which SWAT-M does
    # not score), Dense_1 moves 0.05 everywhere: mean |momentum| 0.01 : 0.05 = 1 : 5.
    delta = {"Dense_0": np.where(active, 0.01, 0.3), "Dense_1": np.full((8, 4), 0.05)}
    params = {p: {**v["params"][p], "kernel": jnp.asarray(w0[p] + delta[p], jnp.float32)}
              for p in w0}
    v1 = {**v, **upd, "params": params}
    # Step 1: target 0.4 * 80 = 32 non-zeros; shares ceil(32/6) = 6 and ceil(32*5/6) = 27
    # (under the caps 47.52 and 31.68).
    _, upd1 = model.apply(v1, x, mutable=MUT + ["sparsity_metrics"])
    shared = upd1["sparsity"]["_method_shared"]["sparsity"]
    assert float(shared["Dense_0"]) == pytest.approx(1 - 6 / 48, abs=1e-6)
    assert float(shared["Dense_1"]) == pytest.approx(1 - 27 / 32, abs=1e-6)
    # Used at this step: Dense_1 keeps 27 weights (28: a traced sparsity reaches the
    # top-K on a 1e-4 grid, select.keep_count), not the uniform 13 of the old lag.
    m = monitor.flatten_metrics(upd1["sparsity_metrics"])
    assert round((1 - float(m["Dense_1/w_sparsity"])) * 32) in (27, 28)


# ---------------------------------------------------------------- SWAT-ERK
LAYERS = [LayerInfo("Conv_0", "conv", (3, 3, 3, 16), 16),
          LayerInfo("Block_0/Conv_0", "conv", (3, 3, 16, 32), 32),
          LayerInfo("Block_0/Conv_1", "conv", (3, 3, 32, 32), 32),
          LayerInfo("head", "dense", (32, 10), 10)]


def _erk_numpy(shapes, sparsity):
    """RigL's ERK loop: density_l = eps * sum(shape_l) / prod(shape_l); layers over 1 dense."""
    n = {p: float(np.prod(s)) for p, s in shapes.items()}
    raw = {p: float(np.sum(s)) / n[p] for p, s in shapes.items()}
    dense = set()
    while True:
        rest = [p for p in shapes if p not in dense]
        eps = ((1 - sparsity) * sum(n.values()) - sum(n[p] for p in dense)) / \
            sum(raw[p] * n[p] for p in rest)
        top = max(rest, key=lambda p: raw[p])
        if eps * raw[top] <= 1:
            return {p: 0.0 if p in dense else 1 - eps * raw[p] for p in shapes}
        dense.add(top)


def test_swat_erk_puts_first_and_last_layer_inside_the_budget_by_default():
    shapes = {l.path: l.kernel_shape for l in LAYERS}
    want = _erk_numpy(shapes, 0.9)
    # By hand: raw 25/432, 54/4608, 70/9216, 42/320; eps = 1457.6 / 191 puts head at
    # 1.0016 > 1, so head is dense and eps = (1457.6 - 320) / 149.
    assert want["head"] == 0.0
    assert want["Conv_0"] == pytest.approx(1 - 1137.6 / 149 * 25 / 432, rel=1e-12)
    plan = methods.swat(0.9, distribution="erk").plan(LAYERS)
    assert list(plan) == [l.path for l in LAYERS]
    assert plan == pytest.approx(want, abs=1e-7)
    kept = sum((1 - plan[p]) * np.prod(shapes[p]) for p in plan)
    assert kept == pytest.approx(0.1 * sum(np.prod(s) for s in shapes.values()), rel=1e-9)
    # dense_first=True stays available: the first conv dense and outside the budget.
    plan = methods.swat(0.9, distribution="erk", dense_first=True).plan(LAYERS)
    assert "Conv_0" not in plan
    assert plan == pytest.approx(_erk_numpy({p: shapes[p] for p in list(shapes)[1:]}, 0.9),
                                 abs=1e-7)
    # SWAT-U keeps the official CIFAR default: first conv dense, last FC sparse.
    assert list(methods.swat(0.9).plan(LAYERS)) == [l.path for l in LAYERS[1:]]


def test_swat_m_budgets_every_layer_by_default():
    # Every unstructured_momentum_*.yaml sets sparsify_first_layer and _last_layer: True
    # (and sparsity_regrowth re-budgets all layers regardless).
    assert list(methods.swat(0.9, distribution="momentum").plan(LAYERS)) == \
        [l.path for l in LAYERS]


def test_experiment_config_follows_the_official_run_configurations():
    from sparsejax.experiment import config as config_lib

    path = os.path.join(EXPERIMENTS, "swat.py")
    for distribution, first_dense in (("uniform", True), ("erk", False), ("momentum", False)):
        c = config_lib.load(f"{path}:model=vgg16,distribution={distribution}")
        assert c.method.dense_first is first_dense
        assert c.model.name == "vgg16" and c.model.kwargs.classifier == "official"
