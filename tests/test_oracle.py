"""Independent oracle: the Lens's hook_z and resid_post equal TransformerLens 4's TransformerBridge values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import lensiar
from lensiar import Prompt
from lensiar.models import smollm2_path

NAMES = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]


def _bridge_cache(path: Path, batch, **extra) -> dict[str, torch.Tensor]:
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
    _, cache = bridge.run_with_cache(
        batch["input_ids"], names_filter=lambda n: n.endswith(("attn.hook_z", "hook_resid_post")), **extra
    )
    return {k: cache[k] for k in cache}


def _compare(lens: lensiar.Lens, batch, reference: dict[str, torch.Tensor]) -> None:
    ours = lens.run_with_cache(batch, NAMES, positions="all")
    for layer in range(lens.spec.n_layers):
        for kind in ("attn.hook_z", "hook_resid_post"):
            name = f"blocks.{layer}.{kind}"
            torch.testing.assert_close(ours[name], reference[name], atol=1e-4, rtol=0, msg=name)


@pytest.mark.slow
def test_smollm2_matches_transformerlens_bridge() -> None:
    # Both sides use eager attention: sdpa and eager kernels differ by ~1e-8 relative, which at this model's
    # residual norms (up to ~2.5e4) exceeds 1e-4 absolute without telling anything about hook placement.
    lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct")
    lens.model.set_attn_implementation("eager")
    batch = lens.prepare(["How do I bake bread at home?"])
    _compare(lens, batch, _bridge_cache(smollm2_path(), batch))


def test_tiny_llava_matches_transformerlens_bridge(tmp_path: Path, image) -> None:
    model, processor = lensiar.testing.tiny_model("llava")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lens = lensiar.Lens(model, processor)
    text = lens.prepare(["hello there"])
    _compare(lens, text, _bridge_cache(tmp_path, text))
    with_image = lens.prepare([Prompt("what is this?", images=image)])
    _compare(lens, with_image, _bridge_cache(tmp_path, with_image, pixel_values=with_image["pixel_values"]))


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_a_reloaded_tiny_checkpoint_matches_transformerlens_bridge(name: str, tmp_path: Path, image) -> None:
    model, processor = lensiar.testing.tiny_model(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lens = lensiar.Lens.from_pretrained(tmp_path, attn_implementation="eager")  # the saved checkpoint, reloaded
    with_image = lens.prepare([Prompt("what is this?", images=image)])
    extra = {k: with_image[k] for k in ("pixel_values", "token_type_ids") if k in with_image}
    _compare(lens, with_image, _bridge_cache(tmp_path, with_image, **extra))
