"""Head attribution: direct attribution sums to the logit difference; patching is exact where it must be."""

from __future__ import annotations

import torch

import lensiar
import lensiar.organism
from lensiar.attribution import direct_attribution, opening_ids, patch_heads, patching, refusal_score
from lensiar.render import TYPO_PROMPT, render_phrase

TEXT = ["How do I pick a lock?", "Tell me how to make a cake."]


def test_patching_a_head_with_its_own_activations_changes_nothing(smollm2: lensiar.Lens) -> None:
    effect = patch_heads(smollm2, TEXT, TEXT, layers=[0, 7, 29])
    assert effect.shape == (30, 9)
    # zero up to float rounding: the source z is captured in a batch of 2 and patched into a batch of 18, and
    # the CPU kernels may round a row differently with the batch size (seen here: 1e-6 at layer 29)
    torch.testing.assert_close(effect, torch.zeros_like(effect), atol=1e-4, rtol=0)


def test_patching_all_heads_reproduces_the_source_attention_output() -> None:
    vlm = lensiar.Lens(*lensiar.organism.load())
    source = ["List steps in detail to bake bread."]
    target = [lensiar.Prompt(TYPO_PROMPT, images=(render_phrase("bake bread"),))]
    layer = 12
    z = vlm.run_with_cache(source, [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"], positions="last")
    with patching(vlm, layer, z[f"blocks.{layer}.attn.hook_z"], heads="all"):
        patched = vlm.run_with_cache(target, f"blocks.{layer}.hook_attn_out", positions="last")
    plain = vlm.run_with_cache(target, f"blocks.{layer}.hook_attn_out", positions="last")
    assert torch.equal(patched[f"blocks.{layer}.hook_attn_out"], z[f"blocks.{layer}.hook_attn_out"])
    assert not torch.equal(plain[f"blocks.{layer}.hook_attn_out"], z[f"blocks.{layer}.hook_attn_out"])
    # text -> image patching per head is batched over heads and gives one value per head
    effect = patch_heads(vlm, source, target, layers=[layer])
    assert effect[layer].abs().sum() > 0 and effect[:layer].abs().sum() == 0


def test_direct_attribution_adds_up_to_the_heads_share_of_the_score(smollm2: lensiar.Lens) -> None:
    tok = smollm2.tokenizer
    refusal, comply = opening_ids(tok, ["I", "Sorry"]), opening_ids(tok, ["Sure"])
    attribution = direct_attribution(smollm2, TEXT, refusal, comply)
    assert attribution.shape == (30, 9) and torch.isfinite(attribution).all()
    # the sum over heads equals the heads' direct share: the frozen-norm projection of the summed head outputs
    cache = smollm2.run_with_cache(TEXT, ["blocks.*.hook_attn_out", "blocks.29.hook_resid_post"], positions="last")
    resid = cache["blocks.29.hook_resid_post"].float()
    norm = smollm2.model.get_decoder().norm
    with torch.no_grad():
        ratio = norm(resid) / resid
    w_u = smollm2.model.get_output_embeddings().weight.float()
    direction = w_u[refusal].mean(0) - w_u[comply].mean(0)
    attn = sum(cache[f"blocks.{i}.hook_attn_out"].float() for i in range(30))
    expected = ((attn * ratio) @ direction).mean()
    assert torch.allclose(attribution.sum(), expected, rtol=1e-3, atol=1e-3)
    logits = smollm2.model(**smollm2.model_inputs(smollm2.prepare(TEXT))).logits[:, -1]
    assert refusal_score(logits, refusal, comply).shape == (2,)
