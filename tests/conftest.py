"""Test-session setup: a persistent XLA compilation cache for the session.

Many tests compile the same programs again (the seeds of a sweep, the smoke runs
of one recipe); with the cache on from the first compile, the later ones load
the executable instead of compiling it. The directory is private to the session
(and to each xdist worker), so no test reads programs compiled by other code.
"""

import atexit
import shutil
import tempfile

import jax

_CACHE = tempfile.mkdtemp(prefix="sparsejax-test-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
