"""Per-layer sparsity report of a parameter tree or a mask tree.

Example:
  >>> print(summary(pruned_params))  # doctest: +SKIP
  path            shape       params  nonzero  sparsity
  Dense_0/bias    (16,)           16       16    0.0000
  Dense_0/kernel  (72, 16)      1152      231    0.7995
  total                         1168      247    0.7885
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sparsejax.paths import flatten
from sparsejax.validate import is_concrete


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One row of a :class:`Summary`.

    Attributes:
      path: ``"Conv_0/kernel"`` style leaf path.
      shape: the leaf's shape.
      params: number of entries.
      nonzero: nonzero entries (params) or kept entries (masks).
      sparsity: ``1 - nonzero / params`` (0 for empty leaves).
    """

    path: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    sparsity: float


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-layer and total sparsity of a tree (see :func:`summary`).

    Attributes:
      layers: one :class:`LayerSummary` per counted leaf, in flatten order.
      total_params: entries over all rows.
      total_nonzero: nonzero (or kept) entries over all rows.
      sparsity: ``1 - total_nonzero / total_params``.
      kind: ``"params"`` or ``"masks"`` (what was counted).
    """

    layers: tuple[LayerSummary, ...]
    total_params: int
    total_nonzero: int
    sparsity: float
    kind: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"kind", "layers": [...], "total_params", ...}``."""
        return {"kind": self.kind,
                "layers": [dict(dataclasses.asdict(r), shape=list(r.shape)) for r in self.layers],
                "total_params": self.total_params, "total_nonzero": self.total_nonzero,
                "sparsity": self.sparsity}

    def __str__(self) -> str:
        head = ("path", "shape", "params", "kept" if self.kind == "masks" else "nonzero",
                "sparsity")
        rows = [(r.path, str(r.shape), str(r.params), str(r.nonzero), f"{r.sparsity:.4f}")
                for r in self.layers]
        rows.append(("total", "", str(self.total_params), str(self.total_nonzero),
                     f"{self.sparsity:.4f}"))
        widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                    for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        return "\n".join(fmt(row) for row in [head] + rows)


def _ratio(nonzero: int, size: int) -> float:
    return 1.0 - nonzero / size if size else 0.0


def summary(params_or_masks: Any) -> Summary:
    """Counts the sparsity of every leaf of a parameter tree or a mask tree.

    The tree is read as a *mask tree* when every non-``None`` leaf is boolean,
    otherwise as a *parameter tree*:

    * parameter tree: one row per leaf (kernels, biases, norms, counters alike),
      counting exact zeros, so a freshly initialised zero bias shows sparsity 1.
      This is the way to see untouched layers as (dense) rows.
    * mask tree: one row per mask array, counting ``False`` entries as removed.
      ``None`` leaves (untouched by pruning) carry no shape and are left out of
      the rows and totals; pass the (pruned) params to count them.

    Runs on the host (concrete arrays only).

    Args:
      params_or_masks: a parameter pytree or a mask tree from
        :func:`sparsejax.tree.compute_masks`.

    Returns:
      A :class:`Summary`; ``print`` it for an aligned table.

    Example:
      >>> s = summary({"w": jnp.array([[0., 1.], [0., 0.]])})
      >>> s.total_nonzero, s.sparsity
      (1, 0.75)
    """
    pairs = [(p, x) for p, x in flatten(params_or_masks)[0] if x is not None]
    for path, x in pairs:
        if not is_concrete(x):
            raise TypeError(f"summary() runs on concrete values; {path!r} is traced. Return the "
                            "params/masks from the jitted function and summarise them outside.")
    arrays = [(p, np.asarray(x)) for p, x in pairs]
    kind = "masks" if arrays and all(a.dtype == np.bool_ for _, a in arrays) else "params"
    layers = tuple(LayerSummary(p, a.shape, int(a.size), int(np.count_nonzero(a)),
                                _ratio(int(np.count_nonzero(a)), int(a.size)))
                   for p, a in arrays)
    total = sum(r.params for r in layers)
    nonzero = sum(r.nonzero for r in layers)
    return Summary(layers, total, nonzero, _ratio(nonzero, total), kind)
