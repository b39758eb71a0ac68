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
    """{magnitude, wanda} × {50% unstructured, 2:4}."""
    del arg
    return [{"name": f"{criterion}_{'50' if pattern == 'unstructured' else '2:4'}",
             "method.criterion": criterion, "method.pattern": pattern}
            for criterion in ("magnitude", "wanda") for pattern in ("unstructured", "2:4")]
