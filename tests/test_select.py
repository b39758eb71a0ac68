"""Tests for sparsejax.select: exact counts, deterministic ties, NaN, traced k.

Every test runs twice: with the XLA counting search and with the CPU kernel
(sparsejax.native); tests marked ``xla_search`` inspect the search itself.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparsejax import native, select
from sparsejax.patterns import topk_mask

SHAPES = [(7,), (3, 4), (2, 3, 4), (16, 5)]
PROPS = settings(max_examples=30, deadline=None)

_topk = jax.jit(topk_mask)  # traced sparsity: one compilation per shape


@pytest.fixture(autouse=True, params=["xla", "native"])
def implementation(request):
    """Runs the test with the XLA search, then with the CPU kernel."""
    if request.param == "native":
        if request.node.get_closest_marker("xla_search"):
            pytest.skip("inspects the XLA counting search")
        if not native.available():
            pytest.skip("no C++ compiler: the CPU kernel is not built")
    with native.use(request.param == "native"):
        yield request.param


def _reference(x: np.ndarray, k: int) -> np.ndarray:
    """Keeps the k largest |x| (NaN never), ties to the lowest flat index."""
    a = np.abs(x.astype(np.float32)).ravel()
    order = np.argsort(-np.where(np.isnan(a), -1.0, a), kind="stable")
    keep = np.zeros(a.size, bool)
    keep[[i for i in order[:k] if not np.isnan(a[i])]] = True
    return keep.reshape(x.shape)


@st.composite
def arrays(draw, ties=False):
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if ties:  # few distinct magnitudes, both signs
        x = rng.integers(-3, 4, size=shape).astype(np.float32)
    else:
        x = rng.normal(size=shape).astype(np.float32)
    return x


def test_keep_count_host_is_exact():
    assert select.keep_count(0.7, 10) == 3
    assert select.keep_count(0.0, 10) == 10
    assert select.keep_count(0.999, 10) == 1
    assert select.keep_count(0.8, 0) == 0
    for i in range(100):
        assert select.keep_count(i / 100, 12_345) == -(-(100 - i) * 12_345 // 100)


def test_keep_count_traced_matches_host_on_grid():
    f = jax.jit(lambda s: select.keep_count(s, 2_359_296))
    for s in (0.0, 0.5, 0.7, 0.9, 0.9999, 0.1234):
        assert int(f(s)) == select.keep_count(s, 2_359_296)


@PROPS
@given(x=arrays(), pct=st.integers(0, 99))
def test_topk_exact_count(x, pct):
    m = np.asarray(_topk(jnp.asarray(x), pct / 100))
    assert m.shape == x.shape and m.dtype == np.bool_
    assert m.sum() == -(-(100 - pct) * x.size // 100)  # ceil((1 - s) * size)
    np.testing.assert_array_equal(m, _reference(x, int(m.sum())))


@PROPS
@given(x=arrays(ties=True), pct=st.integers(0, 99))
def test_topk_ties_lowest_index_first(x, pct):
    k = -(-(100 - pct) * x.size // 100)
    np.testing.assert_array_equal(np.asarray(_topk(jnp.asarray(x), pct / 100)),
                                  _reference(x, k))


def test_topk_host_float_equals_traced():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 5)), jnp.float32)
    for s in (0.0, 0.3, 0.77, 0.95):
        np.testing.assert_array_equal(topk_mask(x, s), _topk(x, s))


@PROPS
@given(x=arrays(), pct=st.integers(0, 99), n_nan=st.integers(1, 3))
def test_nan_never_kept(x, pct, n_nan):
    x = x.copy()
    x.ravel()[:n_nan] = np.nan
    m = np.asarray(_topk(jnp.asarray(x), pct / 100))
    assert not m[np.isnan(x)].any()
    k = -(-(100 - pct) * x.size // 100)
    assert m.sum() == min(k, x.size - n_nan)
    np.testing.assert_array_equal(m, _reference(x, k))


def test_traced_sparsity_does_not_recompile():
    traces = []

    def f(x, s):
        traces.append(None)
        return topk_mask(x, s)

    jf = jax.jit(f)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 8)), jnp.float32)
    for s in (0.1, 0.5, 0.9, 0.25):
        np.testing.assert_array_equal(jf(x, s), topk_mask(x, s))
        assert int(jf(x, s).sum()) == select.keep_count(s, 64)
    assert len(traces) == 1


def test_large_population_uses_exact_bracketed_bisection():
    # Above the sampling size: the sample bracket must still give the exact top-k.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1 << 18,)).astype(np.float32)
    x[::7] = 0.5  # a block of ties around the middle of the distribution
    for s in (0.5, 0.9):
        k = select.keep_count(s, x.size)
        m = np.asarray(topk_mask(jnp.asarray(x), s))
        assert m.sum() == k
        np.testing.assert_array_equal(m, _reference(x, k))


def test_kth_largest_key_with_weights():
    a = select.magnitude_keys(jnp.array([5.0, 3.0]))
    b = select.magnitude_keys(jnp.array([-4.0]))
    key = lambda v: int(select.magnitude_keys(jnp.array([v]))[0])
    # counts of entries >= 5, 4, 3 with b weighted 10: 1, 11, 12
    for k, v in [(1, 5.0), (2, 4.0), (11, 4.0), (12, 3.0)]:
        assert int(select.kth_largest_key([a, b], k, weights=[1, 10])) == key(v)
    assert int(select.kth_largest_key([a, b], 2)) == key(4.0)


def test_select_topk_weighted_and_multi_array():
    a = select.magnitude_keys(jnp.array([1.0, 2.0, 2.0]))
    b = select.magnitude_keys(jnp.array([2.0, 0.5]))
    ma, mb = select.select_topk([a, b], 2)  # ties at 2.0: earlier array, lower index first
    assert ma.tolist() == [False, True, True] and mb.tolist() == [False, False]
    # b's units count twice; tied units are taken in order until the count reaches k.
    ma, mb = select.select_topk([a, b], 3, weights=[1, 2])
    assert ma.tolist() == [False, True, True] and mb.tolist() == [True, False]
    ma, mb = select.select_topk([a, b], 2, weights=[1, 2])
    assert ma.tolist() == [False, True, True] and mb.tolist() == [False, False]
    ma, mb = select.select_topk([a, b], 0)
    assert not ma.any() and not mb.any()


def test_magnitude_keys_order_and_errors():
    x = jnp.array([0.0, -1.0, 2.0, -np.inf, np.nan])
    k = np.asarray(select.magnitude_keys(x))
    assert k[4] == -1 and k[0] < k[1] < k[2] < k[3]
    with pytest.raises(TypeError, match="floating"):
        select.magnitude_keys(jnp.arange(3))


def test_threshold():
    assert float(select.threshold(jnp.arange(10.0), 0.8)) == 8.0
    assert float(select.threshold(jnp.arange(10.0), 0.0)) == 0.0
    x = jnp.asarray(np.random.default_rng(4).normal(size=4096), jnp.float32)
    t = select.threshold(x, 0.9, sample_size=512)
    realised = float(jnp.mean(jnp.abs(x) >= t))
    assert math.isclose(realised, 0.1, abs_tol=0.04)
    with pytest.raises(TypeError, match="floating"):
        select.threshold(jnp.arange(10), 0.5)


@pytest.mark.xla_search
def test_threshold_refresh_flag_searches_only_when_set(monkeypatch):
    x = jnp.asarray(np.random.default_rng(7).normal(size=(64, 1024)), jnp.float32)
    f = jax.jit(lambda x, r: select.threshold(x, 0.8, refresh=r))
    assert float(f(x, True)) == float(select.threshold(x, 0.8))
    assert float(f(x, False)) == 0.0
    small = jnp.asarray([3.0, -1.0, 2.0, 5.0])  # below the sort size: still the loop
    assert float(select.threshold(small, 0.5, refresh=True)) == 3.0
    # Not refreshing runs no counting pass at all; refreshing counts to the exact key.
    t, passes = _passes(monkeypatch, select.threshold, x, 0.8, refresh=False)
    assert float(t) == 0.0 and passes == [0]
    t, passes = _passes(monkeypatch, select.threshold, x, 0.8, refresh=True)
    assert float(t) == float(select.threshold(x, 0.8)) and 0 < passes[0] <= 34
    with pytest.raises(ValueError, match="scalar bool"):
        select.threshold(x, 0.8, refresh=jnp.ones(2, bool))


def test_threshold_is_the_exact_kth_magnitude_on_the_search_path():
    # 300K entries: the counting search with sampled probes and the exact-end
    # pass, on the values themselves (no int32 key copy); NaN is never kept.
    x = np.random.default_rng(6).standard_cauchy(300_000).astype(np.float32)
    x[::1000] = np.nan
    finite = np.sort(np.abs(x[~np.isnan(x)]))[::-1]
    for sparsity in (0.5, 0.8, 0.99):
        k = select.keep_count(sparsity, x.size)
        t = jax.jit(select.threshold, static_argnums=1)(jnp.asarray(x), sparsity)
        assert float(t) == finite[k - 1]



def test_sample_stride_visits_every_channel():
    # size // samples = 32 would read channel 0 of a channels-last tensor only.
    for size, samples, channels in [(262144, 8192, 32), (1 << 20, 8192, 128), (4096, 512, 8)]:
        stride = select.sample_stride(size, samples)
        assert 1 < stride <= size // samples
        assert all(stride % d for d in range(2, stride))  # prime
        assert len(set((np.arange(samples) * stride) % channels)) == channels
    assert select.sample_stride(100, 200) == 1
    # Channel 0 is 100x smaller than the rest: a sample of it alone would put
    # the threshold near 0 and keep far too much.
    x = np.random.default_rng(5).normal(size=(8192, 32)).astype(np.float32)
    x[:, 0] *= 0.01
    t = select.threshold(jnp.asarray(x), 0.9, sample_size=2048)
    assert math.isclose(float(jnp.mean(jnp.abs(x) >= t)), 0.1, abs_tol=0.02)

def test_select_topk_key_returns_threshold_and_ties_all_keeps_every_tie():
    x = jnp.array([1.0, 3.0, 2.0, 3.0, 0.0])
    keys = select.magnitude_keys(x)
    [m], v = select.select_topk_key([keys], 1)
    assert m.tolist() == [False, True, False, False, False]
    assert float(jax.lax.bitcast_convert_type(v, jnp.float32)) == 3.0
    [m], v = select.select_topk_key([keys], 1, ties="all")
    assert m.tolist() == [False, True, False, True, False]
    # More zeros than the dropped fraction: every non-zero kept (zeros change no value).
    [m], v = select.select_topk_key([keys], 5, ties="all")
    assert int(v) == 0 and m.tolist() == [True] * 5
    with pytest.raises(ValueError, match="ties"):
        select.select_topk_key([keys], 1, ties="first")


def test_bracketed_selection_counts_match_exact_on_large_tensor():
    x = jax.random.normal(jax.random.key(3), (300_000,))
    keys = select.magnitude_keys(x)
    k = 60_000
    [m], v = jax.jit(lambda kk: select.select_topk_key([kk], k))(keys)
    assert int(m.sum()) == k
    assert int(v) == int(np.sort(np.asarray(keys))[-k])
    [m_all], v_all = jax.jit(lambda kk: select.select_topk_key([kk], k, ties="all"))(keys)
    assert int(v_all) == int(v) and int(m_all.sum()) == int((keys >= v).sum())


@pytest.mark.xla_search
def test_sort_path_and_bisection_path_agree(monkeypatch):
    rng = np.random.default_rng(7)
    cases = []
    for size in (1, 7, 64, 301):
        x = rng.integers(-3, 4, size=size).astype(np.float32)  # many ties
        x[rng.random(size) < 0.1] = np.nan
        cases += [(x, k) for k in sorted({0, 1, size // 3, size - 1, size, size + 2})]

    def run():
        out = []
        for x, k in cases:
            keys = select.magnitude_keys(jnp.asarray(x))
            for ties in ("index", "all"):
                [m], v = select.select_topk_key([keys], k, ties=ties)
                out.append((np.asarray(m), int(v) if k > 0 else None))
        return out

    small = run()
    monkeypatch.setattr(select.search, "_SORT_BELOW", 0)
    jax.clear_caches()  # the selection is traced once per shape: retrace with the patch
    loop = run()
    jax.clear_caches()
    for (x, k), a, b in zip([c for c in cases for _ in range(2)], small, loop):
        np.testing.assert_array_equal(a[0], b[0], err_msg=f"{x} k={k}")
        assert a[1] == b[1]
        if k > 0:
            assert not a[0][np.isnan(x)].any()


@pytest.mark.parametrize("width", [1, 5, 32, 33])
def test_kth_largest_key_along_many_rows_matches_sort(width):
    # >= 1024 rows take the column layout; compare with a sort along the axis.
    x = jax.random.normal(jax.random.key(width), (16, 80, width))
    keys = select.magnitude_keys(x)
    for k in sorted({1, max(1, width // 3), width}):
        ref = np.sort(np.asarray(keys), axis=-1)[..., width - k]
        np.testing.assert_array_equal(select.kth_largest_key_along(keys, k, axis=-1), ref)
        np.testing.assert_array_equal(
            select.kth_largest_key_along(jnp.moveaxis(keys, -1, 1), k, axis=1), ref)



@pytest.mark.parametrize("ties", ["index", "all"])
@pytest.mark.parametrize("size", [301, 9000, 300_000])
def test_values_select_like_their_keys(ties, size):
    # Floating arrays are selected by magnitude, their keys computed inside the
    # counting passes (sort path, loop path, sampled-probe path).
    rng = np.random.default_rng(size)
    x = rng.normal(size=size).astype(np.float32)
    x[::5] = np.round(x[::5], 1)  # ties
    x[rng.random(size) < 0.01] = np.nan
    x[:7] = 0.0
    x[7] = 1e-40  # a denormal magnitude keeps its exact order
    keys = select.magnitude_keys(jnp.asarray(x))
    k = size // 4
    [m_ref], v_ref = select.select_topk_key([keys], k, ties=ties)
    assert int(v_ref) == int(np.sort(np.asarray(keys))[-k])
    for fn in (select.select_topk_key, jax.jit(select.select_topk_key, static_argnums=1,
                                               static_argnames="ties")):
        [m], v = fn([jnp.asarray(x)], k, ties=ties)
        assert int(v) == int(v_ref)
        np.testing.assert_array_equal(m, m_ref)
    if ties == "index":
        np.testing.assert_array_equal(m_ref, _reference(x, k))


def _passes(monkeypatch, fn, *args, **kwargs):
    """Runs ``fn`` eagerly and returns its result and the search's counting passes."""
    states = []

    def while_loop(cond, body, state):  # eager stand-in for lax.while_loop
        while bool(cond(state)):
            state = body(state)
        states.append(int(state[4]))  # the iteration counter
        return state

    monkeypatch.setattr(select.search.lax, "while_loop", while_loop)
    out = fn(*args, **kwargs)
    monkeypatch.undo()
    return out, states


@pytest.mark.xla_search
@pytest.mark.parametrize("shape,most", [((32, 16, 16, 64), 14), ((32, 32, 32, 32), 14),
                                        ((32, 8, 8, 64), 24), ((3, 3, 64, 128), 24)])
def test_search_takes_few_passes_on_channels_last_data(monkeypatch, shape, most):
    # Post-ReLU activations whose channels differ in scale (and conv weights):
    # sampled probes from every channel plus, above 128K keys, the exact-end
    # pass; a one-channel sample and bisecting the last gap took 20-34 passes.
    rng = np.random.default_rng(11)
    x = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.1, 3.0, size=shape[-1])
    if shape[0] == 32:
        x = np.maximum(x, 0)
    k = select.keep_count(0.8, x.size)
    v, passes = _passes(monkeypatch, select.kth_largest_key, [select.magnitude_keys(x)], k)
    expected = np.sort(np.abs(x).ravel())[x.size - k]
    assert int(v) == int(np.float32(expected).view(np.int32))
    assert len(passes) == 1 and passes[0] <= most, passes


def test_exact_end_pass_respects_weights_nan_and_ties():
    key = lambda v: int(select.magnitude_keys(jnp.array([v], jnp.float32))[0])
    keys = select.magnitude_keys(jnp.array([5.0, 4.0, 4.0, 3.0, np.nan], jnp.float32))
    # The largest key has weight 0: it never counts, so it is never the answer.
    w = jnp.array([0, 1, 1, 2, 1], jnp.int32)
    for k, v in [(1, 4.0), (2, 4.0), (3, 3.0), (4, 3.0)]:
        assert int(select.kth_largest_key([keys], k, weights=[w])) == key(v)
    assert int(select.kth_largest_key([keys], 5, weights=[w])) == -1  # only NaN left
    assert int(select.kth_largest_key([keys], 6, weights=[w])) == -1  # k > n
    # Unweighted, through the loop (sort path off): ties and NaN at both ends.
    big = np.repeat(np.array([7.0, 2.0, 2.0, 0.0, np.nan], np.float32), 1000)
    for k in (1, 999, 1000, 1001, 2999, 3000, 3001, 4000, 4001):
        got = int(select.kth_largest_key([select.magnitude_keys(big)], k))
        ref = np.sort(np.where(np.isnan(big), -1, np.abs(big)))[::-1][k - 1] if k <= big.size else -1
        assert got == (-1 if ref < 0 else key(float(ref))), k
