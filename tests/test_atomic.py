"""lensiar.atomic: a write lands whole, readable, or not at all."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lensiar.atomic import FILE_MODE, atomic_text, atomic_write, temp_files


def test_a_write_lands_whole_and_readable(tmp_path: Path) -> None:
    path = atomic_text(tmp_path / "results.json", '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE  # mkstemp alone would leave 0600
    assert temp_files(path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = atomic_text(tmp_path / "results.json", "old\n")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and temp_files(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
