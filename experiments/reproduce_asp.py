"""Reproduction study, NVIDIA ASP (Mishra et al. 2021; Pool & Yu 2021): 2:4 on real MNIST.

Train dense → one-shot 2:4 magnitude masks → retrain with the same schedule and
length (:func:`sparsejax.experiment.recipes.asp`), with and without ASP's input-channel
permutation, on the main job's 784-256-256-10 MLP and dense recipe
(``experiments/default.py``: ``mnist_5k``, 4,000 train / 1,000 test images). ASP
prunes fc1 and fc2 (in % 16 == 0, out % 8 == 0); the 10-way classifier stays
dense, as in ASP. Only fc2's input channels have a producer (fc1) to permute with;
fc1's inputs are pixels. The papers: 2:4 + retraining matches dense accuracy on
every network they tried; the permutation keeps more weight magnitude and
recovers part of what one-shot 2:4 loses before retraining.

Run (about 4 minutes on 2 CPU cores; results are committed in ``reproduction/asp``)::

  python launch.py --config=experiments/reproduce_asp.py --sweep --results_dir=reproduction/asp

Full scale (GPU; TFDS downloads CIFAR-10): ``experiments/reproduce_asp.py:full`` runs
the same members on the official CIFAR VGG-16 with SWAT's 150-epoch recipe (the
permutation is checked to leave the network function unchanged before pruning,
and refused otherwise).

Args: ``full`` (CIFAR-10 VGG-16), ``smoke`` (a few steps on the 8x8 digits; for
the tests).
"""

import os

import ml_collections

from sparsejax.experiment import config as config_lib

default = config_lib.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))

SEEDS = 3
"""Runs per member (seeds 0, 1, 2)."""


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The main job's MLP and dense recipe (members set the method)."""
    options = config_lib.parse_arg(arg, full=False, smoke=False)
    if options.full:  # SWAT's CIFAR-10 recipe on the official VGG-16 (a conv chain)
        c = config_lib.cifar_config("vgg16")
        c.model.kwargs.classifier = "official"
        c.method = ml_collections.ConfigDict({"name": "dense"})
    else:
        c = default.get_config("smoke" if options.smoke else "")
    c.name = "asp"
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense; ASP 2:4 without and with channel permutation."""
    del arg
    return [{"name": "dense", "method": {"name": "dense"}},
            {"name": "asp2:4", "method": {"name": "asp", "n": 2, "m": 4, "permute": False}},
            {"name": "asp2:4_permuted",
             "method": {"name": "asp", "n": 2, "m": 4, "permute": True}}]


def report(r) -> str:
    """This study's section of ``REPRODUCTION.md`` (see :mod:`sparsejax.experiment.reproduction`)."""
    from sparsejax.experiment import reproduction as rp

    plain, perm = "asp2:4", "asp2:4_permuted"
    rows = [[n, r.fmt(n, "accuracy_after_pruning") if n != "dense" else "—", r.fmt(n),
             r.fmt(n, "kept_magnitude", 3) if n != "dense" else "—",
             f"{100 * r.mean(n, 'weight_sparsity'):.1f}%",
             f"{r.mean(n, 'step_flops_ratio'):.3f}×", f"{r.mean(n, 'train_flops_ratio'):.2f}×"]
            for n in r.groups]
    results = rp.table(["run", "right after pruning", "after retraining",
                        "kept |W| (pruned layers)", "weight sparsity",
                        "step FLOPs (× dense)", "training FLOPs (× dense)"], rows)
    path = r.figure("asp.png")
    if path:
        rp.bars(path, ["right after pruning", "after retraining"],
                {"2:4": [r.stat(plain, "accuracy_after_pruning")[:2], r.stat(plain)[:2]],
                 "2:4, permuted": [r.stat(perm, "accuracy_after_pruning")[:2],
                                   r.stat(perm)[:2]],
                 "dense": [r.stat("dense")[:2], r.stat("dense")[:2]]},
                ylabel="test accuracy (%)", example=r.example(),
                title=f"ASP 2:4: {r.groups['dense']['model']} on {r.groups['dense']['dataset']}")
    d_kept, se_kept = rp.difference(r, perm, plain, "kept_magnitude")
    WHY = _why(r, rp)
    claims = [
        rp.claim("2:4 sparsity after dense training + one-shot pruning + retraining with the same "
                 "schedule matches dense accuracy (Mishra et al. 2021)",
                 rp.no_loss(r, plain, "dense"),
                 f"dense {r.fmt('dense')}, ASP 2:4 {r.fmt(plain)} "
                 f"({rp.signed(r, plain, 'dense')}).", WHY["match"]),
        rp.claim("One-shot 2:4 pruning loses accuracy, which retraining recovers",
                 rp.better(r, plain, plain, "accuracy", "accuracy_after_pruning"),
                 f"right after pruning {r.fmt(plain, 'accuracy_after_pruning')}, after "
                 f"retraining {r.fmt(plain)} "
                 f"({rp.signed(r, plain, plain, 'accuracy', 'accuracy_after_pruning')}).",
                 WHY["recover"]),
        rp.claim("Channel permutation keeps more weight magnitude under 2:4 (Pool & Yu 2021)",
                 rp.better(r, perm, plain, "kept_magnitude"),
                 f"kept |W| of the pruned layers {r.fmt(perm, 'kept_magnitude', 3)} permuted vs "
                 f"{r.fmt(plain, 'kept_magnitude', 3)} ({d_kept:+.3f} ± {se_kept:.3f} points).",
                 WHY["kept"]),
        rp.claim("Permutation improves accuracy right after pruning",
                 rp.better(r, perm, plain, "accuracy_after_pruning"),
                 f"{r.fmt(perm, 'accuracy_after_pruning')} vs "
                 f"{r.fmt(plain, 'accuracy_after_pruning')} "
                 f"({rp.signed(r, perm, plain, 'accuracy_after_pruning')}).", WHY["after"]),
        rp.claim("After retraining, permuted and plain 2:4 are equal (Pool & Yu: the permutation "
                 "matters most without retraining)", rp.no_loss(r, perm, plain),
                 f"{r.fmt(perm)} vs {r.fmt(plain)} ({rp.signed(r, perm, plain)}).", WHY["equal"]),
    ]
    return "\n\n".join([
        "## NVIDIA ASP: dense → one-shot 2:4 → retrain, with and without channel permutation",
        f"{r.groups['dense']['model']} 784-256-256-10 on {r.groups['dense']['dataset']} with the "
        "main job's dense recipe (SGD momentum 0.9, LR 0.05 cosine, weight decay 5e-4, batch 64, "
        "40 epochs); ASP retrains for another 40 epochs with the same schedule. fc1 and fc2 are "
        "2:4 (in % 16 = 0, out % 8 = 0); the 10-way classifier stays dense. Only fc2's inputs can "
        "be permuted (their producer is fc1); fc1's inputs are pixels. `n` = "
        f"{int(r.groups['dense']['n'])} seeds per row.",
        results, r.link("asp.png"), "**Claims**", "\n".join(claims)])


def _why(r, rp) -> dict[str, str]:
    """The analysis behind each verdict, written after reading the committed results
    (2026-12-04); the numbers in it are read from the results."""
    plain = "asp2:4"
    loss = -rp.difference(r, plain, "dense", "accuracy_after_pruning", "accuracy")[0]
    return {
        "match": "",
        "recover": (
            f"Here one-shot 2:4 costs only {loss:.2f} points before retraining: it keeps "
            f"{100 * r.mean(plain, 'kept_magnitude'):.1f}% of the weight magnitude of an MLP that "
            "is wide for 4,000 training images, so there is little left to recover (the ASP "
            "paper's one-shot losses are on ImageNet-scale networks)."),
        "kept": (
            "Only fc2's 256 inputs can be permuted (fc1's inputs are pixels) and fc1 holds "
            "200,704 of the 266,240 pruned weights, so the gain over all pruned weights is "
            "small; each run's summary.json lists the search's efficacy on fc2."),
        "after": ("The magnitude gained is too small to move accuracy beyond the seeds' noise "
                  "at this scale."),
        "equal": "",
    }
