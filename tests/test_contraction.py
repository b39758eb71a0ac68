"""N:M along the real contraction axes (issue 16, build 5) and effective_params (build 6).

Expectations are derived independently with numpy: the contraction axes are
written out per layer by hand, and every group of m consecutive entries along
the flattened contraction dimension is counted after a moveaxis + reshape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sparsejax as sj
from sparsejax.analysis.compression import export_compressed, load_compressed
from sparsejax.ops import algebra
from sparsejax.paths import leaf_paths
from sparsejax.zoo.vit import ViT, vit_tiny


def _groups(w, axes, m=4):
    """``(groups, m)`` array of |w| along the flattened contraction axes ``axes``."""
    w = np.abs(np.asarray(w, np.float64))
    rest = [a for a in range(w.ndim) if a not in axes]
    moved = np.transpose(w, list(axes) + rest)                   # (K..., other...)
    k = int(np.prod([w.shape[a] for a in axes]))
    cols = moved.reshape(k, -1).T                                 # (other, K)
    return cols.reshape(cols.shape[0], k // m, m).reshape(-1, m)


def _assert_two_of_four(w_s, w, axes, where):
    """Exactly 2 kept in every group of 4 along the flattened contraction dims, the largest."""
    kept = _groups(w_s, axes) != 0
    assert (kept.sum(-1) == 2).all(), f"{where}: kept per group {np.unique(kept.sum(-1))}"
    mags = _groups(w, axes)
    top2 = np.sort(mags, axis=-1)[:, 2:]
    np.testing.assert_allclose(np.sort(np.where(kept, mags, 0), -1)[:, 2:], top2,
                               err_msg=where)


# The contraction axes of the zoo ViT's layers, written out by hand.
def _vit_axes(path):
    if path.endswith(("query", "key", "value")):
        return (0,)          # (in, heads, head_dim)
    if path.endswith("attention/out"):
        return (0, 1)        # (heads, head_dim, out)
    if path == "embedding":
        return (2,)          # (h, w, in, out)
    return (0,)              # Dense (in, out)


@pytest.fixture
def captured(monkeypatch):
    """Records the kernel W_s every sparse op's forward multiplies with, by layer path."""
    seen = {}
    original = algebra._forward

    def forward(cfg, a, w, aux, save=True):
        out = original(cfg, a, w, aux, save)
        jax.debug.callback(lambda v, _p=cfg.where: seen.__setitem__(_p, np.asarray(v)),
                           out[1].w)
        return out

    monkeypatch.setattr(algebra, "_forward", forward)
    return seen


@pytest.mark.parametrize("heads", [3, 4])
def test_ste_nm_on_vit_attention_groups_along_the_input(heads, captured):
    model = ViT(num_classes=10, patch=4, dim=16 * heads, depth=1, heads=heads, mlp_dim=64)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    sparse = sj.sparsify(model, sj.ste(sj.NM(2, 4)))
    variables = sparse.init(jax.random.key(0), x)
    sparse.apply(variables, x)
    params = leaf_paths(variables["params"])
    expected = {"block1/attention/query", "block1/attention/key", "block1/attention/value",
                "block1/attention/out", "block1/mlp_fc1", "block1/mlp_fc2", "head"}
    assert set(captured) == expected   # no attention layer skipped; the RGB stem doesn't fit
    for path, w_s in captured.items():
        _assert_two_of_four(w_s, params[f"{path}/kernel"], _vit_axes(path), path)


def test_ste_nm_makes_every_eligible_vit_tiny_layer_sparse():
    sparse = sj.sparsify(vit_tiny(), sj.ste(sj.NM(2, 4)))
    shapes = jax.eval_shape(sparse.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    layers = [p for p in leaf_paths(shapes["sparsity"]) if p.endswith("/sparsity")]
    # 12 blocks x (query, key, value, out, mlp_fc1, mlp_fc2) + head; the 3-channel stem
    # is the only layer whose contraction size is not divisible by 4.
    assert len(layers) == 12 * 6 + 1


class _Einsums(nn.Module):
    @nn.compact
    def __call__(self, x):                                     # (b, t, 8)
        y = nn.Einsum((8, 2, 4), "btd,dhk->bthk", name="proj")(x)      # contracts d
        z = nn.Einsum((2, 4, 8), "bthk,hko->bto", name="merge")(y)     # contracts (h, k)
        return nn.Einsum((2, 8, 4), "bthk,hok->bto", name="gapped")(y) + z  # contracts (h, k)


def test_ste_nm_on_einsum_layers(captured):
    x = jax.random.normal(jax.random.key(1), (2, 3, 8))
    sparse = sj.sparsify(_Einsums(), sj.ste(sj.NM(2, 4)))
    variables = sparse.init(jax.random.key(0), x)
    sparse.apply(variables, x)
    params = leaf_paths(variables["params"])
    axes = {"proj": (0,), "merge": (0, 1), "gapped": (0, 2)}
    assert set(captured) == set(axes)
    for path, w_s in captured.items():
        _assert_two_of_four(w_s, params[f"{path}/kernel"], axes[path], path)
    assert sj.contraction_axes(_Einsums(), x) == {f"{p}/kernel": a for p, a in axes.items()}


class _NNXLayers(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(4, 8, (3, 3), rngs=rngs)                          # (3, 3, 4, 8)
        self.qkv = nnx.LinearGeneral(8, (4, 8), rngs=rngs)                     # (8, 4, 8)
        self.out = nnx.LinearGeneral((4, 8), 12, axis=(-2, -1), rngs=rngs)     # (4, 8, 12)
        self.mix = nnx.Einsum("bsd,dfe->bsfe", (12, 4, 2), rngs=rngs)          # (12, 4, 2)
        self.head = nnx.Linear(8, 4, rngs=rngs)                                # (8, 4)

    def __call__(self, x):
        y = self.conv(x).reshape(x.shape[0], -1, 8)
        y = self.out(self.qkv(y))
        return self.head(self.mix(y).reshape(x.shape[0], -1, 8))


def test_ste_nm_on_nnx_layers(captured):
    x = jax.random.normal(jax.random.key(1), (2, 4, 4, 4))
    model = sj.sparsify(_NNXLayers(nnx.Rngs(0)), sj.ste(sj.NM(2, 4)), x)
    model(x)
    axes = {"conv": (2,), "qkv": (0,), "out": (0, 1), "mix": (0,), "head": (0,)}
    assert set(captured) == set(axes)
    for path, w_s in captured.items():
        _assert_two_of_four(w_s, getattr(model, path).kernel[...], axes[path], path)
    assert sj.contraction_axes(model) == {f"{p}/kernel": a for p, a in axes.items()}


# ----------------------------------------------------------------- tree level
@pytest.mark.parametrize("heads", [3, 4])
def test_tree_level_nm_on_vit_with_model_axes(heads):
    model = ViT(num_classes=8, patch=4, dim=16 * heads, depth=1, heads=heads, mlp_dim=64)
    x = jnp.zeros((1, 8, 8, 3))
    params = model.init(jax.random.key(0), x)["params"]
    # Without layer information the rank-3 attention kernels are ambiguous: refused.
    with pytest.raises(ValueError, match=r"block1/attention/\w+/kernel.*ambiguous.*axes"):
        sj.prune(params, pattern=sj.NM(2, 4))
    axes = sj.contraction_axes(model, x)
    assert axes["block1/attention/query/kernel"] == (0,)
    assert axes["block1/attention/out/kernel"] == (0, 1)
    pruned, masks = sj.prune(params, pattern=sj.NM(2, 4), axes=axes)
    leaves, mask_leaves = leaf_paths(params), leaf_paths(masks)
    attention = [p for p in mask_leaves if "attention" in p and mask_leaves[p] is not None]
    assert len(attention) == 4
    for path, mask in mask_leaves.items():
        if mask is None or path.startswith("embedding"):
            continue
        _assert_two_of_four(leaf_paths(pruned)[path], leaves[path],
                            _vit_axes(path[:-len("/kernel")]), path)

    # ASP: pruning(None, pattern=NM(2, 4)) last in the chain, masks at init.
    tx = optax.chain(optax.sgd(0.0), sj.pruning(None, pattern=sj.NM(2, 4), update_every=None,
                                                 axes=axes, exclude="embedding"))
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    after = leaf_paths(optax.apply_updates(params, updates))
    for path in attention:
        _assert_two_of_four(after[path], leaves[path], _vit_axes(path[:-len("/kernel")]), path)


def test_asp_recipe_prunes_vit_attention_along_the_model_axes():
    """The experiment stack's ASP recipe gets the model's axes from the train loop: every
    eligible attention kernel is 2:4 along its contraction dims (in % 16, out % 8)."""
    import ml_collections

    from sparsejax.experiment import config as config_lib, recipes

    model = ViT(num_classes=8, patch=4, dim=64, depth=1, heads=4, mlp_dim=64)
    x = jnp.zeros((1, 8, 8, 3))
    params = model.init(jax.random.key(0), x)["params"]
    config = config_lib.base_config()
    config.method = ml_collections.ConfigDict({"name": "asp", "n": 2, "m": 4, "exclude": ""})
    axes = sj.contraction_axes(model, x, train=False)
    tx = recipes.build_phases(config, 10, 5, axes)[1].pruning
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    after, leaves = leaf_paths(optax.apply_updates(params, updates)), leaf_paths(params)
    masked = {p for p, m in leaf_paths(sj.get_masks(state)).items() if m is not None}
    # in = 64 (query/key/value) or 4 * 16 (out), out = 64: all four attention kernels.
    assert {p for p in masked if "attention" in p} == {
        f"block1/attention/{n}/kernel" for n in ("query", "key", "value", "out")}
    assert all(p.endswith("kernel") for p in masked)
    for path in masked:
        if not path.startswith("embedding"):
            _assert_two_of_four(after[path], leaves[path], _vit_axes(path[:-len("/kernel")]),
                                path)


def test_bare_tree_rule_and_errors():
    assert sj.default_contraction_axes((16, 8)) == (0,)
    assert sj.default_contraction_axes((3, 3, 16, 8)) == (2,)
    assert sj.default_contraction_axes((16, 4, 8)) is None
    w = np.random.default_rng(0).normal(size=(16, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="'q/kernel'.*ambiguous.*axis="):
        sj.nm_mask(w, 2, 4, where="q/kernel")
    _assert_two_of_four(np.where(sj.nm_mask(w, 2, 4, axis=0), w, 0), w, (0,), "axis=0")
    _assert_two_of_four(np.where(sj.NM(2, 4, axis=(1, 2)).mask(w), w, 0), w, (1, 2), "(1, 2)")
    with pytest.raises(ValueError, match="not a leaf.*close matches"):
        sj.prune({"q": {"kernel": w}}, pattern=sj.NM(2, 4), axes={"q/kernal": (0,)})
    # Rank-2 and rank-4 leaves keep the documented default (as before).
    d = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32)
    _assert_two_of_four(np.where(sj.NM(2, 4).mask(d), d, 0), d, (0,), "dense")
    # An explicit axis wins over the layer's.
    assert sj.NM(2, 4, axis=-1).along((0,)) == sj.NM(2, 4, axis=-1)
    assert sj.NM(2, 4).along((0, 1)) == sj.NM(2, 4, axis=(0, 1))


# ----------------------------------------------------------- effective params
class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        x = nn.relu(nn.DenseGeneral((2, 8), name="fc2")(x))
        return nn.DenseGeneral(4, axis=(-2, -1), name="fc3")(x)


def _kept(w):
    return int(np.count_nonzero(np.asarray(w)))


@pytest.mark.parametrize("method", [sj.swat(0.8), sj.ste(sj.NM(2, 4))], ids=["swat", "ste"])
def test_effective_params_linen(method, tmp_path):
    x = jax.random.normal(jax.random.key(1), (4, 8))
    sparse = sj.sparsify(_MLP(), method)
    variables = sparse.init(jax.random.key(0), x)
    eff = sj.effective_params(sparse, variables, x)
    assert set(eff) == {"params"}
    np.testing.assert_allclose(_MLP().apply(eff, x), sparse.apply(variables, x), rtol=1e-6,
                               atol=1e-6)
    dense, got = leaf_paths(variables["params"]), leaf_paths(eff["params"])
    if isinstance(method, sj.methods.SWAT):
        assert _kept(got["fc1/kernel"]) == 8 * 16              # dense_first
        for p in ("fc2/kernel", "fc3/kernel"):
            assert _kept(got[p]) == int(np.ceil(0.2 * dense[p].size))
    else:
        for p, axes in (("fc1/kernel", (0,)), ("fc2/kernel", (0,)), ("fc3/kernel", (0, 1))):
            _assert_two_of_four(got[p], dense[p], axes, p)
            assert _kept(got[p]) == dense[p].size // 2
    # Export, load, run: the same outputs.
    stats = export_compressed(eff["params"], tmp_path / "model.npz")
    assert stats["ratio"] > 1.0
    loaded = load_compressed(tmp_path / "model.npz", like=eff["params"])
    np.testing.assert_array_equal(_MLP().apply({"params": loaded}, x), _MLP().apply(eff, x))


class _NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.LinearGeneral(16, (2, 8), rngs=rngs)
        self.fc3 = nnx.LinearGeneral((2, 8), 4, axis=(-2, -1), rngs=rngs)

    def __call__(self, x):
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


@pytest.mark.parametrize("method", [sj.swat(0.8), sj.ste(sj.NM(2, 4))], ids=["swat", "ste"])
def test_effective_params_nnx(method):
    x = jax.random.normal(jax.random.key(1), (4, 8))
    model = sj.sparsify(_NNXMLP(nnx.Rngs(0)), method, x)
    eff = sj.effective_params(model)
    plain = _NNXMLP(nnx.Rngs(0))
    nnx.update(plain, eff)
    model.eval()
    np.testing.assert_allclose(plain(x), model(x), rtol=1e-6, atol=1e-6)
    sizes = {"fc1": 8 * 16, "fc2": 16 * 16, "fc3": 16 * 4}
    for name, size in sizes.items():
        kept = _kept(getattr(plain, name).kernel[...])
        if isinstance(method, sj.methods.SWAT):
            assert kept == (size if name == "fc1" else int(np.ceil(0.2 * size)))
        else:
            assert kept == size // 2


@pytest.mark.parametrize("method", [sj.meprop(4), sj.dsg(0.5), sj.dense()],
                         ids=["meprop", "dsg", "dense"])
def test_effective_params_unchanged_for_backward_only_methods(method):
    x = jax.random.normal(jax.random.key(1), (4, 8))
    sparse = sj.sparsify(_MLP(), method)
    variables = sparse.init(jax.random.key(0), x)
    eff = sj.effective_params(sparse, variables, x)
    jax.tree.map(np.testing.assert_array_equal, eff["params"], variables["params"])


def test_effective_params_applies_pruning_masks():
    x = jax.random.normal(jax.random.key(1), (4, 8))
    variables = _MLP().init(jax.random.key(0), x)
    tx = optax.chain(optax.sgd(0.1), sj.pruning(0.75, update_every=None))
    state = tx.init(variables["params"])          # masks from step 0, params not yet masked
    eff = sj.effective_params(_MLP(), variables, x, masks=state)
    for path, w in leaf_paths(eff["params"]).items():
        if path.endswith("kernel"):
            assert _kept(w) == int(np.ceil(0.25 * w.size)), path
