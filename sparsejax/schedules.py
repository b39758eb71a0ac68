"""Sparsity schedules: pure ``step -> sparsity`` functions.

Like optax learning-rate schedules, every schedule here is a plain function of
the (possibly traced) step built from ``jnp`` ops, so it runs inside ``jit``
without recompiling per step, and its value can be handed straight to
:func:`sparsejax.tree.compute_masks` or :func:`sparsejax.transform.pruning`.
Each returns a float32 scalar in ``[0, 1)``; every sparsity given to a
constructor is checked with :func:`sparsejax.validate.check_sparsity`, and the
schedule itself is then evaluated over its range by :func:`check_schedule`
(a value that float32 rounds to 1, e.g. ``constant(0.99999999)``, is refused
there). :func:`sparsejax.transform.pruning` runs :func:`check_schedule` on any
callable it is given, so hand-written schedules are checked too.

Example:
  >>> sched = polynomial(0.9, begin_step=1000, end_step=5000, frequency=100)
  >>> [round(float(sched(t)), 4) for t in (0, 3000, 9000)]
  [0.0, 0.7875, 0.9]

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
  for model compression", ICLR Workshop 2018 (arXiv:1710.01878);
  Han et al., "Learning both Weights and Connections for Efficient Neural
  Networks", NeurIPS 2015 (iterative pruning).
"""

from __future__ import annotations

import numbers
from typing import Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.validate import check_sparsity

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Schedule = Callable[[ArrayLike], Array]


def _check_step(value: object, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer step, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


# Steps evaluated by check_schedule: every step of ranges up to this length;
# beyond, every step of the first half of it and evenly spaced steps after.
MAX_CHECKED_STEPS = 1 << 16


def _steps_to_check(begin: int, end: int, extra: Iterable[int]) -> np.ndarray:
    if end - begin <= MAX_CHECKED_STEPS:
        steps = np.arange(begin, end + 1, dtype=np.int64)
    else:
        half = MAX_CHECKED_STEPS // 2
        steps = np.concatenate([np.arange(begin, begin + half, dtype=np.int64),
                                np.linspace(begin + half, end, half, dtype=np.int64)])
    extra = [int(t) for t in extra if begin <= int(t) <= end]
    steps = np.unique(np.concatenate([steps, np.asarray(extra, np.int64), [begin, end]]))
    return steps[steps <= np.iinfo(np.int32).max].astype(np.int32)


def _evaluate(schedule: Callable[[ArrayLike], ArrayLike], steps: np.ndarray,
              where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: the schedule on the host (vectorised when it allows)."""
    with jax.ensure_compile_time_eval():
        try:
            values = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)), np.float32)
            if values.shape == steps.shape:
                return steps, values
        except Exception:  # pylint: disable=broad-except
            pass  # not vmappable (host-side code): fall back to a sample, one step at a time
        sample = steps if steps.size <= 1024 else steps[np.linspace(0, steps.size - 1, 1024)
                                                       .astype(np.int64)]
        out = []
        for t in sample:
            v = np.asarray(schedule(jnp.int32(t)))
            if v.size != 1:
                raise TypeError(f"{where}: the schedule returned shape {v.shape} at step {t}; a "
                                "sparsity schedule must return a scalar.")
            out.append(np.float32(v.reshape(())))
        return sample, np.asarray(out, np.float32)


def check_schedule(schedule: Callable[[ArrayLike], ArrayLike], begin_step: int = 0,
                   end_step: Optional[int] = None, *, steps: Iterable[int] = (),
                   where: str = "schedule") -> Callable[[ArrayLike], ArrayLike]:
    """Refuses a schedule whose value leaves ``[0, 1)`` (or is NaN) over a step range.

    The schedule is evaluated on the host, as the float32 it returns, at every
    step of ``[begin_step, end_step]`` when the range has at most
    ``MAX_CHECKED_STEPS`` (65536) steps; a longer range is checked at every
    one of its first 32768 steps and at 32768 evenly spaced steps after them,
    plus both ends and ``steps`` (put a schedule's breakpoints there). It is
    evaluated with ``jax.vmap`` (one call); a schedule that cannot be vmapped
    is evaluated at up to 1024 of those steps one by one.

    Args:
      schedule: ``step -> sparsity``.
      begin_step: first step checked.
      end_step: last step checked (``None``: ``begin_step + 2**20``).
      steps: further steps that must be checked (breakpoints).
      where: what to call the schedule in the message.

    Returns:
      ``schedule`` itself.

    Raises:
      ValueError: naming the first step whose value is NaN or outside
        ``[0, 1)``, and the value.

    Example:
      >>> _ = check_schedule(polynomial(0.9, 0, 100), 0, 100)
      >>> check_schedule(lambda t: t / 100, 0, 200)
      Traceback (most recent call last):
      ValueError: schedule returns 1.0 at step 100; ...
    """
    begin = _check_step(begin_step, f"{where} begin_step")
    end = begin + (1 << 20) if end_step is None else _check_step(end_step, f"{where} end_step",
                                                                 minimum=begin)
    grid, values = _evaluate(schedule, _steps_to_check(begin, end, steps), where)
    bad = np.isnan(values) | (values < 0.0) | (values >= 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where} returns {values[i]!s} at step {int(grid[i])}; a sparsity must be in "
            "[0, 1) at every step (0 = dense, 0.9 = keep 10%; a float32 value that rounds to 1.0 "
            "would remove every weight). Fix the schedule (clip it, e.g. jnp.clip(s, 0.0, 0.99)) "
            "or end pruning before that step (pruning(..., end_step=...)).")
    return schedule


def constant(sparsity: float) -> Schedule:
    """The same sparsity at every step.

    Args:
      sparsity: fraction removed, in ``[0, 1)``.

    Returns:
      ``step -> sparsity`` (float32 scalar).

    Example:
      >>> round(float(constant(0.8)(123)), 4)
      0.8
    """
    check_sparsity(sparsity, "constant(sparsity)")
    value = float(sparsity)

    def schedule(step: ArrayLike) -> Array:
        return jnp.full(jnp.shape(step), value, jnp.float32)

    return check_schedule(schedule, 0, 0, where=f"constant({sparsity!r})")


def one_shot(sparsity: float, step: int) -> Schedule:
    """Dense (0) before ``step``, ``sparsity`` from ``step`` on (one-shot pruning).

    Args:
      sparsity: fraction removed from ``step`` on, in ``[0, 1)``.
      step: first step at which the sparsity applies (``>= 0``).

    Returns:
      ``step -> sparsity`` (float32 scalar).

    Example:
      >>> s = one_shot(0.5, 10)
      >>> float(s(9)), float(s(10))
      (0.0, 0.5)

    References:
      Han et al., NeurIPS 2015 (train dense, prune once, retrain).
    """
    check_sparsity(sparsity, "one_shot(sparsity)")
    at = _check_step(step, "one_shot(step)")
    value = float(sparsity)

    def schedule(t: ArrayLike) -> Array:
        return jnp.where(jnp.asarray(t) >= at, jnp.float32(value), jnp.float32(0.0))

    return check_schedule(schedule, 0, at, where=f"one_shot({sparsity!r}, {at})")


def polynomial(final_sparsity: float, begin_step: int, end_step: int, *,
               initial_sparsity: float = 0.0, power: float = 3,
               frequency: int = 1) -> Schedule:
    """Zhu & Gupta's gradual pruning schedule.

    ``s_t = s_f + (s_i - s_f) * (1 - (t' - t_0) / (end_step - t_0)) ** power``
    where ``t'`` is ``t`` rounded down to the last update step
    ``t_0 + k * frequency`` (the value is held between updates, as masks are
    refreshed every ``frequency`` steps). Before ``begin_step`` the value is
    ``initial_sparsity``; from ``end_step`` on it is ``final_sparsity`` (also
    when ``end_step - begin_step`` is not a multiple of ``frequency``).

    Args:
      final_sparsity: ``s_f``, reached at ``end_step``; in ``[0, 1)``.
      begin_step: ``t_0`` (``>= 0``).
      end_step: ``t_0 + n * Δt`` (``> begin_step``).
      initial_sparsity: ``s_i``, in ``[0, 1)``.
      power: exponent (3 in the paper), ``> 0``.
      frequency: ``Δt``, steps between value changes (``>= 1``).

    Returns:
      ``step -> sparsity`` (float32 scalar).

    Example:
      >>> s = polynomial(0.8, 0, 100)
      >>> [round(float(s(t)), 4) for t in (0, 50, 100)]
      [0.0, 0.7, 0.8]

    References:
      Zhu & Gupta 2017, arXiv:1710.01878, eq. (1).
    """
    check_sparsity(final_sparsity, "polynomial(final_sparsity)")
    check_sparsity(initial_sparsity, "polynomial(initial_sparsity)")
    t0 = _check_step(begin_step, "polynomial(begin_step)")
    t1 = _check_step(end_step, "polynomial(end_step)")
    if t1 <= t0:
        raise ValueError(f"polynomial needs end_step > begin_step, got begin_step={t0}, "
                         f"end_step={t1}.")
    freq = _check_step(frequency, "polynomial(frequency)", minimum=1)
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or not power > 0:
        raise ValueError(f"polynomial(power) must be a positive number, got {power!r}.")
    s_f, s_i, p = float(final_sparsity), float(initial_sparsity), float(power)

    def schedule(step: ArrayLike) -> Array:
        t = jnp.asarray(step).astype(jnp.int32)
        held = t0 + ((jnp.clip(t, t0, t1) - t0) // freq) * freq
        held = jnp.where(t >= t1, t1, held)
        frac = (held - t0).astype(jnp.float32) / jnp.float32(t1 - t0)
        return (s_f + (s_i - s_f) * (1.0 - frac) ** p).astype(jnp.float32)

    return check_schedule(schedule, 0, t1, where=f"polynomial({final_sparsity!r}, {t0}, {t1})")


def iterative(steps_and_sparsities: Sequence[tuple[int, float]]) -> Schedule:
    """Piecewise-constant sparsity: ``s`` from each ``step`` until the next one.

    Dense (0) before the first step. This is Han et al.'s iterative
    prune → retrain recipe: with :func:`sparsejax.transform.pruning` and
    ``update_every=None``, masks are recomputed exactly at the listed steps
    (where the value changes) and stay fixed in between.

    Args:
      steps_and_sparsities: ``[(step, sparsity), ...]`` with strictly increasing
        non-negative integer steps and sparsities in ``[0, 1)``.

    Returns:
      ``step -> sparsity`` (float32 scalar).

    Example:
      >>> s = iterative([(0, 0.5), (100, 0.75), (200, 0.9)])
      >>> [round(float(s(t)), 4) for t in (0, 99, 100, 250)]
      [0.5, 0.5, 0.75, 0.9]

    References:
      Han et al., NeurIPS 2015, Section 3.3 (iterative pruning).
    """
    pairs = list(steps_and_sparsities)
    if not pairs:
        raise ValueError("iterative needs at least one (step, sparsity) pair, e.g. "
                         "[(0, 0.5), (1000, 0.8)].")
    steps, values = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"iterative entry {i} must be a (step, sparsity) pair, got {pair!r}.")
        step = _check_step(pair[0], f"iterative entry {i} step")
        check_sparsity(pair[1], f"iterative entry {i} (step {step})")
        if steps and step <= steps[-1]:
            raise ValueError(f"iterative steps must be strictly increasing: entry {i} has step "
                             f"{step} after step {steps[-1]}.")
        steps.append(step)
        values.append(float(pair[1]))
    starts = tuple(steps)
    levels = (0.0,) + tuple(values)

    def schedule(step: ArrayLike) -> Array:
        t = jnp.asarray(step)
        index = sum((t >= s).astype(jnp.int32) for s in starts)
        return jnp.asarray(levels, jnp.float32)[index]

    return check_schedule(schedule, 0, starts[-1], steps=starts, where="iterative(...)")
