"""The README's "Write your own method" block: two methods the library does not have,
written against the public API, on a linen and an NNX model (gradients against hand
references) and from a config file through the registry."""

from __future__ import annotations

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes, train

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    [block] = [b for b in re.findall(r"```python\n(.*?)```", _README.read_text(), flags=re.S)
               if b.startswith("# Write your own method.")]
    return block


@pytest.fixture(scope="module")
def tutorial():
    namespace: dict = {}
    exec(compile(_block(), "README.md:tutorial", "exec"), namespace)  # pylint: disable=exec-used
    return namespace


def test_each_method_is_at_most_40_lines():
    block = _block()
    for name in ("ActivationOnlySWAT", "ChannelTopKGrad"):
        start = block.index(f"class {name}")
        body = block[block.rindex("@dataclasses", 0, start):]
        body = body[:body.find("\n\n\n") if "\n\n\n" in body else len(body)]
        assert len(body.strip().splitlines()) <= 40, name


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="fc2")(nn.relu(nn.Dense(12, name="fc1")(x)))


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(10, 12, rngs=rngs)
        self.fc2 = nnx.Linear(12, 5, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


X = jax.random.normal(jax.random.key(0), (6, 10))
LABELS = jnp.array([0, 1, 2, 3, 4, 0])


def _loss(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), LABELS[:, None], 1))


def _reference(w1, b1, w2, b2, method):
    """Hand backward pass of the 2-layer MLP: the layers' inputs, output gradients, dW."""
    h = X @ w1 + b1
    a = jnp.maximum(h, 0.0)
    d_out = jax.grad(lambda y: _loss(y))(a @ w2 + b2)
    d_h = (d_out @ w2.T) * (h > 0)
    grads = []
    for inp, dy in ((X, d_h), (a, d_out)):
        inp, dy = np.asarray(inp), np.asarray(dy)
        if method == "activation":  # dW from the top-K (ties kept) of the saved input
            kept = np.abs(inp) >= np.sort(np.abs(inp).ravel())[::-1][
                int(np.ceil(round(0.2 * inp.size, 9))) - 1]
            grads.append(np.where(kept, inp, 0.0).T @ dy)
        else:  # dense dW, then the 3 largest |dW| of each output column
            dw = inp.T @ dy
            grads.append(np.where(np_topk_columns(dw, 3), dw, 0.0))
    return grads


def np_topk_columns(x, k):
    mask = np.zeros(x.shape, bool)
    np.put_along_axis(mask, np.argsort(-np.abs(x), axis=0, kind="stable")[:k], True, axis=0)
    return mask


@pytest.mark.parametrize("which", ["activation", "channel"])
def test_linen_gradients_match_the_hand_reference(tutorial, which):
    method = (tutorial["ActivationOnlySWAT"](0.8) if which == "activation"
              else tutorial["ChannelTopKGrad"](3))
    sparse = sj.sparsify(MLP(), method)
    variables = sparse.init(jax.random.key(1), X)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        y, _ = sparse.apply({"params": p, **state}, X, mutable=["sparsity"])
        return _loss(y)

    g = jax.grad(loss)(params)
    ref = _reference(params["fc1"]["kernel"], params["fc1"]["bias"], params["fc2"]["kernel"],
                     params["fc2"]["bias"], which)
    np.testing.assert_allclose(g["fc1"]["kernel"], ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["fc2"]["kernel"], ref[1], rtol=1e-5, atol=1e-6)
    dense_g = jax.grad(lambda p: _loss(MLP().apply({"params": p}, X)))(params)
    assert not np.allclose(g["fc1"]["kernel"], dense_g["fc1"]["kernel"])  # really sparse
    np.testing.assert_allclose(g["fc2"]["bias"], dense_g["fc2"]["bias"], rtol=1e-5)
    assert [(l.path, l.sparse) for l in sj.plan(MLP(), method, X)] == [("fc1", True), ("fc2", True)]


@pytest.mark.parametrize("which", ["activation", "channel"])
def test_nnx_gradients_match_the_hand_reference(tutorial, which):
    method = (tutorial["ActivationOnlySWAT"](0.8) if which == "activation"
              else tutorial["ChannelTopKGrad"](3))
    model = NNXMLP(nnx.Rngs(2))
    w1, b1 = model.fc1.kernel.value, model.fc1.bias.value
    w2, b2 = model.fc2.kernel.value, model.fc2.bias.value
    sparse = sj.sparsify(model, method, X)
    g = nnx.grad(lambda m: _loss(m(X)))(sparse)
    ref = _reference(w1, b1, w2, b2, which)
    np.testing.assert_allclose(g.fc1.kernel.value, ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.fc2.kernel.value, ref[1], rtol=1e-5, atol=1e-6)


CONFIG = '''
import ml_collections

from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes

{block}

recipes.register("activation_only_swat", lambda sparsity=0.8: ActivationOnlySWAT(sparsity))
recipes.register("channel_topk_grad", lambda k=8: ChannelTopKGrad(k))


def get_config(arg=""):
    c = config_lib.base_config()
    c.name = arg or "activation_only_swat"
    c.model = ml_collections.ConfigDict({{"name": "mlp", "kwargs": {{"features": (32, 16)}}}})
    c.method = (ml_collections.ConfigDict({{"name": "channel_topk_grad", "k": 4}})
                if arg == "channel_topk_grad" else
                ml_collections.ConfigDict({{"name": "activation_only_swat", "sparsity": 0.8}}))
    return config_lib.smoke(c)
'''


@pytest.mark.parametrize("arg, dw_fraction", [("", 0.2), ("channel_topk_grad", 1.0)])
def test_registered_from_a_config_file_they_train_and_report_their_flops(tmp_path, arg,
                                                                         dw_fraction):
    path = tmp_path / "tutorial.py"
    path.write_text(CONFIG.format(block=_block()))
    try:
        config = config_lib.load(f"{path}:{arg}")
        summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    finally:
        recipes.RECIPES.pop("activation_only_swat", None)
        recipes.RECIPES.pop("channel_topk_grad", None)
    assert summary["method"] == (arg or "activation_only_swat")
    expected = (1 + 1 + dw_fraction) / 3  # every layer: dense forward and dA
    assert summary["step_flops_ratio"] == pytest.approx(expected)
