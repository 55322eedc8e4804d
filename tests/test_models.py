"""The offline registry and its atomic cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lensiar
from lensiar.models import cached_checkpoint, resolve

RACER = textwrap.dedent(
    """
    import sys, time
    from lensiar.models import cached_checkpoint
    from lensiar.testing import tiny_model

    def build(target):
        model, tokenizer = tiny_model("llama")
        time.sleep(1.0)  # widen the window so both processes build at once
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    path = cached_checkpoint("race", build)
    print(path)
    """
)


def test_two_processes_racing_on_a_cold_cache_both_end_with_a_valid_cache(tmp_path: Path) -> None:
    env = dict(os.environ, LENSIAR_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", RACER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert paths == {str(tmp_path / "models" / "race")}
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name != "race"]
    assert leftovers == []
    lens = lensiar.Lens.from_pretrained(tmp_path / "models" / "race")
    assert lens.spec.n_layers == 2 and json.loads((tmp_path / "models" / "race" / "config.json").read_text())


def test_a_failing_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENSIAR_CACHE", str(tmp_path))

    def broken(target: Path) -> None:
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cached_checkpoint("broken", broken)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_hub_id_offline_and_not_cached_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"'meta-llama/Llama-3-8B'.*HF_HUB_OFFLINE.*--local-dir DIR"):
        resolve("meta-llama/Llama-3-8B", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a local directory"):
        resolve(str(tmp_path / "not-there"))


@pytest.mark.slow
def test_smollm2_from_the_registry(smollm2: lensiar.Lens) -> None:
    s = smollm2.spec
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head, s.d_model) == (30, 9, 3, 64, 576)
    assert s.architecture == "LlamaForCausalLM"
    text = smollm2.generate(["What is the capital of France? Answer in one word."], max_new_tokens=12)[0]
    assert "Paris" in text
    batch = smollm2.prepare(["hi"])
    assert batch["input_ids"][0, 0].item() == smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert smollm2.model.dtype == torch.float32


@pytest.mark.slow
def test_smolvlm_assembled_around_smollm2_keeps_text_behaviour(smollm2: lensiar.Lens, image) -> None:
    vlm, processor = lensiar.testing.smolvlm_around_smollm2()
    lens = lensiar.Lens(vlm, processor)
    smollm2.model.set_attn_implementation("eager")  # the assembled VLM runs eager attention
    try:
        prompt = ["What is the capital of France?"]
        assert lens.prepare(prompt)["input_ids"].tolist() == smollm2.prepare(prompt)["input_ids"].tolist()
        ours, theirs = lens.forward(prompt), smollm2.forward(prompt)
        torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs, atol=1e-4, rtol=0)
    finally:
        smollm2.model.set_attn_implementation("sdpa")
    cache = lens.run_with_cache([lensiar.Prompt("What is this?", images=image)], "blocks.29.attn.hook_z",
                                positions="image")
    assert cache.mask is not None and cache.mask.sum() == 4
    assert (lens.spec.n_layers, lens.spec.n_heads, lens.spec.d_head) == (30, 9, 64)
