"""The README's quick tour runs as written."""

import pathlib
import re

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    text = _README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md:tour", "exec"), namespace)  # pylint: disable=exec-used
    # The tour ends with one SWAT training step under the pruning transform.
    assert "opt_state" in namespace and float(namespace["loss"]) > 0
