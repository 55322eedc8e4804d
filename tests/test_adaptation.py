"""VL adaptation analysis: weight change, layer separability, degradation (tiny models and the organism)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import transformers as tf

import lensiar
from lensiar.adaptation import degradation, layer_separability, typo_pairs, weight_change
from lensiar.data_sources import data_dir
from lensiar.organism import load


def test_weight_change_is_the_relative_frobenius_norm_per_matrix() -> None:
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2)
    a = tf.LlamaForCausalLM(config)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[1].self_attn.q_proj.weight.mul_(1.1)
    change = weight_change(a, b)
    assert set(change) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert change["q_proj"].shape == (3,)
    assert torch.allclose(change["q_proj"], torch.tensor([0.0, 0.1, 0.0]), atol=1e-6)
    assert all(float(v.abs().max()) == 0.0 for k, v in change.items() if k != "q_proj")


def test_separability_and_degradation_on_the_organism(tmp_path: Path) -> None:
    vlm = lensiar.Lens(*load())
    (mm_text, mm_img), _, (al_text, al_img) = typo_pairs(data_dir(), 16, seed=3)
    text = ([i.prompt() for i in mm_text.items], [i.prompt() for i in al_text.items])
    image = ([i.prompt() for i in mm_img.items], [i.prompt() for i in al_img.items])
    sep, acts = layer_separability(vlm, text, image, seed=0)
    assert sep.text.shape == sep.image.shape == sep.text_to_image.shape == (30,)
    assert acts["text"].shape == (30, 32, 576) and sep.n_train + sep.n_test == 32
    assert float(sep.text.max()) >= 0.8  # harmfulness is linearly readable in the text path
    small = [(t.subset(4), i.subset(4)) for t, i in typo_pairs(data_dir(), 4, seed=3)]
    llm = lensiar.Lens(*lensiar.organism.load_backbone("S"))
    rows = degradation(llm, vlm, small, tmp_path / "deg.jsonl", tokens=8)
    conditions = {(r["dataset"], r["condition"]) for r in rows}
    assert ("mm_safetybench-text", "backbone LLM, text") in conditions
    assert ("mm_safetybench-typo", "VLM, image") in conditions and ("alpaca-text", "VLM, text") in conditions
    assert all(("asr" in r) != ("over_refusal" in r) for r in rows)
