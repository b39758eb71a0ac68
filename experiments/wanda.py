"""Wanda vs magnitude: one-shot pruning of a small trained ViT, no retraining.

Train a small Vision Transformer dense on ``mnist_5k`` (5,000 real 28×28 MNIST digits
that ship offline: 4,000 train / 1,000 test), then prune every linear layer of its
encoder blocks (attention query/key/value/out and both MLP layers; the patch-embedding
conv and the classifier head stay dense, as in the paper) once and evaluate without
retraining (Sun et al., ICLR 2024, "Wanda"):

* ``wanda``: score ``|W| · ‖X‖₂`` (input-feature norms over 8 training batches of
  128 images), compared within each output;
* ``magnitude``: ``|W|`` per layer (the paper's magnitude baseline);

each at 50% unstructured and 2:4 (N:M along every kernel's contraction axes). The
``dense`` phase's last eval (``metrics.jsonl``) is the
accuracy before pruning; ``summary.json`` ``accuracy`` the one after.

Model: ViT, 7×7 patches (16 tokens + class token), dim 64, depth 4, 4 heads, MLP 256.
Training: AdamW 1e-3 with cosine decay and 1 epoch of warm-up, weight decay 1e-4,
batch 128, 30 epochs, no augmentation.

Args (``--config=experiments/wanda.py:ARG``): ``criterion`` (wanda | magnitude |
magnitude_output), ``pattern`` (unstructured | 2:4), ``sparsity`` (0.5),
``sequential`` (re-collect the inputs block by block, the official LLM code),
``smoke`` (a few steps on the 8×8 digits).
"""

import ml_collections

from sparsejax.experiment import config as config_lib

SEEDS = 3
"""Runs per member (seeds 0, 1, 2); ``launch.py --seeds=N`` overrides it."""


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """One member; :func:`sweep` varies the criterion and the pattern."""
    a = config_lib.parse_arg(arg, criterion="wanda", pattern="unstructured", sparsity=0.5,
                             sequential=False, smoke=False)
    c = config_lib.base_config()
    c.name = f"{a.criterion}_{a.pattern}"
    c.dataset.name = "mnist_5k"
    c.dataset.augment = False
    c.model = ml_collections.ConfigDict({"name": "vit", "kwargs": {
        "patch": 7, "dim": 64, "depth": 4, "heads": 4, "mlp_dim": 256}})
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_epochs = 30.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "cosine"
    c.schedule.warmup_epochs = 1.0
    c.log_every_steps = 200
    c.checkpoint_every_steps = 0
    c.method = ml_collections.ConfigDict({
        "name": "wanda", "criterion": a.criterion, "sparsity": a.sparsity,
        "pattern": a.pattern, "calibration_batches": 8, "sequential": a.sequential,
        "exclude": ""})
    if a.smoke:
        config_lib.smoke(c)
        c.model.kwargs = {"patch": 4, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32}
        c.method.calibration_batches = 2
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense (the accuracy before pruning: the same training, same seeds); {magnitude,
    wanda} × {50% unstructured, 2:4}."""
    del arg
    return [{"name": "dense", "method": {"name": "dense"}}] + [
        {"name": f"{criterion}_{'50' if pattern == 'unstructured' else '2:4'}",
         "method.criterion": criterion, "method.pattern": pattern}
        for criterion in ("magnitude", "wanda") for pattern in ("unstructured", "2:4")]


def report(r) -> str:
    """This study's section of ``REPRODUCTION.md`` (see :mod:`sparsejax.experiment.reproduction`)."""
    from sparsejax.experiment import reproduction as rp

    levels = (("50", "50% unstructured"), ("2:4", "2:4"))
    rows = [[label, r.fmt(f"magnitude_{k}"), r.fmt(f"wanda_{k}"),
             rp.signed(r, f"wanda_{k}", f"magnitude_{k}"),
             f"{100 * r.mean(f'wanda_{k}', 'weight_sparsity'):.1f}%"] for k, label in levels]
    results = rp.table(["pruned (no retraining)", "magnitude", "Wanda", "Wanda minus magnitude",
                        "weight sparsity (all params)"], rows)
    path = r.figure("wanda.png")
    if path:
        rp.bars(path, [label for _, label in levels],
                {"magnitude": [r.stat(f"magnitude_{k}")[:2] for k, _ in levels],
                 "Wanda": [r.stat(f"wanda_{k}")[:2] for k, _ in levels],
                 "dense": [r.stat("dense")[:2] for _ in levels]},
                ylabel="test accuracy (%)", example=r.example(),
                title=f"Wanda vs magnitude: {r.groups['dense']['model']} on "
                      f"{r.groups['dense']['dataset']}")
    why = _why(r, rp)
    claims = [
        rp.claim(f"Wanda's |W|·‖X‖₂ keeps more accuracy than weight magnitude at {label}, "
                 "without retraining (Sun et al. 2024, on LLaMA)",
                 rp.better(r, f"wanda_{k}", f"magnitude_{k}"),
                 f"Wanda {r.fmt(f'wanda_{k}')} vs magnitude {r.fmt(f'magnitude_{k}')} "
                 f"({rp.signed(r, f'wanda_{k}', f'magnitude_{k}')}); dense {r.fmt('dense')}.",
                 why[k]) for k, label in levels]
    n = int(r.groups["dense"]["n"])
    return "\n\n".join([
        "## Wanda: one-shot pruning of a trained ViT by weight × input norm",
        f"{r.groups['dense']['model']} (7×7 patches, dim 64, depth 4, 4 heads, MLP 256) trained "
        f"dense on {r.groups['dense']['dataset']} (AdamW, 30 epochs), `n` = {n} seeds per row, "
        f"dense {r.fmt('dense')}; then every linear layer of the encoder blocks (attention "
        "query/key/value/out, both MLP layers; not the patch-embedding conv nor the head) is "
        "pruned once and evaluated without retraining. Wanda's norms come from 8 training "
        "batches of 128 images; magnitude prunes each layer by |W| (the paper's baseline).",
        results, r.link("wanda.png"), "**Claims**", "\n".join(claims)])


def _why(r, rp) -> dict[str, str]:
    """The analysis behind each verdict (written after reading the committed results,
    2026-12-04); where a sentence depends on the outcome, it follows the verdict."""
    outliers = (
        "Wanda's gain on LLMs comes from a few input features with very large norms (the "
        "emergent outlier features of large language models), which magnitude pruning ignores; "
        "this 4-block, 64-wide ViT trained on 4,000 digits is unlikely to have such features "
        "(not measured here), so the input norms would reweight |W| only mildly.")
    verdict = {k: rp.better(r, f"wanda_{k}", f"magnitude_{k}") for k in ("50", "2:4")}
    return {
        "50": outliers + (" Unstructured, both keep half of every layer's weights and lose about "
                          "19 points; the difference is under one seed's spread."
                          if verdict["50"] != "reproduced" else ""),
        "2:4": ("At 2:4 the comparison is within groups of 4 inputs, where the norms decide "
                "more often; Wanda is ahead on every seed here, but magnitude's 2:4 accuracy "
                "varies by ±9.5 points across seeds, so 3 seeds do not separate them by the "
                "2-standard-error rule." if verdict["2:4"] != "reproduced" else
                "At 2:4 the comparison is within groups of 4 inputs, where the norms decide "
                "more often."),
    }
