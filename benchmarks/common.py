"""Shared timing and reporting for the benchmarks.

Rules (DESIGN.md §4): compare configs as ratios measured in the same process,
after jit warm-up, as the median of many timed blocks with
``jax.block_until_ready``, configs interleaved so that load from other
processes hits them alike. Every benchmark prints a human table and one JSON
object, and exits 0 whether or not its targets pass (the JSON says).

Example:
  >>> f = jax.jit(lambda x: x * 2)
  >>> x = jax.numpy.ones(1000)
  >>> times = time_fns({"double": lambda: f(x)}, repeats=5, inner=2)
  >>> ok = report([{"name": "double", "ms": times["double"] * 1e3}],
  ...             [Target("double under 1 s", times["double"], "<=", 1.0)])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import operator
import platform
import statistics
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class Target(NamedTuple):
    """A measured value and the bound it should meet (``value op bound``)."""

    name: str
    value: float
    op: str
    bound: float

    @property
    def passed(self) -> bool:
        return _OPS[self.op](self.value, self.bound)


def time_samples(fns: Mapping[str, Callable[[], Any]], repeats: int = 15,
                 inner: int = 5, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each thunk in every round, configs interleaved.

    Each round times ``inner`` back-to-back calls of every thunk (blocking on
    the last result), rotating the order of the configs between rounds, so
    sample ``r`` of every config was taken under about the same machine load.

    Args:
      fns: name -> thunk running one step and returning something to block on
        (a thunk may carry state between calls, e.g. a training loop).
      repeats: timed rounds.
      inner: calls per timed block.
      warmup: untimed calls per thunk first (compilation, caches).

    Returns:
      name -> one seconds-per-call sample per round.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(inner - 1):
                fn()
            jax.block_until_ready(fn())
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def time_fns(fns: Mapping[str, Callable[[], Any]], repeats: int = 15,
             inner: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each thunk (see :func:`time_samples`)."""
    samples = time_samples(fns, repeats, inner, warmup)
    return {n: statistics.median(s) for n, s in samples.items()}


def median_ratios(samples: Mapping[str, Sequence[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of ``time[config] / time[baseline]`` within each round.

    Pairing samples of the same round cancels most of the load drift of a
    shared machine, so these ratios are steadier than a ratio of medians.
    """
    base = samples[baseline]
    return {n: statistics.median(a / b for a, b in zip(s, base)) for n, s in samples.items()}


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    body = [[cell(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(b) for b in body])


def report(rows: Sequence[Mapping[str, Any]], targets: Sequence[Target],
           path: str | None = None, title: str = "") -> bool:
    """Prints a table of ``rows``, the targets with PASS/FAIL, and one JSON line.

    Args:
      rows: measurements, one dict per config (same keys preferred).
      targets: the bounds to check.
      path: optional file to write the JSON to as well.
      title: benchmark name, put in the JSON.

    Returns:
      Whether every target passed.
    """
    checks = [dict(t._asdict(), passed=t.passed) for t in targets]
    if title:
        print(f"== {title} ==")
    if rows:
        print(_table(rows))
    if checks:
        print()
        print(_table([{"target": c["name"], "value": c["value"],
                       "bound": f"{c['op']} {c['bound']:g}",
                       "result": "PASS" if c["passed"] else "FAIL"} for c in checks]))
    result = {"benchmark": title, "rows": list(rows), "targets": checks,
              "all_passed": all(c["passed"] for c in checks),
              "platform": {"backend": jax.default_backend(), "devices": len(jax.devices()),
                           "machine": platform.machine(), "python": sys.version.split()[0],
                           "jax": jax.__version__}}
    text = json.dumps(result)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return result["all_passed"]
