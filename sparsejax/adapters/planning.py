"""See which layers a method makes sparse before training: :func:`plan`.

:func:`plan` runs the adapters' own layer discovery (the linen adapter's
abstract init, the NNX adapter's graph walk and abstract call) and the
method's own choice (:meth:`sparsejax.methods.Method.explain`), so its answer
is what :func:`sparsejax.adapters.sparsify` then does: the same layers, in call
order, the same sparsities, and for every dense layer the reason.

Example:
  >>> p = plan(zoo.get_model("refcnn"), swat(0.8), jnp.zeros((1, 32, 32, 3)))
  >>> print(p)                      # a table, one row per layer
  >>> p["Conv_0"].reason
  'first layer'
  >>> p.sparsities                  # {path: sparsity} of the sparse layers
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence, Union

from sparsejax.methods import DSG, STE, SWAT, Dense, ForwardTopK, LayerInfo, MeProp, Method


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One layer of a :class:`Plan`.

    Attributes:
      path: module path (``"Block_0/Conv_1"`` linen, ``"blocks/0/conv"`` NNX).
      kind: ``"dense"`` (Dense, DenseGeneral, Linear, LinearGeneral),
        ``"conv"``, ``"einsum"``, or the type name of a layer the adapters
        cannot hook (``"ConvTranspose"``, ``"ConvLocal"``).
      kernel_shape: the kernel's shape (``()`` for a layer the adapters cannot
        hook).
      sparse: whether the method makes the layer sparse.
      sparsity: its static sparsity (the fraction removed of what ``pattern``
        names; SWAT-M's starting value), or ``None`` when dense.
      pattern: what is made sparse (``"top-K weights + saved activations"``,
        ``"NM(n=2, m=4, ...) weights"``, ``"dY top-k per row"``...), or ``None``.
      reason: why the layer stays dense (``"first layer"``, ``"exclude regex
        'head'"``, ``"NM(...) does not fit: ..."``), or ``None`` when sparse.
    """

    path: str
    kind: str
    kernel_shape: tuple[int, ...]
    sparse: bool
    sparsity: Optional[float] = None
    pattern: Optional[str] = None
    reason: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Plan(Sequence[LayerPlan]):
    """The per-layer choices of a method on a model, in call order.

    A sequence of :class:`LayerPlan` (index it by position or by path);
    ``str(plan)`` is a table for notebooks and logs.

    Attributes:
      method: the method.
      layers: one :class:`LayerPlan` per layer, in call order.
      order: ``"call"`` (from the example inputs) or ``"graph"`` (NNX without
        example inputs, only for plans that do not depend on the order).
    """

    method: Method
    layers: tuple[LayerPlan, ...]
    order: str = "call"

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerPlan]:
        return iter(self.layers)

    def __getitem__(self, key: Union[int, str, slice]) -> Any:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.path == key:
                    return layer
            raise KeyError(f"no layer {key!r} in the plan; layers: {[l.path for l in self.layers]}")
        return self.layers[key]

    @property
    def sparsities(self) -> dict[str, float]:
        """``path -> sparsity`` of the sparse layers, in call order."""
        return {l.path: l.sparsity for l in self.layers if l.sparse}

    def __str__(self) -> str:
        head = ("#", "path", "kind", "kernel", "sparse", "sparsity", "pattern / why dense")
        rows = [head]
        for i, l in enumerate(self.layers):
            rows.append((str(i), l.path, l.kind, str(l.kernel_shape) if l.kernel_shape else "-",
                         "yes" if l.sparse else "no",
                         f"{l.sparsity:.4f}" if l.sparsity is not None else "-",
                         (l.pattern if l.sparse else l.reason) or ""))
        widths = [max(len(r[c]) for r in rows) for c in range(len(head) - 1)]
        lines = [f"{self.method.name}: {sum(l.sparse for l in self.layers)} of {len(self.layers)} "
                 f"layers sparse ({self.order} order)"]
        for r in rows:
            lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1])
        return "\n".join(line.rstrip() for line in lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython / notebooks
        del cycle
        printer.text(str(self))


def _pattern(method: Method, info: LayerInfo) -> str:
    """What ``method`` makes sparse in ``info``."""
    if isinstance(method, SWAT):
        budget = {"erk": " (ERK budget)", "momentum": " (SWAT-M budget)"}.get(method.distribution, "")
        if method.structured is not False and info.kind == "conv":
            return f"{method.structured!r}-structured weights + top-K saved activations{budget}"
        return f"top-K weights + saved activations{budget}"
    if isinstance(method, STE):
        pattern = method.pattern
        along = getattr(pattern, "along", None)
        if along is not None:
            pattern = along(getattr(info, "contraction_axes", None))
        return f"{pattern!r} weights (straight-through)"
    if isinstance(method, MeProp):
        k = method.kept(info.out_features)
        return (f"dY: {k} shared columns of {info.out_features}" if method.unified
                else f"dY: top-{k} of {info.out_features} per row")
    if isinstance(method, DSG):
        return "output neurons per row (random projection)"
    if isinstance(method, ForwardTopK):
        return ("top-K input activations (forward)" if method.operand == "activations"
                else "top-K weights (forward, straight-through)")
    return method.name


def _build(method: Method, infos: Sequence[LayerInfo], ordered: Sequence[tuple[str, str]],
           order: str) -> Plan:
    """``ordered``: ``(path, no-hook type or "")`` in call order."""
    planned, reasons = method.explain(infos) if infos else ({}, {})
    by_path = {i.path: i for i in infos}
    rows = []
    for path, no_hook in ordered:
        if no_hook:
            rows.append(LayerPlan(path, no_hook, (), False,
                                  reason=f"{no_hook} has no dot_general/conv hook"))
            continue
        info = by_path[path]
        if path in planned:
            rows.append(LayerPlan(path, info.kind, tuple(info.kernel_shape), True,
                                  float(planned[path]), _pattern(method, info)))
        else:
            rows.append(LayerPlan(path, info.kind, tuple(info.kernel_shape), False,
                                  reason=reasons.get(path, f"not chosen by {method.name}")))
    return Plan(method, tuple(rows), order)


def plan(model: Any, method: Method, *example_args: Any,
         rng_streams: Sequence[str] = ("params", "dropout"), **example_kwargs: Any) -> Plan:
    """Which layers ``method`` makes sparse in ``model``, at which sparsity, and why not.

    Uses the adapters' own discovery and the method's own choice, so the answer
    is what :func:`sparsejax.adapters.sparsify` does with the same model and
    inputs. Nothing is computed (abstract evaluation only) and the model is
    not modified.

    Args:
      model: an unbound ``flax.linen.Module`` or a ``flax.nnx.Module``.
      method: a :mod:`sparsejax.methods` value.
      *example_args: example inputs of the model (a zero batch of the input
        shape is enough). Required for linen. For NNX they give the call order;
        without them the graph order is used when the plan does not depend on
        the order, and a method that needs it (first / last layer dense) raises
        as :func:`sparsejax.adapters.sparsify` does.
      rng_streams: linen only: the RNG streams the model's ``init`` needs.
      **example_kwargs: example keyword inputs (``train=True``...).

    Returns:
      A :class:`Plan`: one :class:`LayerPlan` per layer, in call order
      (NNX layers that the example call did not reach come last); ``print`` it
      for a table.

    Raises:
      TypeError: a linen model without example inputs, or an unknown model or
        method type.
      ValueError: the model has no supported layer; the method cannot apply
        (e.g. meProp's ``k`` above a layer's width); NNX without example inputs
        and a method whose choice depends on the call order.

    Example:
      >>> p = plan(model, swat(0.8), jnp.zeros((1, 28, 28, 1)))
      >>> print(p)
      swat: 2 of 3 layers sparse (call order)
      #  path        kind   kernel         sparse  sparsity  pattern / why dense
      0  stem        conv   (3, 3, 1, 8)   no      -         first layer
      1  body        dense  (1568, 64)     yes     0.8000    top-K weights + saved activations
      2  classifier  dense  (64, 10)       yes     0.8000    top-K weights + saved activations
    """
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from sparsejax.adapters import common  # pylint: disable=import-outside-toplevel
    if not isinstance(method, Method):
        raise TypeError(f"plan(model, method) needs a sparsejax.methods.Method (swat, ste, meprop, "
                        f"dsg, dense), got {method!r}.")
    if isinstance(rng_streams, str) or not all(isinstance(r, str) for r in rng_streams):
        raise TypeError(f"plan(rng_streams=...) must be a sequence of stream names, e.g. "
                        f"('params', 'dropout'), got {rng_streams!r}.")
    if isinstance(model, nn.Module):
        from sparsejax.adapters import linen  # pylint: disable=import-outside-toplevel
        if not (example_args or example_kwargs):
            raise TypeError("plan(linen_model, method, *example_inputs) needs example inputs: the "
                            "linen adapter finds the layers by an abstract init, e.g. "
                            "plan(model, method, jnp.zeros((1, *input_shape))).")
        infos, found, no_hook, _ = linen.discover(model, example_args, example_kwargs,
                                                  list(rng_streams))
        if not infos:
            raise common.no_layers_error(found, linen._SUPPORTED_NAMES)  # pylint: disable=protected-access
        known = {i.path for i in infos}
        ordered = [(p, no_hook.get(p, "")) for p in found if p in known or p in no_hook]
        return _build(method, infos, ordered, "call")
    if isinstance(model, nnx.Module):
        from sparsejax.adapters import nnx as nnx_adapter  # pylint: disable=import-outside-toplevel
        layers, found, no_hook = nnx_adapter._layers(model)  # pylint: disable=protected-access
        if not layers:
            raise common.no_layers_error(found, nnx_adapter._SUPPORTED_NAMES)  # pylint: disable=protected-access
        given = bool(example_args or example_kwargs)
        if isinstance(method, Dense) and not given:
            order = list(layers)
        else:
            order = nnx_adapter.layer_order(model, method, layers, example_args, example_kwargs)
        infos = [nnx_adapter.layer_info(p, layers[p]) for p in order]
        ordered = [(p, "") for p in order] + [(p, t) for p, t in no_hook.items()]
        return _build(method, infos, ordered, "call" if given else "graph")
    raise TypeError(f"plan(model) needs a flax.linen.Module or flax.nnx.Module, got "
                    f"{type(model).__name__}.")


__all__ = ["LayerPlan", "Plan", "plan"]
