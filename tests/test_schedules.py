"""Tests for sparsejax.schedules: formulas against numpy references, jit, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import schedules

STEPS = np.arange(-3, 260)


def _check(schedule, reference):
    want = np.array([reference(int(t)) for t in STEPS], np.float32)
    eager = np.array([float(schedule(int(t))) for t in STEPS[::7]], np.float32)
    np.testing.assert_allclose(eager, want[::7], rtol=1e-6, atol=1e-7)
    traced = jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, jnp.int32))
    assert traced.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(traced), want, rtol=1e-6, atol=1e-7)
    one = jax.jit(schedule)
    for t in (0, 17, 250):
        np.testing.assert_allclose(float(one(jnp.int32(t))), reference(t), rtol=1e-6, atol=1e-7)


def test_constant():
    _check(schedules.constant(0.8), lambda t: 0.8)


def test_one_shot():
    _check(schedules.one_shot(0.6, 40), lambda t: 0.6 if t >= 40 else 0.0)


@pytest.mark.parametrize("s_i,power,freq", [(0.0, 3, 1), (0.2, 3, 10), (0.1, 2.0, 7)])
def test_polynomial_matches_zhu_gupta(s_i, power, freq):
    s_f, t0, t1 = 0.9, 20, 220

    def reference(t):
        if t < t0:
            return s_i
        if t >= t1:
            return s_f
        held = t0 + ((t - t0) // freq) * freq  # value held between updates
        return s_f + (s_i - s_f) * (1 - (held - t0) / (t1 - t0)) ** power

    _check(schedules.polynomial(s_f, t0, t1, initial_sparsity=s_i, power=power, frequency=freq),
           reference)


def test_polynomial_changes_only_every_frequency_steps():
    s = schedules.polynomial(0.8, 10, 110, frequency=25)
    values = np.asarray(jax.vmap(s)(jnp.arange(0, 130)))
    changed = np.nonzero(np.diff(values))[0] + 1
    np.testing.assert_array_equal(changed, [35, 60, 85, 110])
    assert values[-1] == np.float32(0.8) and values[0] == 0.0


def test_iterative():
    table = [(0, 0.5), (50, 0.75), (120, 0.9)]

    def reference(t):
        value = 0.0
        for step, s in table:
            if t >= step:
                value = s
        return value

    _check(schedules.iterative(table), reference)
    _check(schedules.iterative([(30, 0.4)]), lambda t: 0.4 if t >= 30 else 0.0)


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.constant(1.0), r"\[0, 1\)"),
    (lambda: schedules.constant(-0.1), r"\[0, 1\)"),
    (lambda: schedules.one_shot(0.5, -1), "one_shot\\(step\\) must be >= 0"),
    (lambda: schedules.one_shot(1.5, 3), "one_shot\\(sparsity\\)"),
    (lambda: schedules.polynomial(0.9, 10, 10), "end_step > begin_step"),
    (lambda: schedules.polynomial(0.9, 0, 10, frequency=0), "frequency"),
    (lambda: schedules.polynomial(0.9, 0, 10, power=0), "power"),
    (lambda: schedules.polynomial(0.9, 0, 10, initial_sparsity=1.0), "initial_sparsity"),
    (lambda: schedules.iterative([]), "at least one"),
    (lambda: schedules.iterative([(10, 0.5), (10, 0.6)]), "strictly increasing"),
    (lambda: schedules.iterative([(10, 0.5), (5, 0.6)]), "strictly increasing"),
    (lambda: schedules.iterative([(0, 0.5), (5, 1.0)]), "entry 1"),
])
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda: schedules.one_shot(0.5, 2.5),
    lambda: schedules.polynomial(0.9, 0.0, 10),
    lambda: schedules.iterative([(0, 0.5, 1)]),
    lambda: schedules.iterative([(True, 0.5)]),
    lambda: schedules.constant("0.5"),
])
def test_type_errors(make):
    with pytest.raises(TypeError):
        make()


def test_schedule_rounding_to_one_in_float32_is_refused_at_construction():
    # 0.99999999 < 1 passes the Python check, but the float32 the schedule returns
    # is 1.0, which removes every weight. Before: accepted silently.
    with pytest.raises(ValueError, match="returns 1.0 at step 0"):
        schedules.constant(0.99999999)
    with pytest.raises(ValueError, match="returns 1.0 at step 5"):
        schedules.one_shot(0.99999999, 5)
    with pytest.raises(ValueError, match="returns 1.0 at step 100"):
        schedules.iterative([(0, 0.5), (100, 0.99999999)])
    with pytest.raises(ValueError, match="returns 1.0 at step 10"):
        schedules.polynomial(0.99999999, 0, 10)


def test_check_schedule_names_the_first_bad_step_and_value():
    ramp = lambda t: jnp.asarray(t, jnp.float32) / 50.0
    with pytest.raises(ValueError, match="returns 1.0 at step 50"):
        schedules.check_schedule(ramp, 0, 100)
    assert schedules.check_schedule(ramp, 0, 49) is ramp
    with pytest.raises(ValueError, match="returns -0.5 at step 0"):
        schedules.check_schedule(lambda t: jnp.float32(-0.5) + 0 * t, 0, 10)
    nan_late = lambda t: jnp.where(jnp.asarray(t) >= 10**6, jnp.nan, 0.5)
    with pytest.raises(ValueError, match="returns nan at step 1000000"):
        schedules.check_schedule(nan_late, 0, 2 * 10**6, steps=[10**6])
    # not vmappable (host Python on the step): evaluated step by step
    host = lambda t: 0.5 if int(t) < 3 else 1.5
    with pytest.raises(ValueError, match="returns 1.5 at step 3"):
        schedules.check_schedule(host, 0, 10)
