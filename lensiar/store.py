"""A vector store: a directory of bundles plus ``index.json`` (name, model, method, metrics).

Every write is atomic (temporary file + rename) and index updates happen under a file lock, so
several processes can save into one store at once and the index always stays valid JSON. The index is a shared
file (committed in repos): every ``file`` it names must be a plain ``<name>.safetensors`` inside the store root,
and anything else is refused before it is read or deleted.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from lensiar.atomic import atomic_json
from lensiar.bundle import BundleError, RevisionBundle

INDEX_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VectorStore:
    """Bundles saved by name under ``root`` (default ``vector_store/``)."""

    def __init__(self, root: str | os.PathLike[str] = "vector_store") -> None:
        self.root = Path(root)
        self.index_path = self.root / "index.json"
        self._lock = FileLock(str(self.root / ".index.lock"))

    def _read(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"format_version": INDEX_VERSION, "bundles": {}}
        try:
            index = json.loads(self.index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{self.index_path} is not valid JSON ({exc}); restore it or remove it to rebuild") from None
        except OSError as exc:
            raise BundleError(f"{self.index_path} cannot be read: {exc.strerror or exc}") from None
        if not isinstance(index, dict):
            raise BundleError(f"{self.index_path} must hold a JSON object, not {type(index).__name__}")
        if index.get("format_version") != INDEX_VERSION:
            raise BundleError(f"{self.index_path} has index version {index.get('format_version')!r}; "
                              f"this lensiar reads version {INDEX_VERSION}")
        bundles = index.get("bundles")
        if not isinstance(bundles, dict):
            raise BundleError(f"{self.index_path}: 'bundles' must be an object of name -> entry")
        for name, entry in bundles.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise BundleError(f"{self.index_path}: entry {name!r} must be an object with a 'file' string")
        return index

    def _file(self, name: str, entry: dict[str, Any]) -> Path:
        """The bundle file an index entry names, refused unless it is ``<name>.safetensors`` directly in the root
        (no absolute path, no ``..``, no link leading out)."""
        file = entry["file"]
        if file != f"{name}.safetensors" or not _NAME.fullmatch(name):
            raise BundleError(f"{self.index_path}: entry {name!r} names file {file!r}; a store entry must name "
                              f"'<name>.safetensors' inside {self.root} (index tampered with?)")
        path = self.root / file
        if path.is_symlink() or path.resolve().parent != self.root.resolve():
            raise BundleError(f"{path} leads outside the store {self.root}; refusing to use it")
        return path

    def list(self) -> dict[str, dict[str, Any]]:
        """Name -> index entry (file, model, level, method, strategy, metrics, saved_at)."""
        return dict(self._read()["bundles"])

    def __contains__(self, name: str) -> bool:
        return name in self.list()

    def save(self, name: str, bundle: RevisionBundle, metrics: dict[str, Any] | None = None,
             overwrite: bool = False) -> Path:
        """Write ``bundle`` as ``<name>.safetensors`` and record it in the index."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BundleError(f"bad bundle name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            index = self._read()
            if name in index["bundles"] and not overwrite:
                raise BundleError(f"{name!r} is already in {self.root}; pass overwrite=True to replace it")
            path = bundle.save(self.root / f"{name}.safetensors")
            index["bundles"][name] = {
                "file": path.name,
                "model": {k: bundle.model.get(k) for k in ("architecture", "model_type", "fingerprint")},
                "level": bundle.level, "method": bundle.method, "strategy": bundle.strategy,
                "metrics": metrics or {}, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_json(self.index_path, index, indent=2, sort_keys=True)
        return path

    def load(self, name: str, lens: Any = None) -> RevisionBundle:
        """The bundle saved as ``name`` (validated against ``lens`` if given)."""
        entries = self.list()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise BundleError(f"no bundle {name!r} in {self.root} (known: {known})")
        return RevisionBundle.load(self._file(name, entries[name]), lens=lens)

    def remove(self, name: str) -> None:
        """Delete the bundle ``name`` and its index entry (atomically)."""
        with self._lock:
            index = self._read()
            entry = index["bundles"].get(name)
            if entry is None:
                raise BundleError(f"no bundle {name!r} in {self.root}")
            path = self._file(name, entry)
            del index["bundles"][name]
            atomic_json(self.index_path, index, indent=2, sort_keys=True)
            path.unlink(missing_ok=True)

    def orphans(self) -> builtins.list[str]:
        """Bundle files in the root that no index entry names (e.g. left by a save killed between the bundle write
        and the index update), and temporary files of killed saves."""
        named = {e["file"] for e in self.list().values()}
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if (p.suffix == ".safetensors" and p.name not in named) or p.name.endswith(".tmp"))

    def __repr__(self) -> str:
        try:
            n = len(self.list())
        except BundleError:
            n = -1
        return f"VectorStore({str(self.root)!r}, {n if n >= 0 else 'unreadable index'} bundles)"
