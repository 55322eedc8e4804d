"""Weight merging over the language backbone, streamed tensor by tensor (chunk by chunk) through safetensors.

``task_arithmetic``: theta = theta_vl + lambda * (theta_safe - theta_base)
``linear``:          theta = (1 - lambda) * theta_vl + lambda * theta_safe

Roles. ``vl`` is the model merged into. ``safe - base`` is the task vector added: ``base`` must be a
common parent of ``vl`` and ``safe`` whose difference ``vl`` does not already hold. Two uses:

* backbone LLMs: ``base`` and ``safe`` are the LLM before and after safety tuning, ``vl`` a VLM adapted from
  ``base``; only backbone tensors are merged, the rest of V (vision tower, connector) is copied. If V was adapted
  from ``safe`` instead (as the organism was, from stage S), V already holds ``safe - base`` and the merge adds it a
  second time: that is a push past S, not a restoration.
* whole VLMs of one layout (the second paper's comparison): ``vl`` = V, ``safe`` = V_safe and ``base`` = their
  common parent P give ``P + tau_V + lambda * tau_safe`` with ``tau = model - P``; ``linear`` gives
  ``(1 - lambda) V + lambda V_safe``. Tensors of the same name are merged, vision tower included.

Only floating-point tensors that both ``base`` and ``safe`` hold are merged. Files are read with plain seeks (no mmap)
and the output is written tensor by tensor into a header computed up front, so peak memory stays
near the largest tensor (measured: 0.955x the largest tensor on the organism, ``benchmarks/merge_memory.py``).
The output is written into a temporary folder renamed into place: an error leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lensiar.progress import tqdm

METHODS = ("task_arithmetic", "linear")
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
FLOATS = {"F32", "F16", "BF16", "F64"}

#: where the language backbone sits in a VLM checkpoint (prefix in V -> prefix in the LLM checkpoints)
BACKBONE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.text_model.", "model."),        # Idefics3, SmolVLM
    ("model.language_model.", "model."),    # LLaVA family, Qwen-VL, PaliGemma, Gemma3, InternVL, Mistral3 (v5)
    ("language_model.model.", "model."),    # older LLaVA layout
    ("model.", "model."),                   # a plain causal LM as V
    ("lm_head.", "lm_head."),
    ("language_model.lm_head.", "lm_head."),
)
#: tensors that may have extra rows in V (resize_token_embeddings): merged over the common rows
VOCAB_TENSORS = re.compile(r"(embed_tokens|lm_head|wte)\.weight$")


MARKER = "lensiar_merge.json"  #: written into every merge output; --overwrite replaces only folders holding it
#: the non-weight files of a HF checkpoint folder that a merge copies from V (nothing else, no links)
CHECKPOINT_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
    "tokenizer.model", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
    "processor_config.json", "video_preprocessor_config.json", "image_processor_config.json",
})


class MergeError(ValueError):
    """The checkpoints cannot be merged (the message names the tensor or file)."""


@dataclass(frozen=True)
class TensorRef:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        n = 1
        for s in self.shape:
            n *= s
        return n


MAX_HEADER_BYTES = 100_000_000  #: the safetensors format's own limit on a header


def read_header(path: Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Tensor references and ``__metadata__`` of one safetensors file (its header only)."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise MergeError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > min(path.stat().st_size - 8, MAX_HEADER_BYTES):
            raise MergeError(f"{path} is not a safetensors file (header length {size} exceeds the file)")
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MergeError(f"{path} has a corrupt safetensors header") from None
    base = 8 + size
    if not isinstance(header, dict):
        raise MergeError(f"{path} has a corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", {}) or {}
    try:
        refs = {name: TensorRef(path, str(h["dtype"]), tuple(int(d) for d in h["shape"]), base + int(h["data_offsets"][0]),
                                base + int(h["data_offsets"][1])) for name, h in header.items()}
    except (KeyError, TypeError, ValueError, IndexError):
        raise MergeError(f"{path} has a corrupt safetensors header (a tensor entry lacks dtype, shape or "
                         "data_offsets)") from None
    return refs, meta


def checkpoint_tensors(folder: str | os.PathLike[str]) -> tuple[dict[str, TensorRef], list[Path]]:
    """All tensors of a checkpoint folder (sharded with an index, or single files) and its shard files in order."""
    root = Path(folder)
    if root.is_file():
        files = [root]
    elif (root / "model.safetensors.index.json").is_file():
        index = json.loads((root / "model.safetensors.index.json").read_text())
        files = [root / f for f in dict.fromkeys(index["weight_map"].values())]
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise MergeError(f"no safetensors checkpoint in {root}")
    refs: dict[str, TensorRef] = {}
    for f in files:
        if not f.is_file():
            raise MergeError(f"shard {f} listed in the index is missing")
        refs.update(read_header(f)[0])
    return refs, files


def _config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    return config.get("text_config") or config


def check_architecture(base: str | os.PathLike[str], safe: str | os.PathLike[str], vl: str | os.PathLike[str]) -> None:
    """Refuse when B, S and V's text backbone disagree on the numbers that define the architecture."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    configs = {name: _config(path) for name, path in (("base", base), ("safe", safe), ("vl", vl))}
    for key in keys:
        values = {name: c.get(key) for name, c in configs.items() if c.get(key) is not None}
        if len(set(values.values())) > 1:
            raise MergeError(f"different architectures: {key} is " + ", ".join(f"{n}={v}" for n, v in values.items()))


def backbone_name(name: str, llm_names: set[str]) -> str | None:
    """The name of V's tensor ``name`` in the base / safe checkpoints, or None if it is not merged: the same name
    when they hold it (base and safe are VLMs of V's layout), else its language-backbone name."""
    if name in llm_names:
        return name
    for prefix, target in BACKBONE_PREFIXES:
        if name.startswith(prefix):
            candidate = target + name[len(prefix) :]
            if candidate in llm_names:
                return candidate
    return None


def _layer_of(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _read(fh: BinaryIO, ref: TensorRef, first: int, count: int) -> torch.Tensor:
    width = torch.empty((), dtype=DTYPES[ref.dtype]).element_size()
    fh.seek(ref.start + first * width)
    data = fh.read(count * width)
    if len(data) != count * width:
        raise MergeError(f"{ref.file} is truncated")
    return torch.frombuffer(bytearray(data), dtype=DTYPES[ref.dtype])


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


def merge(
    base: str | os.PathLike[str],
    safe: str | os.PathLike[str],
    vl: str | os.PathLike[str],
    out: str | os.PathLike[str],
    lam: float,
    method: str = "task_arithmetic",
    layers: Sequence[int] | None = None,
    chunk_bytes: int = 8 << 20,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the merged checkpoint into ``out`` (V's layout, shards and non-weight files); returns a summary.

    ``layers`` restricts merging to those decoder layers (other backbone tensors are then V's).
    Exactness: lambda = 0 copies V's bytes; for ``linear``, lambda = 1 copies S's bytes.
    """
    if method not in METHODS:
        raise MergeError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not -10 <= lam <= 10:
        raise MergeError(f"lambda {lam} is out of the sensible range [-10, 10]")
    target = Path(out)
    if target.exists() and not overwrite:
        raise MergeError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    if target.exists() and (not target.is_dir() or not (target / MARKER).is_file()):
        raise MergeError(f"{target} is not an earlier lensiar merge (no {MARKER}); overwrite replaces only those. "
                         "Remove it yourself or choose another --out")
    check_architecture(base, safe, vl)
    n_layers = _config(vl).get("num_hidden_layers")
    if layers is not None:
        if not layers:
            raise MergeError("layers is empty: give at least one decoder layer (or None for all)")
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or x < 0
               or (isinstance(n_layers, int) and x >= n_layers)]
        if bad:
            raise MergeError(f"layers {bad} are not decoder layers of this model (0..{(n_layers or 0) - 1})")
    b_refs, _ = checkpoint_tensors(base)
    s_refs, _ = checkpoint_tensors(safe)
    v_refs, v_files = checkpoint_tensors(vl)
    if set(b_refs) != set(s_refs):
        missing = sorted(set(b_refs) ^ set(s_refs))[:5]
        raise MergeError(f"base and safe checkpoints hold different tensors (e.g. {missing})")
    plan: dict[str, str | None] = {}
    for name, ref in v_refs.items():
        llm = backbone_name(name, set(b_refs))
        if llm is not None and layers is not None and _layer_of(llm) is not None and _layer_of(llm) not in layers:
            llm = None
        if llm is not None:
            for other, label in ((b_refs[llm], "base"), (s_refs[llm], "safe")):
                same = other.shape == ref.shape or (
                    VOCAB_TENSORS.search(name) and other.shape[1:] == ref.shape[1:] and other.shape[0] <= ref.shape[0])
                if not same:
                    raise MergeError(f"shape mismatch for {name}: vl {ref.shape} vs {label} {other.shape}")
                if ref.dtype not in FLOATS or other.dtype not in FLOATS:
                    raise MergeError(f"{name} is not a floating-point tensor ({ref.dtype}/{other.dtype})")
        plan[name] = llm
    merged_names = {llm for llm in plan.values() if llm is not None}
    needed = {n for n in b_refs if layers is None or _layer_of(n) is None or _layer_of(n) in layers}
    expected_lm = {n for n in needed if n.startswith(("model.layers.", "model.norm", "model.embed_tokens"))}
    missing_in_v = sorted(expected_lm - merged_names)
    if not merged_names:
        raise MergeError("no tensor of the vl checkpoint matches the base backbone; is this the right pair?")
    if missing_in_v:
        raise MergeError(f"the vl checkpoint is missing {len(missing_in_v)} backbone tensors, e.g. {missing_in_v[:3]}")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    handles: dict[Path, BinaryIO] = {}

    def handle(path: Path) -> BinaryIO:
        if path not in handles:
            handles[path] = path.open("rb")
        return handles[path]

    try:
        total = sum(r.end - r.start for r in v_refs.values())
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"merge ({method}, lambda={lam})", disable=not progress)
        for shard in v_files:
            refs, meta = read_header(shard)
            names = sorted(refs, key=lambda n: refs[n].start)
            header: dict[str, Any] = {"__metadata__": meta} if meta else {}
            offset = 0
            for n in names:
                size = refs[n].end - refs[n].start
                header[n] = {"dtype": refs[n].dtype, "shape": list(refs[n].shape), "data_offsets": [offset, offset + size]}
                offset += size
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            with (tmp / shard.name).open("wb") as dst:
                dst.write(struct.pack("<Q", len(blob)) + blob)
                for n in names:
                    _write_tensor(dst, n, refs[n], plan.get(n), b_refs, s_refs, lam, method, chunk_bytes, handle)
                    bar.update(refs[n].end - refs[n].start)
                dst.flush()
                os.fsync(dst.fileno())
        bar.close()
        if Path(vl).is_dir():  # only the files a checkpoint is made of, never through a link
            for f in Path(vl).iterdir():
                if f.name in CHECKPOINT_FILES and f.is_file() and not f.is_symlink():
                    shutil.copy2(f, tmp / f.name)
        info = {"method": method, "lambda": lam, "layers": list(layers) if layers is not None else "all",
                "merged_tensors": len(merged_names), "copied_tensors": len(v_refs) - len(merged_names),
                "base": str(base), "safe": str(safe), "vl": str(vl)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        for fh in handles.values():
            fh.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info | {"out": str(target)}


def _write_tensor(dst: BinaryIO, name: str, ref: TensorRef, llm: str | None, b_refs: dict[str, TensorRef],
                  s_refs: dict[str, TensorRef], lam: float, method: str, chunk_bytes: int, handle: Any) -> None:
    width = torch.empty((), dtype=DTYPES[ref.dtype]).element_size()
    per = max(1, chunk_bytes // width)
    copy_v = llm is None or lam == 0.0
    copy_s = llm is not None and method == "linear" and lam == 1.0 and s_refs[llm].dtype == ref.dtype
    common = s_refs[llm].numel if llm is not None else 0
    for first, count in _chunks(ref.numel, per):
        v = _read(handle(ref.file), ref, first, count)
        if copy_v or first >= common:
            dst.write(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.view(torch.int16).numpy().tobytes())
            continue
        assert llm is not None
        inside = min(count, common - first)
        s = _read(handle(s_refs[llm].file), s_refs[llm], first, inside)
        if copy_s:
            part = s
        elif method == "linear":
            part = ((1 - lam) * v[:inside].float() + lam * s.float()).to(v.dtype)
        else:
            b = _read(handle(b_refs[llm].file), b_refs[llm], first, inside)
            part = (v[:inside].float() + lam * (s.float() - b.float())).to(v.dtype)
        out = torch.cat([part.to(v.dtype), v[inside:]]) if inside < count else part.to(v.dtype)
        dst.write(out.numpy().tobytes() if out.dtype != torch.bfloat16 else out.view(torch.int16).numpy().tobytes())
