"""The organism's committed outputs: delta safetensors files and a manifest with their hashes."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from lensiar.atomic import atomic_text, atomic_write

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


def save_deltas(out: Path, groups: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Any]]:
    """Write ``{name}.safetensors`` per group atomically; returns name -> {file, sha256, bytes, tensors}."""
    info: dict[str, dict[str, Any]] = {}
    for name, tensors in groups.items():
        path = out / f"{name}.safetensors"
        atomic_write(path, partial(save_file, {k: v.contiguous() for k, v in tensors.items()}))
        info[name] = {"file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size, "tensors": len(tensors)}
    return info


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_text(out / "manifest.json", text)


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
