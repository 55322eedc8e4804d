"""The generated API reference is up to date with the docstrings, and every public item has one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_docs.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_every_public_item_is_documented() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    assert "*(no docstring)*" not in text
    assert "## lensiar.lens" in text and "### `class Lens(" in text


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and "/" in line and not line.startswith("| model")]


def test_readme_organism_table_quotes_the_committed_report() -> None:
    """Every k/n in README's organism table is the committed report's (docs/results/organism_table.md), same model."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The embedded organism, measured", 1)[1].split("**What it shows", 1)[0]
    report = {(r[0], r[3]) for r in _rows((ROOT / "docs" / "results" / "organism_table.md").read_text()) if len(r) > 3}
    quoted = [(r[0], r[3]) for r in _rows(section) if len(r) > 3]
    assert len(quoted) >= 10 and all(q in report for q in quoted), [q for q in quoted if q not in report]
    recipe = __import__("json").loads((ROOT / "lensiar" / "organism" / "weights" / "manifest.json").read_text())
    assert f"recipe v{recipe['recipe_version']}**" in section


def test_howto_memory_table_is_the_scripts_output() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "memory_table.py")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() in (ROOT / "docs" / "howto-real-vlms.md").read_text()
