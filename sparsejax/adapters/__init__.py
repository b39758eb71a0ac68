"""Adapters: train unmodified Flax models (linen or NNX) with a sparse method.

:func:`sparsify` dispatches on the model type: a ``flax.linen.Module`` gets the
:class:`sparsejax.adapters.linen.Sparsified` wrapper, a ``flax.nnx.Module`` is
modified in place (:func:`sparsejax.adapters.nnx.sparsify`). Plain JAX code
calls :func:`sparsejax.ops.sparse_dot_general` /
:func:`sparsejax.ops.sparse_conv_general_dilated` directly.
"""

from __future__ import annotations

from typing import Any

from sparsejax.methods import Method
from sparsejax.analysis.monitor import MonitorConfig


def sparsify(model: Any, method: Method, *example_args: Any,
             monitor: MonitorConfig | bool | None = None, **example_kwargs: Any) -> Any:
    """Makes an unmodified Flax model train with ``method``.

    Args:
      model: a ``flax.linen.Module`` (unbound) or a ``flax.nnx.Module``.
      method: a :mod:`sparsejax.methods` value (``swat``, ``ste``, ``meprop``,
        ``dsg``, ``dense``).
      *example_args: NNX only: example inputs used to find the layers' call
        order (first/last layer rules). Needed when the method's plan depends on
        the order (``swat`` with ``dense_first``, ``meprop``, ``dsg``): without
        them that raises; order-free methods (``ste``...) use the graph order.
      monitor: activation-monitor settings. Linen: sampling settings (metrics
        are sown whenever ``"sparsity_metrics"`` is mutable). NNX: ``True`` or a
        :class:`~sparsejax.analysis.monitor.MonitorConfig` turns the metrics on.
      **example_kwargs: NNX only: keyword arguments of the example call.

    Returns:
      Linen: a :class:`sparsejax.adapters.linen.Sparsified` module with the same
      parameter tree. NNX: the same module, modified in place.

    Example:
      >>> model = sparsify(zoo.get_model("resnet18"), swat(0.8))
      >>> variables = model.init(key, x, train=True)
    """
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    from flax import nnx  # pylint: disable=import-outside-toplevel
    if isinstance(model, nn.Module):
        if example_args or example_kwargs:
            raise TypeError("sparsify(linen_model, method) takes no example inputs: the linen "
                            "adapter finds the layers at init.")
        from sparsejax.adapters import linen  # pylint: disable=import-outside-toplevel
        config = monitor if isinstance(monitor, MonitorConfig) else MonitorConfig()
        return linen.sparsify(model, method, config)
    if isinstance(model, nnx.Module):
        from sparsejax.adapters import nnx as nnx_adapter  # pylint: disable=import-outside-toplevel
        return nnx_adapter.sparsify(model, method, *example_args, monitor=monitor,
                                    **example_kwargs)
    raise TypeError(f"sparsify(model) needs a flax.linen.Module or flax.nnx.Module, got "
                    f"{type(model).__name__}.")


__all__ = ["sparsify"]
