"""Test-session setup: a persistent XLA compilation cache for the session.

Many tests compile the same programs again (the seeds of a sweep, the smoke runs
of one recipe); with the cache on from the first compile, the later ones load
the executable instead of compiling it. The directory is private to the session
(and to each xdist worker), so no test reads programs compiled by other code.

The slowest tests (the reproduction studies' smoke sweeps, minutes each) are
collected first, so that ``pytest -n 2`` runs them beside the short ones instead
of leaving them for one worker at the end.
"""

import atexit
import shutil
import tempfile

import jax

_CACHE = tempfile.mkdtemp(prefix="sparsejax-test-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


SLOW_FIRST = ("test_reproduction.py::test_smoke_study_runs_and_renders_its_section",)


def pytest_collection_modifyitems(session, config, items):
    """Moves the :data:`SLOW_FIRST` tests to the front (stable otherwise)."""
    del session, config
    items.sort(key=lambda item: not any(s in item.nodeid for s in SLOW_FIRST))
