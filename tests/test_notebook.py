"""examples/quickstart.ipynb runs top to bottom, offline (also: pytest --nbmake examples/)."""

from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs_and_reports_every_method(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # Built offline from scikit-learn.
    notebook = nbformat.read(os.path.join(ROOT, "examples", "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    text = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))
    for name in ("dense", "magnitude 80%", "2:4 STE", "SWAT-U 80%", "meProp 20%", "NNX",
                 "act-only SWAT 80%", "dW top-8 / channel"):  # the last two: your own methods
        assert name in text
    assert "fc2/kernel  (256, 256)" in text
    images = [out for cell in notebook.cells for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 2  # The mask image and the accuracy plot.
