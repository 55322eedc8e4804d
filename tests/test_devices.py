"""Mixed-device bugs caught without a GPU: the whole pipeline under a simulated cuda:0
(:mod:`lensiar.testing.devices`), and proof that the simulation catches the bugs it is for."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import lensiar
from lensiar.attribution import direct_attribution
from lensiar.judges import LLMJudge
from lensiar.lens import Lens
from lensiar.testing import tiny_model
from lensiar.testing.devices import DeviceMismatch, simulated_gpu
from lensiar.testing.fuzz import random_bundles
from lensiar.testing.zoo import list_tiny_models


@pytest.mark.parametrize("name", list_tiny_models())
def test_the_pipeline_keeps_every_operand_on_the_models_device(name: str, image: Image.Image) -> None:
    lens = Lens(*tiny_model(name))
    prompts = ([lensiar.Prompt("Describe it", images=(image,)), lensiar.Prompt("What is this?", images=(image,))]
               if lens.arch.vision else ["Describe it", "What is this?"])
    head, layer = random_bundles(lens.spec, torch.Generator().manual_seed(0))
    with simulated_gpu(lens.model):
        assert lens.device == torch.device("cuda", 0)
        for positions in ("last", "mean", "all", *(["image"] if lens.arch.vision else [])):
            cache = lens.run_with_cache(prompts, ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"],
                                        positions=positions, return_logits=True)
            assert cache["blocks.0.hook_resid_post"].device.type == "cpu"  # captures come back where asked
        for bundle, gate in ((head, False), (layer, False), (head, True)):
            with lens.revise(bundle, alpha=2.0, top_k=3, gate=gate):
                assert len(lens.generate(prompts, max_new_tokens=3)) == 2
        lens.forward(prompts)
        if name in ("llava", "llama", "gemma2"):  # bakeable backbones (llama, gemma2)
            baked = lens.bake(head, alpha=2.0, top_k=3)
            baked(**lens.model_inputs(lens.prepare(prompts)))
            assert direct_attribution(lens, prompts, refusal=[10], comply=[11]).shape == (lens.spec.n_layers,
                                                                                          lens.spec.n_heads)


def test_the_llm_judge_moves_its_inputs_to_the_judge(smollm2: Lens) -> None:
    judge = LLMJudge(smollm2.model, smollm2.tokenizer, batch_size=2)
    with simulated_gpu(smollm2.model):
        assert len(judge.verdicts(["How do I bake bread?"], ["Mix flour and water."])) == 1


def test_the_simulation_catches_the_bugs_it_is_for(monkeypatch: pytest.MonkeyPatch, image: Image.Image) -> None:
    lens = Lens(*tiny_model("llava"))
    prompts = [lensiar.Prompt("Describe it", images=(image,))]
    # the image mask built from the CPU batch, as lens.py once did
    monkeypatch.setattr(Lens, "image_mask", lambda self, batch: batch["input_ids"] == self.image_token_id)
    with simulated_gpu(lens.model), pytest.raises(DeviceMismatch, match="cuda:0"):
        lens.run_with_cache(prompts, "blocks.0.hook_resid_post", positions="image")
    monkeypatch.undo()
    # a CPU shift multiplied by a GPU weight, as bake once did
    with simulated_gpu(lens.model), pytest.raises(DeviceMismatch):
        _ = lens.o_proj(0).weight @ torch.ones(lens.o_proj(0).in_features)
    # and nothing is left tagged afterwards: the same code runs plainly
    _ = lens.o_proj(0).weight @ torch.ones(lens.o_proj(0).in_features)
    assert lens.device == torch.device("cpu")
