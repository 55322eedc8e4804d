"""Revision during generation: exact shifts at every step, clean exit, gating, composition, baking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import lensiar
from lensiar import Lens, RevisionBundle
from lensiar.revision import RevisionError
from lensiar.spec import weights_hash
from tests.conftest import tiny_lens

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain and tea."]


def random_bundle(lens: Lens, level: str = "head", seed: int = 0, **kw: object) -> RevisionBundle:
    s = lens.spec
    g = torch.Generator().manual_seed(seed)
    shape = (s.n_layers, s.n_heads, s.d_head) if level == "head" else (s.n_layers, s.d_model)
    v = torch.randn(*shape, generator=g)
    return RevisionBundle(vectors=v / v.norm(dim=-1, keepdim=True), sigma=torch.rand(*shape[:-1], generator=g) + 0.5,
                          accuracy=torch.rand(*shape[:-1], generator=g), level=level, model=s.to_dict(), **kw)  # type: ignore[arg-type]


def _record_z(lens: Lens, layers: list[int]) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]], list]:
    """Independent torch hooks on o_proj: the input before (prepended) and after every other pre-hook."""
    before: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    after: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        o_proj = lens.o_proj(layer)
        handles.append(o_proj.register_forward_pre_hook(lambda m, a, layer=layer: before[layer].append(a[0].clone()),
                                                        prepend=True))
        handles.append(o_proj.register_forward_hook(lambda m, a, o, layer=layer: after[layer].append(a[0].clone())))
    return before, after, handles


@pytest.mark.parametrize("lens_name", ["llama", "smollm2"])
def test_projection_rises_by_alpha_sigma_at_every_generated_step(lens_name: str, request: pytest.FixtureRequest) -> None:
    lens = request.getfixturevalue("smollm2") if lens_name == "smollm2" else tiny_lens("llama")
    s = lens.spec
    bundle = random_bundle(lens)
    alpha, top_k, new_tokens = 3.0, 4, 6
    chosen = bundle.selection(top_k)
    before, after, handles = _record_z(lens, list(range(s.n_layers)))
    try:
        with lens.revise(bundle, alpha=alpha, top_k=top_k):
            lens.generate(PROMPTS, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    finally:
        for h in handles:
            h.remove()
    for layer in range(s.n_layers):
        assert len(before[layer]) == new_tokens  # prefill + one call per further token, KV cache on
        for pre, post in zip(before[layer], after[layer], strict=True):
            split = lambda t: t.reshape(*t.shape[:-1], s.n_heads, s.d_head)  # noqa: E731
            delta = split(post) - split(pre)  # [b, pos, heads, d_head]
            proj = (delta * bundle.vectors[layer]).sum(-1)
            expected = alpha * bundle.sigma[layer] * chosen[layer]
            assert torch.allclose(proj, expected.expand_as(proj), atol=1e-4)
            assert torch.equal(delta[..., ~chosen[layer], :], torch.zeros_like(delta[..., ~chosen[layer], :]))


def test_revised_z_read_back_with_the_lens() -> None:
    lens = tiny_lens("llama")
    bundle = random_bundle(lens)
    first = int(bundle.selection(3).any(1).nonzero()[0])
    name = f"blocks.{first}.attn.hook_z"
    plain = lens.run_with_cache(PROMPTS, name, positions="all")
    with lens.revise(bundle, alpha=2.0, top_k=3):
        revised = lens.run_with_cache(PROMPTS, name, positions="all")
    mask = plain.mask.bool()
    chosen = bundle.selection(3)[first]
    proj = ((revised[name] - plain[name]) * bundle.vectors[first]).sum(-1)[mask]  # [positions, heads]
    assert torch.allclose(proj[:, chosen], (2.0 * bundle.sigma[first][chosen]).expand(proj.shape[0], -1), atol=1e-5)
    assert torch.equal(proj[:, ~chosen], torch.zeros_like(proj[:, ~chosen]))


def _hooks(lens: Lens) -> dict[str, tuple[list[int], list[int]]]:
    return {n: (list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in lens.model.named_modules()
            if m._forward_pre_hooks or m._forward_hooks}



def test_images_only_gate_leaves_text_prompts_alone(image: object, tmp_path: Path) -> None:
    """An always-on ``images_only`` gate revises image prompts like an ungated revision and text prompts not at
    all; the flag survives a bundle round-trip."""
    import dataclasses

    lens = tiny_lens("llava")
    bundle = random_bundle(lens)
    pictures = [lensiar.Prompt("What is in the image?", images=(image,)), lensiar.Prompt("Describe it.", images=(image,))]
    plain_text, plain_image = lens.forward(PROMPTS), lens.forward(pictures)
    with lens.revise(bundle, alpha=20.0, top_k=4):
        always_image = lens.forward(pictures)
    on = lensiar.Gate(0, torch.zeros(lens.spec.d_model), 10.0, images_only=True)
    with lens.revise(bundle, alpha=20.0, top_k=4, gate=on):
        assert torch.equal(lens.forward(PROMPTS), plain_text)
        revised_image = lens.forward(pictures)
    assert torch.allclose(revised_image, always_image, atol=1e-5) and not torch.allclose(revised_image, plain_image)
    dataclasses.replace(bundle, gate=on).save(tmp_path / "b.safetensors")
    loaded = RevisionBundle.load(tmp_path / "b.safetensors", lens=lens)
    assert loaded.gate is not None and loaded.gate.images_only

@pytest.mark.parametrize("level", ["head", "layer"])
def test_exit_and_exceptions_restore_the_model_exactly(level: str) -> None:
    lens = tiny_lens("llava")
    bundle = random_bundle(lens, level)
    weights = weights_hash(lens.model)
    plain_logits = lens.forward(PROMPTS)
    plain_text = lens.generate(PROMPTS, max_new_tokens=5)
    hooks_before = _hooks(lens)
    with lens.revise(bundle, alpha=20.0, top_k=2):
        assert not torch.equal(lens.forward(PROMPTS), plain_logits)
    assert torch.equal(lens.forward(PROMPTS), plain_logits)
    with pytest.raises(ZeroDivisionError), lens.revise(bundle, alpha=20.0, top_k=2):
        _ = 1 / 0
    assert torch.equal(lens.forward(PROMPTS), plain_logits)
    assert lens.generate(PROMPTS, max_new_tokens=5) == plain_text
    assert weights_hash(lens.model) == weights
    assert not lens._revisions
    assert _hooks(lens) == hooks_before  # transformers installs its own capture hooks; ours are all gone


def test_layer_level_adds_the_shift_to_the_residual() -> None:
    lens = tiny_lens("llama")
    bundle = random_bundle(lens, "layer")
    name = "blocks.0.hook_resid_post"
    plain = lens.run_with_cache(PROMPTS, name, positions="last")
    with lens.revise(bundle, alpha=1.5, layers=[0]):
        revised = lens.run_with_cache(PROMPTS, name, positions="last")
    assert torch.allclose(revised[name] - plain[name], 1.5 * bundle.shift[0].expand(2, -1), atol=1e-5)


def test_bundles_compose() -> None:
    lens = tiny_lens("llama")
    a, b = random_bundle(lens, seed=1), random_bundle(lens, seed=2)
    with lens.revise([a, b], alpha=1.0, top_k=100):
        both = lens.forward(PROMPTS)
    with lens.revise(a, alpha=1.0, top_k=100), lens.revise(b, alpha=1.0, top_k=100):
        nested = lens.forward(PROMPTS)
    with lens.revise(a + b, alpha=1.0, top_k=100):
        summed = lens.forward(PROMPTS)
    assert torch.allclose(both, nested, atol=1e-6)
    assert torch.allclose(both, summed, atol=1e-4)


def test_conditional_revision_follows_the_gate() -> None:
    lens = tiny_lens("llama")
    d_model = lens.spec.d_model
    bundle = random_bundle(lens)
    plain = lens.forward(PROMPTS)
    with lens.revise(bundle, alpha=10.0, top_k=4):
        always = lens.forward(PROMPTS)
    never = lensiar.Gate(0, torch.zeros(d_model), -10.0)
    on = lensiar.Gate(0, torch.zeros(d_model), 10.0)
    with lens.revise(bundle, alpha=10.0, top_k=4, gate=never):
        assert torch.equal(lens.forward(PROMPTS), plain)
    with lens.revise(bundle, alpha=10.0, top_k=4, gate=on):
        assert torch.allclose(lens.forward(PROMPTS), always, atol=1e-6)
    # a gate that tells the two prompts apart revises only the first
    resid = lens.run_with_cache(PROMPTS, "blocks.1.hook_resid_post")["blocks.1.hook_resid_post"]
    w = resid[0] - resid[1]
    split = lensiar.Gate(1, w, -float(w @ (resid[0] + resid[1]) / 2))
    with lens.revise(bundle, alpha=10.0, top_k=4, gate=split):
        mixed = lens.forward(PROMPTS)
        texts = lens.generate(PROMPTS, max_new_tokens=4)
    assert torch.allclose(mixed[0], always[0], atol=1e-5) and torch.equal(mixed[1], plain[1])
    with lens.revise(bundle, alpha=10.0, top_k=4):
        assert lens.generate(PROMPTS[:1], max_new_tokens=4) == texts[:1]
    assert lens.generate(PROMPTS[1:], max_new_tokens=4) == texts[1:]
    with pytest.raises(RevisionError, match="no gate"), lens.revise(bundle, gate=True):
        pass


def test_wrong_model_bundle_is_refused() -> None:
    bundle = random_bundle(tiny_lens("llava"))
    with pytest.raises(lensiar.BundleError, match=r"another shape|fingerprint"), tiny_lens("qwen2").revise(bundle):
        pass


BAKEABLE = ["llama", "llava", "llava_next", "idefics3", "smolvlm", "paligemma", "gemma2", "gemma3"]


@pytest.mark.parametrize("name", BAKEABLE)
def test_baked_logits_equal_hooked_revision(name: str) -> None:
    lens = tiny_lens(name)
    bundle = random_bundle(lens)
    with lens.revise(bundle, alpha=4.0, top_k=3):
        hooked = lens.forward(PROMPTS)
    weights = weights_hash(lens.model)
    baked = Lens(lens.bake(bundle, alpha=4.0, top_k=3), lens.processor)
    assert torch.allclose(baked.forward(PROMPTS), hooked, atol=1e-4)
    assert weights_hash(lens.model) == weights


def test_baked_image_prompt_matches(image) -> None:
    lens = tiny_lens("llava")
    bundle = random_bundle(lens)
    prompts = [lensiar.Prompt("what is this", images=image)]
    with lens.revise(bundle, alpha=4.0, top_k=3):
        hooked = lens.forward(prompts)
    assert torch.allclose(Lens(lens.bake(bundle, alpha=4.0, top_k=3), lens.processor).forward(prompts), hooked, atol=1e-4)


@pytest.fixture(scope="module")
def smollm2_eager(smollm2: Lens) -> Lens:
    """SmolLM2 with eager attention: sdpa picks its reduction order by shape, which moves logits by ~2e-4."""
    from lensiar.models import smollm2_path

    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32, attn_implementation="eager")
    return Lens(model, smollm2.processor)


def test_baked_smollm2_round_trips_through_transformers(smollm2_eager: Lens, tmp_path: Path) -> None:
    smollm2 = smollm2_eager
    # each bundle carries its own default alpha / top_k; alpha=None and top_k=None use them
    head = random_bundle(smollm2, "head", defaults={"alpha": 2.0, "top_k": 6})
    layer = random_bundle(smollm2, "layer", seed=1, defaults={"alpha": 1.0, "top_k": 2})
    with smollm2.revise([head, layer]):
        hooked = smollm2.forward(PROMPTS)
        hooked_text = smollm2.generate(PROMPTS, max_new_tokens=8)
    weights = weights_hash(smollm2.model)
    baked = smollm2.bake([head, layer])
    assert torch.allclose(Lens(baked, smollm2.processor).forward(PROMPTS), hooked, atol=1e-4)
    baked.save_pretrained(tmp_path)
    reloaded = Lens(AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager"),
                    smollm2.processor)
    assert torch.allclose(reloaded.forward(PROMPTS), hooked, atol=1e-4)
    assert reloaded.generate(PROMPTS, max_new_tokens=8) == hooked_text
    assert baked.config.attention_bias and baked.config.mlp_bias and not smollm2.model.config.attention_bias
    assert weights_hash(smollm2.model) == weights


@pytest.mark.parametrize("name", ["qwen2", "internvl", "mistral3"])
def test_bake_refuses_backbones_without_a_bias_flag(name: str) -> None:
    lens = tiny_lens(name)
    with pytest.raises(RevisionError, match="cannot bake"):
        lens.bake(random_bundle(lens))


def test_layer_bake_refused_where_inexact() -> None:
    lens = tiny_lens("gemma2")
    with pytest.raises(RevisionError, match="layer-level"):
        lens.bake(random_bundle(lens, "layer"))


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": float("nan")}, "alpha must be a finite number"),
    ({"alpha": float("inf")}, "alpha must be a finite number"),
    ({"alpha": "2"}, "alpha must be a finite number"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"top_k": -3}, "top_k must be an integer >= 1"),
    ({"top_k": 2.5}, "top_k must be an integer >= 1"),
])
def test_bad_strength_arguments_are_refused_before_any_hook(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    lens = tiny_lens("llama")
    bundle = random_bundle(lens)
    with pytest.raises(ValueError, match=message), lens.revise(bundle, **kwargs):
        pass
    assert not lens._revisions and all(not m._forward_pre_hooks and not m._forward_hooks for m in lens.model.modules())
    with pytest.raises(ValueError, match=message):
        lens.bake(bundle, **kwargs)


def test_a_gate_with_nan_weights_is_refused() -> None:
    import dataclasses

    from lensiar.probes import Gate

    lens = tiny_lens("llama")
    gate = Gate(0, torch.full((lens.spec.d_model,), float("nan")), 0.0)
    with pytest.raises(ValueError, match="NaN"), lens.revise(random_bundle(lens), gate=gate):
        pass
    with pytest.raises(ValueError, match="threshold"), lens.revise(
            random_bundle(lens), gate=dataclasses.replace(gate, weight=torch.zeros(lens.spec.d_model), threshold=2.0)):
        pass


@pytest.mark.parametrize("name", sorted(lensiar.testing.zoo.FAMILIES))
def test_prompt_positions_revise_the_prompt_and_no_generated_token(name: str) -> None:
    """``positions="prompt"``: the prefill's z carries alpha * sigma on the chosen heads; every generation step's
    z is left exactly as is (each family passes its KV cache to the decoder layer its own way)."""
    lens = tiny_lens(name)
    s = lens.spec
    bundle = random_bundle(lens)
    alpha, top_k, new_tokens = 3.0, 2 * s.n_heads, 3
    chosen = bundle.selection(top_k)
    layers = sorted({int(layer) for layer in chosen.any(1).nonzero().flatten()})
    hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in lens.model.modules())  # noqa: E731
    installed = hooks()
    before, after, handles = _record_z(lens, layers)
    try:
        with lens.revise(bundle, alpha=alpha, top_k=top_k, positions="prompt"):
            lens.generate(PROMPTS[:1], max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    finally:
        for h in handles:
            h.remove()
    assert not lens._revisions and hooks() == installed
    ran = [layer for layer in layers if before[layer]]  # mllama's cross-attention layers skip text-only prompts
    assert ran
    for layer in ran:
        assert len(before[layer]) == new_tokens
        split = lambda t: t.reshape(*t.shape[:-1], s.n_heads, s.d_head)  # noqa: E731
        prefill = (split(after[layer][0]) - split(before[layer][0])) * bundle.vectors[layer]
        assert torch.allclose(prefill.sum(-1), (alpha * bundle.sigma[layer] * chosen[layer]).expand(prefill.shape[:-1]),
                              atol=1e-4)
        for pre, post in zip(before[layer][1:], after[layer][1:], strict=True):
            assert torch.equal(pre, post)


def test_unknown_positions_are_refused_before_any_hook() -> None:
    lens = tiny_lens("llama")
    with pytest.raises(ValueError, match="positions must be one of 'all', 'prompt'"), \
            lens.revise(random_bundle(lens), positions="answer"):
        pass
    assert not lens._revisions and all(not m._forward_pre_hooks and not m._forward_hooks for m in lens.model.modules())


def test_a_bundles_positions_default_round_trips_and_applies(tmp_path: Path) -> None:
    """A bundle saved with ``defaults={"positions": "prompt"}`` loads with it and revises the prompt only unless
    the call says otherwise; a bad value is refused when the bundle is made."""
    import dataclasses

    lens = tiny_lens("llama")
    bundle = random_bundle(lens)
    bundle = dataclasses.replace(bundle, defaults={**bundle.defaults, "positions": "prompt"})
    bundle.save(tmp_path / "b.safetensors")
    loaded = RevisionBundle.load(tmp_path / "b.safetensors", lens=lens)
    assert loaded.defaults["positions"] == "prompt" and "prompt positions" in repr(loaded)
    with lens.revise(loaded) as (revision,):
        assert revision.positions == "prompt"
    with lens.revise(loaded, positions="all") as (revision,):
        assert revision.positions == "all"
    with pytest.raises(lensiar.bundle.BundleError, match="default positions must be one of"):
        dataclasses.replace(bundle, defaults={"positions": "answer"})
