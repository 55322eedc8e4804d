"""Streaming weight merging on real (tiny) HF checkpoints, sharded and not."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from lensiar.merge import MergeError, checkpoint_tensors, merge

TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def _perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * scale)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """B (llama), S = B + delta, V = SmolVLM whose text model is B + another delta; bf16, V sharded."""
    root = tmp_path_factory.mktemp("trio")
    torch.manual_seed(0)
    base = tf.LlamaForCausalLM(tf.LlamaConfig(**TEXT)).to(torch.bfloat16)
    base.save_pretrained(root / "base")
    _perturbed(base, 1)
    base.save_pretrained(root / "safe", max_shard_size="40KB")  # S sharded too
    base = tf.LlamaForCausalLM.from_pretrained(root / "base")
    vision = dict(model_type="smolvlm_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)
    vlm = tf.SmolVLMForConditionalGeneration(tf.SmolVLMConfig(text_config=TEXT, vision_config=vision, image_token_id=90))
    vlm.model.text_model.load_state_dict(base.model.state_dict())
    vlm.lm_head.load_state_dict(base.lm_head.state_dict())
    vlm = vlm.to(torch.bfloat16)
    _perturbed(vlm.model.text_model, 2, 0.02)
    vlm.save_pretrained(root / "vl", max_shard_size="40KB")
    return {"base": root / "base", "safe": root / "safe", "vl": root / "vl", "root": root}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def test_lambda_zero_and_one_reproduce_inputs_bit_for_bit(trio: dict[str, Path]) -> None:
    assert len(list(trio["vl"].glob("*.safetensors"))) > 1  # really sharded
    v, s = _tensors(trio["vl"]), _tensors(trio["safe"])
    for method in ("task_arithmetic", "linear"):
        out = trio["root"] / f"zero-{method}"
        merge(trio["base"], trio["safe"], trio["vl"], out, 0.0, method, chunk_bytes=1000, progress=False)
        merged = _tensors(out)
        assert merged.keys() == v.keys() and all(torch.equal(merged[k], v[k]) for k in v)
        assert all(merged[k].dtype == v[k].dtype for k in v)
    out = trio["root"] / "one-linear"
    merge(trio["base"], trio["safe"], trio["vl"], out, 1.0, "linear", chunk_bytes=1000, progress=False)
    merged = _tensors(out)
    for k, t in merged.items():
        if k.startswith("model.text_model.") or k == "lm_head.weight":  # the language backbone is S's
            assert torch.equal(t, s[k if k == "lm_head.weight" else "model." + k.removeprefix("model.text_model.")]), k
        else:
            assert torch.equal(t, v[k]), k  # vision tower and connector are V's


def test_task_arithmetic_matches_the_formula_and_loads(trio: dict[str, Path]) -> None:
    b, s, v = _tensors(trio["base"]), _tensors(trio["safe"]), _tensors(trio["vl"])
    out = trio["root"] / "ta"
    info = merge(trio["base"], trio["safe"], trio["vl"], out, 0.7, chunk_bytes=1000, progress=False)
    merged = _tensors(out)
    key = "model.text_model.layers.1.self_attn.q_proj.weight"
    llm = "model.layers.1.self_attn.q_proj.weight"
    expect = (v[key].float() + 0.7 * (s[llm].float() - b[llm].float())).to(torch.bfloat16)
    assert torch.equal(merged[key], expect) and not torch.equal(merged[key], v[key])
    assert info["merged_tensors"] > 0 and info["copied_tensors"] > 0
    model = tf.SmolVLMForConditionalGeneration.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    # restricted to layer 2: layer 1 stays V's
    out2 = trio["root"] / "ta-layer2"
    merge(trio["base"], trio["safe"], trio["vl"], out2, 0.7, layers=[2], progress=False)
    assert torch.equal(_tensors(out2)[key], v[key])


def test_bad_inputs_are_refused_and_leave_nothing(trio: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="unknown method"):
        merge(trio["base"], trio["safe"], trio["vl"], out, 0.5, "ties")
    other = tf.LlamaForCausalLM(tf.LlamaConfig(**(TEXT | {"hidden_size": 48})))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(MergeError, match="different architectures"):
        merge(trio["base"], tmp_path / "other", trio["vl"], out, 0.5)
    # a vl checkpoint with one backbone tensor removed
    broken = tmp_path / "broken"
    broken.mkdir()
    v = _tensors(trio["vl"])
    del v["model.text_model.layers.0.mlp.up_proj.weight"]
    save_file(v, str(broken / "model.safetensors"))
    (broken / "config.json").write_text((trio["vl"] / "config.json").read_text())
    with pytest.raises(MergeError, match="missing"):
        merge(trio["base"], trio["safe"], broken, out, 0.5)
    # a shape that differs only in a tensor (same config numbers)
    bad = tmp_path / "badshape"
    bad.mkdir()
    v = _tensors(trio["vl"])
    v["model.text_model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    save_file(v, str(bad / "model.safetensors"))
    (bad / "config.json").write_text((trio["vl"] / "config.json").read_text())
    with pytest.raises(MergeError, match="shape mismatch"):
        merge(trio["base"], trio["safe"], bad, out, 0.5)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    index = json.loads((trio["vl"] / "model.safetensors.index.json").read_text())
    assert checkpoint_tensors(trio["vl"])[0].keys() == index["weight_map"].keys()


def test_merge_copies_only_checkpoint_files_and_never_through_links(trio: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    vl = tmp_path / "vl"
    shutil.copytree(trio["vl"], vl)
    (vl / "notes.txt").write_text("private")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (vl / "generation_config.json").unlink(missing_ok=True)
    (vl / "generation_config.json").symlink_to(secret)
    out = tmp_path / "merged"
    merge(trio["base"], trio["safe"], vl, out, 0.5, progress=False)
    names = {p.name for p in out.iterdir()}
    assert "notes.txt" not in names and "generation_config.json" not in names
    assert {"config.json", "lensiar_merge.json"} <= names
    # a single weight file as --vl: nothing beside it is copied
    single = tmp_path / "single"
    merge(trio["base"], trio["safe"], trio["base"] / "model.safetensors", single, 0.5, progress=False)
    assert {p.name for p in single.iterdir()} == {"model.safetensors", "lensiar_merge.json"}


def test_overwrite_replaces_only_an_earlier_merge_and_layers_are_checked(trio: dict[str, Path], tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(MergeError, match="not an earlier lensiar merge"):
        merge(trio["base"], trio["safe"], trio["vl"], precious, 0.5, overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"
    out = tmp_path / "m"
    merge(trio["base"], trio["safe"], trio["vl"], out, 0.5, progress=False)
    merge(trio["base"], trio["safe"], trio["vl"], out, 0.25, overwrite=True, progress=False)  # a merge: replaced
    assert json.loads((out / "lensiar_merge.json").read_text())["lambda"] == 0.25
    for layers in ([99], [-1], []):
        with pytest.raises(MergeError, match="layer"):
            merge(trio["base"], trio["safe"], trio["vl"], tmp_path / "bad", 0.5, layers=layers, progress=False)
    assert not (tmp_path / "bad").exists()


def test_no_operation_changes_the_weights_it_reads(trio: dict[str, Path], tmp_path: Path) -> None:
    """sha256 of every weight before and after probe, extract, revise (with generate) and bake on a live model,
    and of every input file before and after merge."""
    import hashlib

    import lensiar
    from tests.conftest import tiny_lens

    def digest(tensors: Iterable[torch.Tensor]) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    lens = tiny_lens("llava")
    before = digest(lens.model.state_dict().values())
    samples = lensiar.build_samples("query", n=6, seed=0)
    ranking = lensiar.probe_heads(lens, samples, progress=False)
    bundle = lensiar.extract(lens, samples, ranking=ranking, progress=False)
    with lens.revise(bundle, alpha=2.0, top_k=2):
        lens.generate(["hello"], max_new_tokens=3)
    baked = lens.bake(bundle, alpha=2.0, top_k=2)
    assert digest(baked.state_dict().values()) != before  # the copy is revised...
    assert digest(lens.model.state_dict().values()) == before  # ...the model itself is not

    files = sorted(p for key in ("base", "safe", "vl") for p in trio[key].iterdir())
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    merge(trio["base"], trio["safe"], trio["vl"], tmp_path / "m", 0.5, chunk_bytes=1000, progress=False)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == hashes


def test_whole_vlm_merges_of_two_children_of_one_parent(trio: dict[str, Path]) -> None:
    """The second paper's setting: V and V_safe from a common parent P, all three VLMs of one layout. Task
    arithmetic gives P + tau_V + lambda * tau_safe on every tensor (vision tower included); linear interpolates
    V and V_safe and is bit-exact at both ends."""
    root = trio["root"]
    for name, seed in (("V", 11), ("V_safe", 12)):
        child = tf.SmolVLMForConditionalGeneration.from_pretrained(trio["vl"])
        _perturbed(child, seed, 0.03)
        child.save_pretrained(root / name)
    p, v, vs = _tensors(trio["vl"]), _tensors(root / "V"), _tensors(root / "V_safe")
    info = merge(trio["vl"], root / "V_safe", root / "V", root / "ta-vlm", 0.5, "task_arithmetic", progress=False)
    assert info["copied_tensors"] == 0  # every tensor merged, not only the backbone
    merged = _tensors(root / "ta-vlm")
    vision = [n for n in merged if "vision" in n]
    assert vision
    for n, t in merged.items():
        want = (p[n].float() + (v[n].float() - p[n].float()) + 0.5 * (vs[n].float() - p[n].float())).to(t.dtype)
        assert torch.equal(t, want), n
    for lam, ends in ((0.0, v), (1.0, vs)):
        merge(trio["vl"], root / "V_safe", root / "V", root / f"lin-{lam}", lam, "linear", progress=False)
        got = _tensors(root / f"lin-{lam}")
        assert all(torch.equal(got[n], ends[n]) for n in got)
