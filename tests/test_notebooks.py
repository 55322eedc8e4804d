"""Every notebook in notebooks/ is committed executed (outputs and PNG plots, no widget state; written by
scripts/execute_notebooks.py) and runs again top to bottom in a fresh kernel; their cells assert the key results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_head_attribution.ipynb",
                                           "03_vl_adaptation_and_merging.ipynb", "04_bring_your_own_vlm.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "commit notebooks executed (scripts/execute_notebooks.py)"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "executed top to bottom, once"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], "a committed output is an error"
    assert "application/vnd.jupyter.widget" not in path.read_text() and "widgets" not in nb.metadata
    assert path.stat().st_size < 600_000, "keep committed notebooks small"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # show the failing cell, not the whole notebook
        plain = re.sub("\x1b\\[[0-9;]*m", "", str(err))
        pytest.fail(f"{path.name}: {plain[-3000:]}")
