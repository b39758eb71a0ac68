"""Tests for sparsejax.analysis.summary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax.analysis.summary import LayerSummary, Summary, summary


def _tree():
    kernel = np.arange(1, 25, dtype=np.float32).reshape(4, 6)
    kernel[:, :3] = 0.0  # 12 of 24 zero
    return {"Dense_0": {"bias": jnp.zeros(6), "kernel": jnp.asarray(kernel)},
            "Dense_1": {"kernel": jnp.asarray(np.eye(3, dtype=np.float32)).astype(jnp.bfloat16)}}


def test_params_count_exact_zeros_per_layer_and_total():
    s = summary(_tree())
    assert s.kind == "params"
    assert s.layers == (LayerSummary("Dense_0/bias", (6,), 6, 0, 1.0),
                        LayerSummary("Dense_0/kernel", (4, 6), 24, 12, 0.5),
                        LayerSummary("Dense_1/kernel", (3, 3), 9, 3, 1 - 3 / 9))
    assert (s.total_params, s.total_nonzero) == (39, 15)
    assert s.sparsity == pytest.approx(24 / 39)


def test_masks_count_false_and_skip_none():
    masks = {"Dense_0": {"bias": None, "kernel": jnp.asarray(np.arange(24).reshape(4, 6) % 4 == 0)},
             "Dense_1": {"kernel": jnp.ones((3, 3), bool)}}
    s = summary(masks)
    assert s.kind == "masks"
    assert [r.path for r in s.layers] == ["Dense_0/kernel", "Dense_1/kernel"]
    assert [r.nonzero for r in s.layers] == [6, 9]
    assert (s.total_params, s.total_nonzero) == (33, 15)
    assert s.sparsity == pytest.approx(18 / 33)
    assert summary({"a": None}).total_params == 0 and summary({"a": None}).sparsity == 0.0


def test_table_text_is_aligned():
    text = str(summary(_tree()))
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "params", "nonzero", "sparsity"]
    assert lines[2].split() == ["Dense_0/kernel", "(4,", "6)", "24", "12", "0.5000"]
    assert lines[-1].split() == ["total", "39", "15", f"{24 / 39:.4f}"]
    # right-aligned numeric columns end at the same offsets on every line
    ends = {len(line) for line in lines}
    assert len(ends) == 1
    masks_text = str(summary({"w": jnp.array([True, False])}))
    assert masks_text.splitlines()[0].split()[3] == "kept"


def test_to_dict_is_json_ready_and_frozen():
    s = summary(_tree())
    d = json.loads(json.dumps(s.to_dict()))
    assert d["total_params"] == 39 and d["kind"] == "params"
    assert d["layers"][1] == {"path": "Dense_0/kernel", "shape": [4, 6], "params": 24,
                              "nonzero": 12, "sparsity": 0.5}
    with pytest.raises(AttributeError):
        s.sparsity = 0.0  # frozen
    assert isinstance(s, Summary)


def test_traced_input_is_rejected():
    with pytest.raises(TypeError, match="'w' is traced"):
        jax.jit(lambda w: summary({"w": w}).sparsity)(jnp.ones(3))
