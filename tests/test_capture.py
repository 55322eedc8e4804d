"""Capture on every tiny family: names, shapes, positions, exact head split, padding invariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lensiar
from lensiar import Prompt
from lensiar.hooks import KINDS
from tests.conftest import tiny_lens

FAMILIES = lensiar.testing.list_tiny_models()
ALL_KINDS = [f"blocks.*.{suffix}" for suffix in KINDS]


def _prompts(lens: lensiar.Lens, image, texts: list[str]) -> list[Prompt]:
    return [Prompt(t, images=image if lens.arch.vision else None) for t in texts]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_hook_at_every_layer_has_documented_shape(name: str, image) -> None:
    lens = tiny_lens(name)
    s = lens.spec
    cache = lens.run_with_cache(_prompts(lens, image, ["hi", "a much longer prompt"]), ALL_KINDS, positions="last")
    assert len(cache) == 5 * s.n_layers
    for layer in range(s.n_layers):
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (2, s.n_heads, s.d_head)
        for kind in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            value = cache[f"blocks.{layer}.{kind}"]
            assert value.shape == (2, s.d_model) and torch.isfinite(value).all()
    # the residual stream is continuous across layers
    for layer in range(s.n_layers - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"])


@pytest.mark.parametrize("name", [n for n in FAMILIES if tiny_lens(n).arch.vision])
def test_image_positions_are_nonempty_with_an_image(name: str, image) -> None:
    lens = tiny_lens(name)
    cache = lens.run_with_cache([Prompt("what is shown?", images=image)], "blocks.0.attn.hook_z", positions="image")
    assert cache.mask is not None and cache.mask.sum() > 0
    z = cache["blocks.0.attn.hook_z"]
    assert z.shape[:2] == cache.mask.shape
    assert z[~cache.mask].abs().sum() == 0 and z[cache.mask].abs().sum() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_head_split_is_exact(name: str, image) -> None:
    """sum_h z_h @ W_O[h] equals o_proj's output (read by an independent torch hook), bias aside."""
    lens = tiny_lens(name)
    prompts = _prompts(lens, image, ["split the heads", "ok"])
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(lens.spec.n_layers):
        proj = lens.o_proj(layer)
        handles.append(proj.register_forward_hook(
            lambda m, i, o, layer=layer: outputs.__setitem__(layer, (o - (m.bias if m.bias is not None else 0)).detach())))
    try:
        cache = lens.run_with_cache(prompts, "blocks.*.attn.hook_z", positions="all")
    finally:
        for h in handles:
            h.remove()
    assert cache.mask is not None
    for layer in range(lens.spec.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [b, s, h, d]
        recon = torch.einsum("bshd,hdm->bsm", z, lens.W_O(layer))
        torch.testing.assert_close(recon[cache.mask], outputs[layer][cache.mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("positions", ["last", "mean", "all"])
def test_padding_never_leaks(name: str, positions: str, image) -> None:
    lens = tiny_lens(name)
    target = _prompts(lens, image, ["short"])
    batch = _prompts(lens, image, ["short", "a considerably longer prompt that forces padding"])
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]
    alone = lens.run_with_cache(target, names, positions=positions)
    padded = lens.run_with_cache(batch, names, positions=positions)
    for key in alone:
        a, b = alone[key][0], padded[key][0]
        if positions == "all":  # left padding: the prompt is the right-aligned part
            assert alone.mask is not None and padded.mask is not None
            a, b = a[alone.mask[0]], b[padded.mask[0]]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_capturing_never_changes_logits(name: str, image) -> None:
    lens = tiny_lens(name)
    batch = lens.prepare(_prompts(lens, image, ["one", "two three"]))
    with torch.no_grad():
        plain = lens.model(**lens.model_inputs(batch)).logits[:, -1]
    cache = lens.run_with_cache(batch, ALL_KINDS, positions="last", return_logits=True)
    assert cache.logits is not None
    assert torch.equal(cache.logits, plain)


def test_explicit_mask_positions(image) -> None:
    lens = tiny_lens("llava")
    batch = lens.prepare([Prompt("abc", images=image)])
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[0, 2] = True
    cache = lens.run_with_cache(batch, "blocks.1.hook_resid_post", positions=mask)
    full = lens.run_with_cache(batch, "blocks.1.hook_resid_post", positions="all")
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"][0, 2], full["blocks.1.hook_resid_post"][0, 2])
    assert cache["blocks.1.hook_resid_post"][0, 3].abs().sum() == 0


def test_mean_is_the_mean_over_unpadded_tokens() -> None:
    lens = tiny_lens("llama")
    full = lens.run_with_cache(["abc", "abcdefgh"], "blocks.0.hook_resid_post", positions="all")
    mean = lens.run_with_cache(["abc", "abcdefgh"], "blocks.0.hook_resid_post", positions="mean")
    assert full.mask is not None
    expected = full["blocks.0.hook_resid_post"][0][full.mask[0]].mean(0)
    torch.testing.assert_close(mean["blocks.0.hook_resid_post"][0], expected)


def test_batches_split_and_concatenate() -> None:
    lens = tiny_lens("qwen2")
    texts = [f"prompt number {i}" + "!" * i for i in range(5)]
    one = lens.run_with_cache(texts, "blocks.1.attn.hook_z", batch_size=8)
    many = lens.run_with_cache(texts, "blocks.1.attn.hook_z", batch_size=2)
    torch.testing.assert_close(one["blocks.1.attn.hook_z"], many["blocks.1.attn.hook_z"], atol=1e-5, rtol=0)
    assert one.stack("attn.hook_z").shape == (1, 5, 4, 16)


def test_mllama_cross_attention_layers_need_an_image(image) -> None:
    lens = tiny_lens("mllama")
    text_only = lens.run_with_cache(["hello"], "blocks.*.attn.hook_z")
    assert "blocks.1.attn.hook_z" not in text_only and "blocks.0.attn.hook_z" in text_only
    with pytest.raises(ValueError, match="cross-attention"):
        lens.run_with_cache(["hello"], "blocks.1.attn.hook_z")
    with_image = lens.run_with_cache([Prompt("hello", images=image)], "blocks.1.attn.hook_z")
    assert with_image["blocks.1.attn.hook_z"].shape == (1, 4, 16)


# ---------------------------------------------------------------------- bad input
def test_unsupported_architecture_says_how_to_add_a_row() -> None:
    config = __import__("transformers").GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    model = __import__("transformers").GPT2LMHeadModel(config)
    with pytest.raises(lensiar.UnsupportedArchitectureError, match=r"gpt2.*Supported: .*llava.*ARCHITECTURES"):
        lensiar.Lens(model)


def test_hook_name_typo_suggests_close_names() -> None:
    lens = tiny_lens("llama")
    with pytest.raises(lensiar.HookNameError, match=r"Did you mean 'blocks\.1\.attn\.hook_z'"):
        lens.run_with_cache(["hi"], "blocks.1.attn.hook_zz")
    with pytest.raises(lensiar.HookNameError, match="out of range"):
        lens.run_with_cache(["hi"], "blocks.7.hook_resid_post")


def test_image_for_text_only_model(image) -> None:
    with pytest.raises(ValueError, match="text-only"):
        tiny_lens("llama").prepare([Prompt("hi", images=image)])
    with pytest.raises(ValueError, match="text-only"):
        tiny_lens("llama").run_with_cache(["hi"], "blocks.0.attn.hook_z", positions="image")


def test_missing_processor() -> None:
    model, _ = lensiar.testing.tiny_model("llava")
    lens = lensiar.Lens(model)
    with pytest.raises(ValueError, match="no processor"):
        lens.prepare(["hi"])


def test_empty_batch() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        tiny_lens("llava").run_with_cache([], "blocks.0.attn.hook_z")


def test_mixed_image_and_text_batch_is_refused(image) -> None:
    with pytest.raises(ValueError, match="all image prompts or all text prompts"):
        tiny_lens("llava").prepare([Prompt("a", images=image), Prompt("b")])


def test_mixed_list_is_batched_by_kind_in_order(image) -> None:
    lens = tiny_lens("llava")
    prompts = [Prompt("a", images=image), Prompt("b c"), Prompt("d"), Prompt("e", images=image)]
    mixed = lens.run_with_cache(prompts, "blocks.1.hook_resid_post", batch_size=4)["blocks.1.hook_resid_post"]
    alone = torch.cat([lens.run_with_cache([p], "blocks.1.hook_resid_post")["blocks.1.hook_resid_post"] for p in prompts])
    assert mixed.shape[0] == 4
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)
    texts = lens.generate(prompts, max_new_tokens=3, batch_size=4)
    assert texts == [lens.generate([p], max_new_tokens=3)[0] for p in prompts]


def test_spec_of_tiny_llava() -> None:
    spec = tiny_lens("llava").spec
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head, spec.d_model) == (2, 4, 2, 16, 64)
    assert spec.architecture == "LlavaForConditionalGeneration" and len(spec.fingerprint) == 16


def test_fingerprint_tells_models_apart() -> None:
    a, _ = lensiar.testing.tiny_model("llama", seed=0)
    b, _ = lensiar.testing.tiny_model("llama", seed=0)
    assert lensiar.Lens(a).spec.fingerprint == lensiar.Lens(b).spec.fingerprint
    with torch.no_grad():
        next(p for p in b.parameters() if p.ndim == 2).mul_(1.05)
    assert lensiar.Lens(a).spec.fingerprint != lensiar.Lens(b).spec.fingerprint


def test_model_weights_unchanged_by_capture(image) -> None:
    from lensiar.spec import weights_hash

    lens = tiny_lens("llava")
    before = weights_hash(lens.model)
    lens.run_with_cache([Prompt("x", images=image)], ALL_KINDS, positions="all")
    assert weights_hash(lens.model) == before
    assert isinstance(lens.model, nn.Module)
