"""Compression estimates, direction cosine, export round trip, tensor-core model."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.analysis import compression, tensorcore


def test_zvc_matches_formula_and_jits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).astype(np.float32)
    x[rng.random(1000) < 0.7] = 0.0
    expected = math.ceil(1000 / 32) * 4 + np.count_nonzero(x) * 4
    assert int(jax.jit(compression.zvc_bytes)(x)) == expected
    assert int(compression.zvc_bytes(x.astype(np.float16))) == math.ceil(1000 / 32) * 4 + np.count_nonzero(x) * 2


def test_zvc_rejects_bad_block():
    with pytest.raises(ValueError, match="multiple of 8"):
        compression.zvc_bytes(jnp.ones(8), block=12)


def _rle_reference(a, run_bits, bpe):
    tokens, run, max_run = 0, 0, 2**run_bits - 1
    for v in a:
        if v == 0:
            if run == max_run:
                tokens += 1  # filler token carrying a stored zero
                run = 0
            else:
                run += 1
        else:
            tokens += 1
            run = 0
    if run:
        tokens += 1
    return math.ceil(tokens * (run_bits + 8 * bpe) / 8)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("run_bits", [2, 4])
def test_rle_matches_reference(density, run_bits):
    rng = np.random.default_rng(1)
    a = rng.normal(size=300).astype(np.float32)
    a[rng.random(300) >= density] = 0
    assert compression.rle_bytes(a, run_bits=run_bits) == _rle_reference(a, run_bits, 4)


def test_compression_ratio_schemes_and_zlib_sanity():
    x = np.zeros(4096, np.float32)
    x[::10] = 1.5
    zvc = compression.compression_ratio(x)
    rle = compression.compression_ratio(x, scheme="rle")
    assert zvc > 3 and rle > 3
    # Both lie below what a general-purpose compressor gets on this regular pattern.
    assert len(zlib.compress(x.tobytes())) < x.nbytes / zvc
    with pytest.raises(ValueError, match="valid"):
        compression.compression_ratio(x, scheme="lz4")


@pytest.mark.parametrize("s,expected", [(0.5, 0.964), (0.8, 0.806), (0.9, 0.663)])
def test_direction_cosine_gaussian(s, expected):
    x = jax.random.normal(jax.random.key(0), (200_000,))
    assert abs(float(compression.direction_cosine(x, s)) - expected) < 0.01


def test_export_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    w[np.abs(w) < 1.0] = 0
    params = {"dense": {"kernel": w, "bias": np.arange(8, dtype=np.float32)},
              "emb": rng.normal(size=(4,)).astype(np.float16)}
    stats = compression.export_compressed(params, tmp_path / "m")
    back = compression.load_compressed(tmp_path / "m.npz", like=params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert stats["compressed_bytes"] < stats["dense_bytes"]
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="differing paths"):
        compression.load_compressed(tmp_path / "m.npz", like={"other": w})


def test_tensorcore_model():
    big = tensorcore.speedup_24(8192, 8192, 8192)
    assert 1.9 < big <= 2.0
    skinny = tensorcore.speedup_24(1, 4096, 4096)
    assert 1.0 <= skinny < 2.0 and tensorcore.gemm_time(1, 4096, 4096).bound == "memory"
    assert abs(tensorcore.A100.peak_flops / 1e12 - 312) < 1
    assert abs(tensorcore.TITAN_V.peak_flops / 1e12 - 125) < 1
    with pytest.raises(ValueError, match="positive"):
        tensorcore.gemm_time(0, 1, 1)
