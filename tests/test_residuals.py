"""What each layer saves for the backward pass, read from JAX's residuals."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax import methods
from sparsejax.adapters import sparsify
from sparsejax.analysis.residuals import residual_bytes
from sparsejax.ops import compaction

MUT = ["sparsity", "batch_stats"]


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


X = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))


def _layers(method):
    model = Net() if method is None else sparsify(Net(), method)
    v = model.init(jax.random.key(1), X)
    loss = lambda p: jnp.sum(model.apply({**v, "params": p}, X, mutable=MUT)[0])
    return residual_bytes(loss, v["params"])


def test_a_dense_layer_saves_its_input_and_not_its_kernel():
    layers = _layers(None)
    assert [l.sparse for l in layers] == [False] * 4
    inputs = [8 * 32 * 32 * 3, 8 * 32 * 32 * 16, 8 * 32 * 32 * 32, 8 * 32 * 32 * 32]
    assert [l.dense_bytes for l in layers] == [4 * n for n in inputs]
    assert [l.saved_bytes for l in layers] == [l.dense_bytes for l in layers]
    assert [l.path.split("/")[-1] for l in layers] == ["Conv_0", "Conv_1", "Conv_2", "Dense_0"]


def test_default_swat_packs_the_saved_activation_and_keeps_only_the_weight_threshold():
    layers = _layers(methods.swat(0.8))
    assert [l.sparse for l in layers] == [False, True, True, True]  # SWAT-U: first layer dense
    for l in layers[1:]:
        n = l.dense_bytes // 4
        k = math.ceil(0.2 * n)
        # bits + tie plane + k values, and two float32 thresholds (activation, weight):
        # no kernel-sized residual (W_s is rebuilt from W, a parameter, and its threshold).
        assert l.saved_bytes == compaction.packed_nbytes((n,), k, jnp.float32, ties=True) + 8
    ratio = sum(l.saved_bytes for l in layers[1:]) / sum(l.dense_bytes for l in layers[1:])
    assert ratio <= 0.35


def test_masked_saves_the_masked_activation_and_kernel_remat_only_the_threshold():
    kernels = [3 * 3 * 16 * 32, 3 * 3 * 32 * 32, 32 * 32 * 32 * 10]  # Conv_1, Conv_2, Dense_0
    masked = _layers(methods.swat(0.8, saved="masked"))[1:]
    # A_s and W_s as masked dense copies: no pack or rebuild work, the most memory.
    assert [l.saved_bytes - l.dense_bytes for l in masked] == [4 * n for n in kernels]
    remat = _layers(methods.swat(0.8, saved="remat"))[1:]
    # From JAX's view the masked A (XLA recomputes it in the backward pass) and W's threshold.
    assert [l.saved_bytes - l.dense_bytes for l in remat] == [4, 4, 4]


def test_cached_thresholds_cannot_pack_so_auto_keeps_them_masked():
    layers = _layers(methods.swat(0.8, period=20))
    assert all(l.saved_bytes >= l.dense_bytes for l in layers[1:3])  # the convolutions


def test_small_activations_stay_masked_under_auto():
    # The Dense layer of a 4x4 input has 8 * 4 * 4 * 32 = 4096 < PACK_MIN_SIZE entries.
    model = sparsify(Net(), methods.swat(0.8))
    x = jnp.ones((8, 4, 4, 3))
    v = model.init(jax.random.key(1), x)
    loss = lambda p: jnp.sum(model.apply({**v, "params": p}, x, mutable=MUT)[0])
    dense_layer = residual_bytes(loss, v["params"])[-1]
    # A masked dense copy of A and of W_s (a layer that cannot pack keeps both as they are).
    assert dense_layer.saved_bytes == dense_layer.dense_bytes + 4 * (4 * 4 * 32 * 10)
