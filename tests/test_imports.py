"""The core library imports with only jax, optax and flax."""

import subprocess
import sys
import textwrap

_BLOCKED = ("tensorflow", "tensorflow_datasets", "orbax", "matplotlib", "ml_collections",
            "sklearn")


def test_core_imports_without_experiment_stack():
    code = textwrap.dedent(f"""
      import importlib.abc, sys
      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in {_BLOCKED!r}:
            raise ImportError('blocked for the test: ' + name)
      sys.meta_path.insert(0, Block())
      import sparsejax, sparsejax.zoo
      print('ok', len(dir(sparsejax)))
  """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
