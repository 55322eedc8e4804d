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
