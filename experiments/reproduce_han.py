"""Reproduction study, Han et al. (NeurIPS 2015): LeNet-300-100 on real MNIST images.

Train dense → prune → retrain at LR/10 (Han's LeNet solver, :mod:`experiments.han`)
on ``mnist_5k`` (4,000 train / 1,000 test real MNIST digits that ship offline):
one-shot pruning at 50-98% against 3-round iterative pruning at 92/95/98%, the
per-layer spread of one global magnitude threshold at 92%, and Han's rule
``|W| > q · std(W)`` (one ``q`` for every layer) against target sparsities. The
paper: 267K → 22K weights (92%, 12×) with no accuracy loss (error 1.64% →
1.59%), kept per layer fc1 8%, fc2 9%, fc3 26%.

Run (about 12 minutes on 2 CPU cores; results are committed in ``reproduction/han``)::

  python launch.py --config=experiments/reproduce_han.py --sweep \\
      --results_dir=reproduction/han

Full scale (the paper's 60,000 MNIST training images; TFDS downloads MNIST):
``experiments/reproduce_han.py:full``, the same members and recipe.

Args: ``full`` (MNIST instead of ``mnist_5k``), ``smoke`` (a few steps on the 8x8
digits; for the tests).
"""

import os

import ml_collections

from sparsejax.experiment import config as config_lib

han = config_lib.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "han.py"))

SEEDS = 3
"""Runs per member (seeds 0, 1, 2)."""

PAPER_LAYERS = "fc1=0.92,fc2=0.91,fc3=0.74"
"""Han et al.'s Table 1 per-layer sparsities of LeNet-300-100 (kept 8% / 9% / 26%)."""
ONE_SHOT = (0.5, 0.8, 0.9, 0.92, 0.95, 0.98)
ITERATIVE = (0.92, 0.95, 0.98)
Q = (1.0, 1.5, 1.75, 2.0)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Han's LeNet-300-100 recipe on ``mnist_5k``, one-shot 92% (members override it)."""
    options = config_lib.parse_arg(arg, full=False, smoke=False)
    dataset = "mnist" if options.full else "mnist_5k"
    c = han.get_config(f"model=lenet300100,dataset={dataset}"
                       + (",smoke" if options.smoke else ""))
    c.name = "han"
    c.checkpoint_every_steps = 0
    c.log_every_steps = 500 if not options.smoke else 2
    return c


def sweep(arg: str = "") -> list[dict]:
    """Dense; one-shot uniform; iterative (3 rounds); global threshold; q · std rule; one-shot
    92% with 5x longer retraining (an ablation of the retraining budget)."""
    smoke = config_lib.parse_arg(arg, full=False, smoke=False).smoke
    members = [{"name": "dense", "method": {"name": "dense"}}]
    members += [{"name": f"oneshot{round(100 * s)}", "method.sparsity": s} for s in ONE_SHOT]
    members += [{"name": f"iterative{round(100 * s)}", "method.sparsity": s,
                 "method.iterations": 3} for s in ITERATIVE]
    members.append({"name": "global92", "method.sparsity": 0.92,
                    "method.distribution": "global"})
    members += [{"name": f"q{q:g}", "method.q": q} for q in Q]
    # Tests the explanation of the 92% result (not a tuned recipe): 5x longer retraining.
    members.append({"name": "oneshot92_retrain100",
                    "method.retrain_epochs": 0.0 if smoke else 100.0})
    # Table 1's own per-layer fractions (kept 8% / 9% / 26%: 91.8% overall).
    members.append({"name": "paper92", "method.layers": PAPER_LAYERS})
    return members


PAPER_KEPT = (0.08, 0.09, 0.26)
"""Han et al.'s Table 1 kept fractions of LeNet-300-100's fc1, fc2, fc3 (hand-chosen
per layer from a sensitivity analysis)."""


def report(r) -> str:
    """This study's section of ``REPRODUCTION.md`` (see :mod:`sparsejax.experiment.reproduction`)."""
    from sparsejax.experiment import reproduction as rp

    names = list(r.groups)
    rows = []
    for name in names:
        g = r.groups[name]
        s = g["weight_sparsity"]
        after = (r.fmt(name, "accuracy_after_pruning")
                 if g.get("accuracy_after_pruning") is not None else "—")
        rows.append([name, f"{100 * s:.1f}%", f"{1 / max(1 - s, 1e-9):.1f}×", after,
                     r.fmt(name), f"{g['train_flops_ratio']:.2f}×"])
    results = rp.table(["run", "weight sparsity", "compression", "right after pruning",
                        "after retraining", "training FLOPs (× dense)"], rows)
    point = lambda n, key="accuracy": (r.mean(n, "weight_sparsity"), r.mean(n, key),
                                       r.stat(n, key)[1])
    one = [f"oneshot{round(100 * s)}" for s in ONE_SHOT]
    it = [f"iterative{round(100 * s)}" for s in ITERATIVE]
    qs = [f"q{q:g}" for q in Q]
    path = r.figure("compression.png")
    if path:
        rp.curves(path, {
            "one-shot, after retraining": [point(n) for n in one],
            "one-shot, right after pruning": [point(n, "accuracy_after_pruning") for n in one],
            "3 rounds, after retraining": [point(n) for n in it],
            "q·std rule, after retraining": [point(n) for n in qs],
            "global threshold, after retraining": [point("global92")],
            "Table 1's per-layer fractions, after retraining": [point("paper92")]},
            xlabel="weight sparsity (%)", reference=r.stat("dense")[:2], example=r.example(),
            title=f"Han et al.: {r.groups['dense']['model']} on {r.groups['dense']['dataset']}")

    # Per-layer kept fractions at 92%: uniform, one global threshold, the q·std rule
    # closest to 92%, beside the paper's hand-chosen ones.
    q92 = min(qs, key=lambda n: abs(r.mean(n, "weight_sparsity") - 0.92))
    per = {n: r.layer_densities(n) for n in ("oneshot92", "global92", q92)}
    layer_rows = []
    for i, (path_, (_, params)) in enumerate(per["global92"].items()):
        paper = f"{100 * PAPER_KEPT[i]:.0f}%" if i < len(PAPER_KEPT) else "—"
        layer_rows.append([path_, params, paper] + [f"{100 * per[n][path_][0]:.1f}%"
                                                    for n in per])
    layers = rp.table(["layer", "weights", "paper (Table 1)", "uniform 92%", "global 92%",
                       f"q·std, {q92[1:]}·std"], layer_rows)
    q_rows = [[n[1:], f"{100 * r.mean(n, 'weight_sparsity'):.1f} ± "
               f"{100 * r.stat(n, 'weight_sparsity')[1]:.1f}%",
               " / ".join(f"{100 * (1 - d):.0f}%" for d, _ in r.layer_densities(n).values()),
               r.fmt(n, "accuracy_after_pruning"), r.fmt(n)] for n in qs]
    q_table = rp.table(["q", "sparsity reached", "per layer", "right after pruning",
                        "after retraining"], q_rows)

    dense = r.fmt("dense")
    kept = list(per["global92"].values())
    WHY = _why(r, rp)
    claims = [
        rp.claim("LeNet-300-100 keeps its accuracy with 92% of its weights pruned (12×; error "
                 "1.64% → 1.59%, Table 1)", rp.no_loss(r, "oneshot92", "dense"),
                 f"dense {dense}; uniform 92% after retraining {r.fmt('oneshot92')} "
                 f"({rp.signed(r, 'oneshot92', 'dense')}); one global threshold "
                 f"{r.fmt('global92')} ({rp.signed(r, 'global92', 'dense')}); 3 rounds "
                 f"{r.fmt('iterative92')} ({rp.signed(r, 'iterative92', 'dense')}).",
                 WHY["table1"]),
        rp.claim("Retraining recovers what pruning loses",
                 rp.better(r, "oneshot92", "oneshot92", "accuracy", "accuracy_after_pruning"),
                 f"at 92%, right after pruning {r.fmt('oneshot92', 'accuracy_after_pruning')}, "
                 f"after retraining {r.fmt('oneshot92')}; at 80% "
                 f"{r.fmt('oneshot80', 'accuracy_after_pruning')} → {r.fmt('oneshot80')}; "
                 f"5× longer retraining at 92%: {r.fmt('oneshot92_retrain100')} "
                 f"({rp.signed(r, 'oneshot92_retrain100', 'oneshot92')} against the paper-length "
                 "retraining).", WHY["retrain"]),
        rp.claim("Iterative pruning reaches a higher compression than one-shot pruning at the "
                 "same accuracy (Fig. 5)", rp.better(r, "iterative95", "oneshot95"),
                 f"at 95%: 3 rounds {r.fmt('iterative95')} vs one-shot {r.fmt('oneshot95')} "
                 f"({rp.signed(r, 'iterative95', 'oneshot95')}); at 98%: "
                 f"{r.fmt('iterative98')} vs {r.fmt('oneshot98')} "
                 f"({rp.signed(r, 'iterative98', 'oneshot98')}). The rounds also cost "
                 f"{r.mean('iterative95', 'train_flops_ratio'):.2f}× dense training against "
                 f"{r.mean('oneshot95', 'train_flops_ratio'):.2f}×.", WHY["iterative"]),
        rp.claim("The layers tolerate different sparsity: fc1 keeps 8%, fc2 9%, the output "
                 "layer fc3 26% (Table 1)", _layer_verdict(r, rp, [d for d, _ in kept]),
                 "one global magnitude threshold at 92% keeps "
                 + ", ".join(f"{100 * d:.1f}%" for d, _ in kept) + " of the three layers, and "
                 f"reaches {r.fmt('global92')} against {r.fmt('oneshot92')} for every layer at "
                 f"92% ({rp.signed(r, 'global92', 'oneshot92')}).",
                 WHY["layers"]),
        rp.claim("Han's rule |W| > q·std(W) sets the sparsity per layer", "measured",
                 f"one q for every layer gives nearly the same sparsity in each (table above); "
                 f"q = {q92[1:]} reaches {100 * r.mean(q92, 'weight_sparsity'):.1f}% and "
                 f"{r.fmt(q92)} after retraining vs {r.fmt('oneshot92')} for the 92% target.",
                 WHY["q"]),
    ]
    return "\n\n".join([
        "## Han et al. 2015: prune → retrain (LeNet-300-100)",
        f"{r.groups['dense']['model']} on {r.groups['dense']['dataset']}, Han's LeNet solver "
        "(SGD momentum 0.9, LR 0.01 with cosine decay, weight decay 5e-4, batch 64, 20 "
        "epochs), each retraining as long at LR/10; `n` = "
        f"{int(r.groups['dense']['n'])} seeds per row. Uniform: every layer at the target; "
        "global: one magnitude threshold for all layers; iterative: 3 prune → retrain rounds "
        "removing equal fractions of the survivors.",
        results, r.link("compression.png"), r.link("results.png"),
        "**Per-layer kept fractions at 92%**", layers, "**Han's q·std rule**", q_table,
        "**Claims**", "\n".join(claims)])


def _why(r, rp) -> dict[str, str]:
    """The analysis behind each verdict, written after reading the committed results
    (2026-12-04); the numbers in it are read from the results."""
    gap = lambda n: rp.difference(r, n, "dense")[0]
    best = max(("oneshot92", "iterative92", "global92", "paper92", "oneshot92_retrain100"),
               key=lambda n: r.mean(n))
    longer = rp.difference(r, "oneshot92_retrain100", "oneshot92")[0]
    return {
        "table1": (
            f"At this scale every 92% variant stays below dense (best: {best}, "
            f"{gap(best):+.2f} points). Two causes are measured here: the retraining budget "
            f"(5× longer retraining at LR/10 recovers {longer:+.2f} of the {-gap('oneshot92'):.2f} "
            "points lost with Han's equal-length retraining) and the data: the dense net fits its "
            f"4,000 training images almost perfectly (see the runs' metrics.jsonl) at "
            f"{r.fmt('dense')} test accuracy, against 98.4% on the paper's 60,000 images, so "
            "retraining has far fewer examples to re-learn from. Table 1's own per-layer fractions (`paper92`) reach "
            f"{r.fmt('paper92')}, so the layer split is not the cause. The full-scale sweep "
            "(`:full`, below) tests the claim on the paper's data."),
        "retrain": "",
        "iterative": (
            "As in Han et al.'s Fig. 5, the gap widens with sparsity; iterative pruning buys it "
            "with extra retraining rounds."),
        "layers": (
            "The ordering matches (the big fc1 tolerates the most pruning, the 10-way output "
            "layer the least), but the values are not Han's: they chose each layer's fraction "
            "from a sensitivity analysis, a global threshold follows the weight magnitudes."),
        "q": (
            "With one q the rule is a per-layer threshold on |W|/std(W), whose distribution is "
            "similar in every layer here, so it prunes every layer about equally, like the "
            "uniform target; Han et al. set q per layer (no published values to compare)."),
    }


def _layer_verdict(r, rp, kept: list[float]) -> str:
    """Reproduced: one global threshold orders the layers as the paper (fc1 sparsest, the
    output layer densest), each within 2× of its kept fraction, and beats uniform 92%;
    partly: the order (and the gain) without the values; not: another order."""
    paper = list(PAPER_KEPT[:len(kept)])
    same_order = sorted(range(len(kept)), key=kept.__getitem__) == sorted(
        range(len(paper)), key=paper.__getitem__)
    if not same_order:
        return "not reproduced"
    close = all(0.5 <= k / p <= 2.0 for k, p in zip(kept, paper))
    gain = rp.better(r, "global92", "oneshot92") == "reproduced"
    return "reproduced" if close and gain else "partly"
