"""Tests of the model zoo: shapes, exact parameter counts, BatchNorm state, registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import zoo


def _num_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _cheap_init(model, x):
    """Variables of ``model`` drawn with numpy (``model.init`` compiles one PRNG
    computation per parameter, which takes tens of seconds for a ResNet on CPU)."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "kernel" in name:
            scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)
        if "scale" in name or "var" in name:
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name, kwargs, shape, expected", [
    ("lenet300100", {}, (1, 28, 28, 1), 266_610),
    # Caffe LeNet-5: 520 + 25,050 + 400,500 + 5,010.
    ("lenet5", {}, (1, 28, 28, 1), 431_080),
    ("resnet18", {}, (1, 32, 32, 3), 11_173_962),
    ("resnet18", {"stem": "imagenet", "num_classes": 1000}, (1, 224, 224, 3), 11_689_512),
    ("resnet50", {}, (1, 224, 224, 3), 25_557_032),
    ("vgg16", {}, (1, 32, 32, 3), 14_728_266),
    ("wrn16_8", {}, (1, 32, 32, 3), 10_961_370),
    ("densenet121", {}, (1, 32, 32, 3), 6_956_298),
    ("densenet121", {"stem": "imagenet", "num_classes": 1000}, (1, 224, 224, 3), 7_978_856),
    # ViT-Ti, 4x4 patches: 12 blocks x 444,864 + patch embedding, tokens, final LN, head.
    ("vit_tiny", {}, (1, 32, 32, 3), 5_362_762),
])
def test_parameter_counts_match_reference_implementations(name, kwargs, shape, expected):
    model = zoo.get_model(name, **kwargs)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    assert _num_params(variables["params"]) == expected


# Small models run for real (one jitted init+forward each); the deep ones are traced
# with jax.eval_shape, which checks every shape without paying XLA compile time on CPU.
RUN_CASES = [
    ("mlp", {"features": (32, 16)}, (2, 8, 8, 1)),
    ("lenet300100", {}, (2, 28, 28, 1)),
    ("lenet5", {}, (2, 28, 28, 1)),
    ("lenet5", {"padding": "SAME"}, (2, 8, 8, 1)),
    ("refcnn", {"width": 4}, (2, 32, 32, 3)),
    ("refcnn", {"width": 4}, (2, 8, 8, 1)),
    ("vit", {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}, (2, 8, 8, 1)),
]
TRACE_CASES = [
    ("resnet18", {"width": 4, "stem": "imagenet"}, (2, 32, 32, 3)),
    ("resnet34", {"width": 4}, (2, 8, 8, 3)),
    ("resnet50", {"width": 4, "stem": "cifar"}, (2, 8, 8, 3)),
    ("resnet50", {"width": 4}, (2, 64, 64, 3)),
    ("vgg16", {"width": 8}, (2, 8, 8, 3)),
    ("vgg16", {}, (2, 32, 32, 3)),
    ("wrn16_8", {}, (2, 8, 8, 3)),
    ("wideresnet", {"depth": 10, "widen_factor": 1}, (2, 8, 8, 3)),
    ("densenet121", {"growth_rate": 4}, (2, 8, 8, 3)),
    ("vit", {"patch": 4, "dim": 16, "depth": 2, "heads": 2, "mlp_dim": 32}, (2, 32, 32, 3)),
]


@pytest.mark.parametrize("name, kwargs, shape", RUN_CASES)
def test_forward_gives_finite_distinct_logits_of_the_right_shape(name, kwargs, shape):
    model = zoo.get_model(name, num_classes=7, **kwargs)
    x = jax.random.normal(jax.random.key(1), shape)
    logits = jax.jit(model.apply)(_cheap_init(model, x), x)
    assert logits.shape == (2, 7)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Different inputs in the batch give different outputs (the net is not constant).
    assert not np.allclose(logits[0], logits[1])


@pytest.mark.parametrize("name, kwargs, shape", TRACE_CASES)
@pytest.mark.parametrize("train", [False, True])
def test_deep_models_trace_to_the_right_output_shape(name, kwargs, shape, train):
    model = zoo.get_model(name, num_classes=7, **kwargs)

    def forward(x):
        variables = model.init(jax.random.key(0), x)
        return model.apply(variables, x, train=train, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(1)})

    logits, state = jax.eval_shape(forward, jnp.zeros(shape))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    if name.startswith("vit"):
        assert not state
    else:
        assert "batch_stats" in state


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 32, 32, 3)])
def test_vit_tiny_preset_works_on_8x8_and_32x32(shape):
    model = zoo.get_model("vit_tiny", num_classes=10)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros(shape))[0])
    assert out.shape == (2, 10)


def test_vit_rejects_patch_that_does_not_divide_image():
    model = zoo.ViT(patch=3, dim=8, depth=1, heads=2, mlp_dim=8)
    with pytest.raises(ValueError, match="must divide the image size"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_train_mode_updates_batch_stats_and_eval_mode_uses_them():
    # ResNet-18's blocks at one block per stage and width 4: half the compile time.
    model = zoo.ResNet((1, 1, 1, 1), zoo.BasicBlock, num_classes=10, width=4)
    x = 3.0 + jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    variables = _cheap_init(model, x)
    train_step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    _, updates = train_step(variables, x)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after) == 2 * 12  # mean and var of 12 BatchNorms
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    # Inference reads the running statistics: new statistics change the output.
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    old = evaluate(variables, x)
    new = evaluate({**variables, "batch_stats": updates["batch_stats"]}, x)
    assert old.shape == (4, 10) and bool(jnp.all(jnp.isfinite(old)))
    assert not np.allclose(old, new)


def test_init_draws_distinct_parameters_from_the_key():
    model = zoo.get_model("mlp", features=(16,))
    x = jnp.ones((1, 8, 8, 1))
    first, second = model.init(jax.random.key(0), x), model.init(jax.random.key(1), x)
    assert first["params"]["fc1"]["kernel"].shape == (64, 16)
    assert not np.allclose(first["params"]["fc1"]["kernel"], second["params"]["fc1"]["kernel"])


def test_models_without_batch_norm_have_only_params():
    for name in ("mlp", "lenet5", "refcnn", "vit_tiny"):
        model = zoo.get_model(name)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        assert set(variables) == {"params"}


def test_layer_names_follow_the_papers_and_the_zoo_convention():
    lenet = jax.eval_shape(zoo.get_model("lenet5").init, jax.random.key(0),
                           jnp.zeros((1, 28, 28, 1)))
    assert set(lenet["params"]) == {"conv1", "conv2", "fc1", "fc2"}
    resnet = jax.eval_shape(lambda: zoo.get_model("resnet18").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert {"stem_conv", "head", "stage2_block1"} <= set(resnet["params"])
    assert "shortcut_conv" in resnet["params"]["stage2_block1"]
    assert resnet["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, 64)


def test_bfloat16_computation_returns_float32_logits():
    model = zoo.get_model("refcnn", width=4, dtype=jnp.bfloat16)
    x = jnp.ones((2, 8, 8, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert jax.jit(model.apply)(_cheap_init(model, x), x).dtype == jnp.float32


def test_registry_lists_every_model_and_rejects_unknown_names():
    expected = {"mlp", "lenet300100", "lenet5", "resnet18", "resnet34", "resnet50", "vgg16",
                "wrn16_8", "wideresnet", "vit_tiny", "vit", "refcnn", "densenet121"}
    assert set(zoo.MODELS) == expected
    assert isinstance(zoo.get_model("ResNet18"), zoo.ResNet)
    with pytest.raises(ValueError, match="valid names: .*lenet5.*resnet18"):
        zoo.get_model("alexnet")


def test_invalid_architecture_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="stem must be"):
        zoo.get_model("resnet18", stem="tiny").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        zoo.WideResNet(depth=15).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_vgg16_official_classifier_is_the_swat_codes_16_layer_vgg16():
    # SWAT's CIFAR VGG-16 (official models/vgg.py, cfg "VGG16"): 13 conv3x3 with these
    # output channels, then Linear 512->4096, ReLU, Dropout, 4096->4096, ReLU, Dropout,
    # 4096->10.
    from sparsejax.analysis import costs

    convs = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    fcs = [(512, 4096), (4096, 4096), (4096, 10)]
    want = sum(3 * 3 * cin * cout for cin, cout in zip([3] + convs[:-1], convs)) + \
        sum(i * o for i, o in fcs)
    assert want == 33_625_792  # "33.6M weights"
    model = zoo.VGG16(classifier="official")
    layers = costs.linear_layers(model, (32, 32, 3))
    assert [l.kind for l in layers] == ["conv"] * 13 + ["dense"] * 3
    assert [l.kernel_shape for l in layers[13:]] == fcs
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
               if jax.tree_util.keystr(path[-1:]) == "['kernel']"]
    assert len(kernels) == 16
    assert sum(int(np.prod(k.shape)) for k in kernels) == want
    # Dropout is active in training (needs a "dropout" rng) and off in evaluation.
    small = zoo.VGG16(width=8, classifier="official")
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    v = _cheap_init(small, x)
    run = lambda k: small.apply(v, x, train=True, rngs={"dropout": jax.random.key(k)},
                                mutable=["batch_stats"])[0]
    y1, y2 = run(1), run(2)
    assert y1.shape == (4, 10) and not np.allclose(y1, y2)
    np.testing.assert_array_equal(small.apply(v, x), small.apply(v, x))
    with pytest.raises(ValueError, match="classifier"):
        zoo.VGG16(classifier="mlp").init(jax.random.key(0), x)
