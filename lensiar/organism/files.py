"""The organism's committed outputs: delta safetensors files and a manifest with their hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

#: where the committed organism lives (package data)
WEIGHTS = Path(__file__).parent / "weights"
DELTAS = ("stage_s", "stage_v", "vision")


class ManifestError(RuntimeError):
    """The organism's files are missing, altered, or do not match their manifest."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file beside it, made readable by all
    (0644), which then replaces ``path``; on an error the temporary file is removed and ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; committed artifacts are world-readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_deltas(out: Path, groups: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Any]]:
    """Write ``{name}.safetensors`` per group atomically; returns name -> {file, sha256, bytes, tensors}."""
    info: dict[str, dict[str, Any]] = {}
    for name, tensors in groups.items():
        path = out / f"{name}.safetensors"
        atomic_write(path, lambda tmp, t=tensors: save_file({k: v.contiguous() for k, v in t.items()}, tmp))
        info[name] = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, "tensors": len(tensors)}
    return info


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(out / "manifest.json", lambda tmp: Path(tmp).write_text(text))


def read_verified(folder: Path = WEIGHTS) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """The manifest and every delta group, after checking each file's sha256 against the manifest."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no organism manifest at {path}; build one with `lensiar organism build --out {folder}`")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ManifestError(f"{path} is not a valid organism manifest ({err})") from None
    groups: dict[str, dict[str, Tensor]] = {}
    for name in DELTAS:
        if name not in files:
            raise ManifestError(f"the manifest at {path} lists no {name!r} delta file")
        file = folder / files[name]["file"]
        if not file.is_file():
            raise ManifestError(f"organism delta {file} is missing")
        actual = sha256(file)
        if actual != files[name]["sha256"]:
            raise ManifestError(f"organism delta {file.name} has sha256 {actual[:12]}..., the manifest says "
                                f"{files[name]['sha256'][:12]}...; refusing to load altered weights")
        groups[name] = load_file(str(file))
    return manifest, groups
