"""The CPU selection kernel (sparsejax.native) against the XLA counting search."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import native, select

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the CPU kernel cannot be built")


def _both(fn, *args):
    """``fn(*args)`` traced with the CPU kernel and with the XLA search."""
    with native.use(True):
        a = jax.jit(fn)(*args)
    with native.use(False):
        b = jax.jit(fn)(*args)
    return a, b


def _answer(x, k, active=True):
    """(v, count >= v, count > v) as the kernel and the search give them."""
    def fn(x, k, active):
        v, (ge, gt) = select._kth([x.reshape(-1)], k, None, [x.shape], active=active,
                                  counts=True)
        return jnp.stack([v, ge, gt])

    return _both(fn, x, jnp.int32(k), jnp.bool_(active))


def test_kernel_builds_where_a_compiler_exists():
    assert native.available(), "the CPU kernel failed to build (see the logged warning)"


def _cases():
    rng = np.random.default_rng(0)
    sizes = [1, 2, 17, 4096, 16384, 16385, 70001, 300_000]
    for n in sizes:
        for kind in ("normal", "ties", "nan", "relu", "inf", "zeros"):
            x = rng.normal(size=n).astype(np.float32)
            if kind == "ties":
                x = np.round(x * 2) / 2
            elif kind == "nan":
                x[rng.random(n) < 0.2] = np.nan
            elif kind == "relu":
                x = np.maximum(x, 0) * rng.uniform(0.1, 3.0, size=n).astype(np.float32)
            elif kind == "inf":
                x[rng.random(n) < 0.05] = np.inf
                x[rng.random(n) < 0.05] = -0.0
            elif kind == "zeros":
                x[:] = 0.0
            for k in sorted({-1, 0, 1, n // 5, n // 2, n - 1, n, n + 1}):
                yield kind, x, k


@pytest.mark.parametrize("kind,x,k", list(_cases()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_kernel_equals_search(kind, x, k):
    a, b = _answer(jnp.asarray(x), k)
    if k <= 0:  # the search's counts at v = +inf key: compare v only
        assert int(a[0]) == int(b[0])
    else:
        np.testing.assert_array_equal(a, b, err_msg=f"{kind} n={x.size} k={k}")
    if 0 < k <= x.size:
        keys = np.asarray(select.magnitude_keys(jnp.asarray(x)))
        v = int(a[0])
        assert v == np.sort(keys)[::-1][k - 1]
        assert int(a[1]) == (keys >= v).sum() and int(a[2]) == (keys > v).sum()


def test_sample_that_misses_falls_back_to_exact_radix():
    # Every sampled position holds a huge value: the sampled bracket is wrong.
    n = 1 << 18
    x = np.random.default_rng(1).normal(size=n).astype(np.float32)
    x[:: select.sample_stride(n, 4096)] = 1e6
    for k in (1, 5000, n // 5, n - 3):
        a, b = _answer(jnp.asarray(x), k)
        np.testing.assert_array_equal(a, b)


def test_int32_keys_half_precision_and_inactive():
    x = jax.random.normal(jax.random.key(0), (64, 513))
    keys = select.magnitude_keys(x)
    for k in (1, 700, 30_000):
        a, b = _answer(keys, k)
        np.testing.assert_array_equal(a, b)
    a, b = _answer(x.astype(jnp.bfloat16), 4000)
    np.testing.assert_array_equal(a, b)
    a, b = _answer(x, 4000, active=False)
    np.testing.assert_array_equal(a, jnp.array([-1, 0, 0]))
    assert int(b[0]) == -1


def test_masks_thresholds_vmap_and_grad_agree():
    x = jax.random.normal(jax.random.key(3), (8, 4096))
    for ties in ("index", "all"):
        a, b = _both(lambda x: select.select_topk_key([x], 5000, ties=ties)[0][0], x)
        np.testing.assert_array_equal(a, b)
        assert int(a.sum()) == 5000
    a, b = _both(lambda x: jax.vmap(lambda r: select.threshold(r, 0.75))(x), x)
    np.testing.assert_array_equal(a, b)
    # A gradient through a masked product is untouched by where the mask came from.
    f = lambda x: jnp.sum(jnp.where(jnp.abs(x) >= select.threshold(x, 0.9), x, 0.0) ** 2)
    a, b = _both(jax.grad(f), x)
    np.testing.assert_array_equal(a, b)


def test_kernel_is_one_custom_call_on_cpu_and_the_search_elsewhere():
    x = jnp.ones((32, 32, 32, 64))
    f = jax.jit(lambda x: select.threshold(x, 0.8))
    with native.use(True):
        hlo = f.lower(x).as_text()
        assert "sparsejax_kth_largest_key" in hlo and "while" not in hlo
        # Lowered for a GPU (no GPU needed to lower): the XLA counting search.
        gpu = jax.export.export(f, platforms=["cuda"])(x).mlir_module()
        assert "sparsejax_kth_largest_key" not in gpu and "while" in gpu
    with native.use(False):
        hlo = jax.jit(lambda x: select.threshold(x, 0.8)).lower(x).as_text()
    assert "sparsejax_kth_largest_key" not in hlo and "while" in hlo


def test_cpu_export_carries_the_search_not_the_kernel():
    # An exported artifact must run where this process's kernel is not
    # registered, so jax.export lowers the XLA search, even for the CPU.
    x = jax.random.normal(jax.random.key(2), (16, 32, 32, 8))
    step = jax.jit(lambda x: jnp.where(jnp.abs(x) >= select.threshold(x, 0.8), x, 0.0))
    with native.use(True):
        exported = jax.export.export(step, platforms=["cpu", "cuda"])(x)
        restored = jax.export.deserialize(exported.serialize())
        assert "sparsejax_kth_largest_key" not in exported.mlir_module()
        np.testing.assert_array_equal(restored.call(x), step(x))
        assert "sparsejax_kth_largest_key" in step.lower(x).as_text()


@pytest.mark.parametrize("relu", [False, True])
def test_kernel_splits_large_tensors_across_threads_exactly(relu):
    # 2M keys: the counting and collecting passes run in parts on XLA's threads.
    x = jax.random.normal(jax.random.key(5), (32, 32, 32, 64))
    x = jax.nn.relu(x) if relu else x
    for k in (1, 419_430, 1_000_000, x.size):
        a, b = _answer(x, k)
        np.testing.assert_array_equal(a, b)


def test_failed_build_falls_back_to_the_search(tmp_path):
    # No usable compiler and an empty cache: a warning, then the XLA search, same answer.
    code = ("import jax, jax.numpy as jnp; from sparsejax import native, select; "
            "x = jnp.arange(10.0); print(native.available(), "
            "float(jax.jit(lambda x: select.threshold(x, 0.8))(x)))")
    env = {**os.environ, "CXX": "false", "SPARSEJAX_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "8.0"], out.stderr
    assert "CPU selection kernel unavailable" in out.stderr


def test_use_and_environment_switch_the_kernel():
    with native.use(False):
        assert not native.enabled()
    with native.use(True):
        assert native.enabled()
    with pytest.raises(TypeError, match="True or False"):
        with native.use("no"):
            pass
    code = "from sparsejax import native; print(native.enabled())"
    env = {**os.environ, "SPARSEJAX_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
