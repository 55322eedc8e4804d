"""Whole-or-nothing file writes, so that a crash or an error never leaves a partial file where a good one was:
bundles, store indexes, ``lensiar capture`` files, the organism report and judge-agreement tables, the
ablation's state, gate and results, the comparison's results, the demo's summary, evaluation reports, organism
deltas and manifests go through :func:`atomic_write`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

#: what a finished file is made readable as (``mkstemp`` makes 0600)
FILE_MODE = 0o644


def temp_files(path: Path) -> list[Path]:
    """The temporary files :func:`atomic_write` uses beside ``path`` (left behind only by a killed process)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object], fsync: bool = True) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file in the same folder, which is made
    readable (:data:`FILE_MODE`), flushed to disk (``fsync``) and renamed over ``path``. On any error the
    temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_text(path: str | os.PathLike[str], text: str, fsync: bool = True) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync)


def atomic_json(path: str | os.PathLike[str], value: object, indent: int | None = None,
                sort_keys: bool = False) -> Path:
    """:func:`atomic_text` of ``json.dumps(value, indent=indent, sort_keys=sort_keys)``, its folder made if
    missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys))
