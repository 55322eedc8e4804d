"""Execute every notebook in notebooks/ in place, keeping its outputs (text, tables, PNG plots) so that the
analysis can be read without running it; widget state is dropped.

    .venv/bin/python scripts/execute_notebooks.py [NAME ...]

tests/test_notebooks.py re-executes them into a temporary folder in CI and checks that the cells' own asserts hold.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1] / "notebooks"
PROGRESS = re.compile(r"\r|\d+/\d+ \[|it/s\]|s/it\]")


def execute(path: Path) -> float:
    """Run ``path`` top to bottom in a fresh kernel (working folder: a scratch folder beside it) and save it."""
    nb = nbformat.read(path, as_version=4)
    scratch = ROOT.parent / "reports" / "notebooks"
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(scratch)}}).execute()
    nb.metadata.pop("widgets", None)
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for out in cell.get("outputs", []):
            out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
        # progress bars (carriage-return redraws) are noise once the run is over; other stderr stays
        cell["outputs"] = [o for o in cell.get("outputs", []) if not (
            o.get("name") == "stderr" and (not o.get("text", "").strip() or PROGRESS.search(o.get("text", ""))))]
    nbformat.write(nb, path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    names = sys.argv[1:]
    for nb_path in sorted(ROOT.glob("*.ipynb")):
        if not names or nb_path.stem in names or nb_path.name in names:
            print(f"{nb_path.name}: {execute(nb_path):.0f} s", flush=True)
