"""Selection and pruning on arrays sharded over 8 simulated CPU devices."""

import os
import subprocess
import sys
import textwrap


def test_masks_on_sharded_arrays_match_unsharded():
    code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np, optax
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      import sparsejax as sj
      assert jax.device_count() == 8
      mesh = Mesh(np.array(jax.devices()), ("d",))
      x = jax.random.normal(jax.random.key(0), (64, 48))
      xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
      for fn in (lambda a: sj.topk_mask(a, 0.7), lambda a: sj.nm_mask(a, 2, 4, axis=0),
                 lambda a: sj.channel_mask(a, 0.5, -1)):
        want = np.asarray(jax.jit(fn)(x))
        got = jax.jit(fn)(xs)
        assert np.array_equal(np.asarray(got), want)
      # The CPU kernel has no partitioning rule: a sharded selection lowers to the
      # search (sharded reductions, no gather); per-shard code keeps the kernel.
      f = jax.jit(lambda a: sj.topk_mask(a, 0.7))
      kernel = lambda lowered: "sparsejax_kth_largest_key" in lowered.as_text()
      assert kernel(f.lower(x)) == sj.native.enabled() and not kernel(f.lower(xs))
      local = jax.jit(jax.shard_map(lambda a: sj.topk_mask(a, 0.7), mesh=mesh,
                                    in_specs=P("d", None), out_specs=P("d", None)))
      assert kernel(local.lower(xs)) == sj.native.enabled()
      assert int(local(xs).sum()) == 8 * sj.keep_count(0.7, x.size // 8)
      # The pruning transform's masks shard with the params.
      params = {"w": xs}
      tx = optax.chain(optax.sgd(0.1), sj.pruning(0.75))
      state = jax.jit(tx.init)(params)
      upd, state = jax.jit(tx.update)(params, state, params)
      new = optax.apply_updates(params, upd)
      assert int(jnp.sum(new["w"] != 0)) == sj.keep_count(0.75, x.size)
      print("ok")
  """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
