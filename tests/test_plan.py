"""sj.plan (layer choices a user can see), NNX call order, and skip logging."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax import methods
from sparsejax.adapters import linen as linen_adapter
from sparsejax.adapters.nnx import SparseOp

X = jnp.zeros((2, 8, 8, 4))


class LinenNet(nn.Module):
    """Attributes named so that their sorted order (body, classifier, stem) is not the call order."""

    def setup(self):
        self.stem = nn.Conv(8, (3, 3))
        self.body = nn.Dense(16)
        self.classifier = nn.Dense(12)

    def __call__(self, x):
        x = nn.relu(self.stem(x)).reshape(x.shape[0], -1)
        return self.classifier(nn.relu(self.body(x)))


class NNXNet(nnx.Module):
    def __init__(self, rngs, in_channels=4):
        self.stem = nnx.Conv(in_channels, 8, (3, 3), rngs=rngs)
        self.body = nnx.Linear(8 * 8 * 8, 16, rngs=rngs)
        self.classifier = nnx.Linear(16, 12, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x)).reshape(x.shape[0], -1)
        return self.classifier(nnx.relu(self.body(x)))


METHODS = [methods.swat(0.8), methods.swat(0.7, distribution="erk"),
           methods.swat(0.5, exclude="classifier"), methods.ste(sj.NM(2, 4)),
           methods.ste(sj.Unstructured(), sparsity=0.6), methods.meprop(0.5), methods.dsg(0.5),
           methods.swat(0.8, dense_first=False, dense_last=True), methods.dense()]


def _linen_state(method):
    variables = sj.sparsify(LinenNet(), method).init(jax.random.key(0), X)
    nodes = linen_adapter._layer_nodes(variables.get("sparsity", {}))
    return {p: float(n["sparsity"]) for p, n in nodes.items()}


def _nnx_state(model):
    return {node.info.path: float(node.sparsity) for _, node in nnx.iter_graph(model)
            if isinstance(node, SparseOp)}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: repr(m)[:40])
def test_plan_matches_the_linen_adapters_state(method):
    plan = sj.plan(LinenNet(), method, X)
    assert [l.path for l in plan] == ["stem", "body", "classifier"]  # call order
    assert plan.sparsities == pytest.approx(_linen_state(method))
    for layer in plan:
        assert (layer.reason is None) == layer.sparse and (layer.pattern is not None) == layer.sparse
    assert plan["stem"].kernel_shape == (3, 3, 4, 8) and plan["stem"].kind == "conv"


@pytest.mark.parametrize("method", METHODS, ids=lambda m: repr(m)[:40])
def test_plan_matches_the_nnx_adapters_state(method):
    plan = sj.plan(NNXNet(nnx.Rngs(0)), method, X)
    assert [l.path for l in plan] == ["stem", "body", "classifier"]
    model = sj.sparsify(NNXNet(nnx.Rngs(0)), method, X)
    assert plan.sparsities == pytest.approx(_nnx_state(model))


def test_plan_reasons_and_table():
    plan = sj.plan(LinenNet(), methods.swat(0.5, exclude="classifier"), X)
    assert plan["stem"].reason == "first layer"
    assert "classifier" in plan["classifier"].reason and not plan["classifier"].sparse
    assert plan["body"].sparse and plan["body"].sparsity == 0.5
    table = str(plan)
    assert "1 of 3 layers sparse" in table and "first layer" in table
    assert table.splitlines()[2].split()[:2] == ["0", "stem"]
    ste = sj.plan(LinenNet(), methods.ste(sj.NM(2, 4)), jnp.zeros((2, 8, 8, 3)))
    assert "does not fit" in ste["stem"].reason  # 3 input channels: not 2:4
    meprop = sj.plan(LinenNet(), methods.meprop(0.5), X)
    assert meprop["classifier"].reason == "last layer" and meprop["stem"].sparse


def test_plan_lists_layers_without_a_hook():
    class Up(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(nn.ConvTranspose(4, (2, 2))(nn.Dense(4)(x)))

    plan = sj.plan(Up(), methods.swat(0.5, dense_first=False), jnp.zeros((1, 4, 4, 4)))
    assert [l.kind for l in plan] == ["dense", "ConvTranspose", "dense"]
    assert "no dot_general/conv hook" in plan[1].reason


def test_plan_needs_example_inputs_for_linen():
    with pytest.raises(TypeError, match="needs example inputs"):
        sj.plan(LinenNet(), methods.swat(0.8))


# ------------------------------------------------- NNX without example inputs
@pytest.mark.parametrize("method", [methods.swat(0.8), methods.meprop(0.5), methods.dsg(0.5),
                                    methods.swat(0.8, dense_first=False, dense_last=True)],
                         ids=["swat", "meprop", "dsg", "swat-dense-last"])
def test_nnx_order_dependent_method_without_example_inputs_raises(method):
    # Before: the attribute order (body, classifier, stem) was used: SWAT kept `body`
    # dense and made `stem` sparse, meProp sparsified the classifier.
    with pytest.raises(ValueError, match="pass example inputs"):
        sj.sparsify(NNXNet(nnx.Rngs(0)), method)
    with pytest.raises(ValueError, match="pass example inputs"):
        sj.plan(NNXNet(nnx.Rngs(0)), method)


@pytest.mark.parametrize("method", [methods.ste(sj.NM(2, 4)), methods.swat(0.8, dense_first=False),
                                    methods.swat(0.8, distribution="erk", dense_first=False)],
                         ids=["ste", "swat-no-first", "swat-erk"])
def test_nnx_order_free_method_without_example_inputs_works(method):
    model = sj.sparsify(NNXNet(nnx.Rngs(0)), method)
    reference = sj.plan(NNXNet(nnx.Rngs(0)), method, X)
    assert _nnx_state(model) == pytest.approx(reference.sparsities)
    assert sj.plan(NNXNet(nnx.Rngs(0)), method).order == "graph"
    assert model(X).shape == (2, 12)


def test_nnx_with_example_inputs_the_first_layer_by_call_order_is_dense():
    model = sj.sparsify(NNXNet(nnx.Rngs(0)), methods.swat(0.8), X)
    assert set(_nnx_state(model)) == {"body", "classifier"}  # stem (first called) dense
    model = sj.sparsify(NNXNet(nnx.Rngs(0)), methods.meprop(0.5), X)
    assert set(_nnx_state(model)) == {"stem", "body"}  # classifier (last called) dense


# ------------------------------------------------------------- skip logging
def test_method_skips_log_at_warning_like_pruning(caplog):
    x = jnp.zeros((2, 8, 8, 3))  # stem has 3 input channels: 2:4 does not fit
    with caplog.at_level(logging.WARNING, logger="sparsejax"):
        sj.sparsify(LinenNet(), methods.ste(sj.NM(2, 4))).init(jax.random.key(0), x)
    linen_records = [r for r in caplog.records if "stem stays dense" in r.getMessage()]
    assert linen_records and all(r.levelno == logging.WARNING for r in linen_records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparsejax"):
        sj.sparsify(NNXNet(nnx.Rngs(0), in_channels=3), methods.ste(sj.NM(2, 4)), x)
    assert any("stem stays dense" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparsejax"):  # pruning's skip, for reference
        with pytest.warns(UserWarning, match="no leaf"):
            sj.compute_masks({"w": jnp.ones((3, 8))}, None, pattern=sj.NM(2, 4))
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_rules_and_user_choices_stay_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="sparsejax"):
        sj.sparsify(LinenNet(), methods.swat(0.5, exclude="classifier")).init(
            jax.random.key(0), X)
    dense = [r for r in caplog.records if "stays dense" in r.getMessage()]
    assert len(dense) == 2 and all(r.levelno == logging.INFO for r in dense)


def test_conv_transpose_skip_logs_at_warning(caplog):
    class Up(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(nn.ConvTranspose(4, (2, 2))(nn.Dense(4)(x)))

    with caplog.at_level(logging.WARNING, logger="sparsejax"):
        sj.sparsify(Up(), methods.swat(0.5, dense_first=False)).init(
            jax.random.key(0), jnp.zeros((1, 4, 4, 4)))
    assert any("ConvTranspose) has no" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
