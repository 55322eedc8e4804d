"""Real VLMs in a user's hands: saved checkpoints with the real layout for every tiny family, hub ids from
the local cache, offloaded models (accelerate's device_map with CPU and disk), and bf16."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import lensiar
from lensiar.arch import BAKE
from lensiar.models import MissingWeightsError
from lensiar.offload import is_offloaded
from lensiar.revision import RevisionError
from lensiar.testing import tiny_model
from lensiar.testing.fuzz import random_bundles
from lensiar.testing.zoo import list_tiny_models


def save_tiny(name: str, path: Path) -> tuple[lensiar.Lens, Path]:
    """The in-memory tiny ``name`` and its complete checkpoint written to ``path`` with ``save_pretrained``."""
    model, processor = tiny_model(name)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return lensiar.Lens(model, processor), path


def prompts_for(lens: lensiar.Lens, image: Image.Image) -> list[lensiar.Prompt]:
    if lens.arch.vision:
        return [lensiar.Prompt("Describe the picture", images=(image,)), lensiar.Prompt("What is it?", images=(image,))]
    return [lensiar.Prompt("Describe a picture"), lensiar.Prompt("What is it?")]


@pytest.mark.parametrize("name", list_tiny_models())
def test_saved_checkpoint_reloads_and_behaves_like_the_in_memory_model(name: str, tmp_path: Path,
                                                                       image: Image.Image) -> None:
    ref, path = save_tiny(name, tmp_path / name)
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= files
    if ref.arch.vision:
        assert "processor_config.json" in files  # the image processor's settings travel in it
    lens = lensiar.Lens.from_pretrained(path, attn_implementation="eager")  # as the in-memory tiny models
    assert type(lens.model) is type(ref.model) and lens.spec == ref.spec
    prompts = prompts_for(ref, image)
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]
    got, want = lens.run_with_cache(prompts, names, positions="all"), ref.run_with_cache(prompts, names, positions="all")
    assert set(got.keys()) == set(want.keys()) and all(torch.equal(got[k], want[k]) for k in want)
    assert lens.generate(prompts, max_new_tokens=6) == ref.generate(prompts, max_new_tokens=6)
    head, layer = random_bundles(ref.spec, torch.Generator().manual_seed(1))
    for bundle in (head, layer):
        with ref.revise(bundle, alpha=4.0, top_k=3):
            revised = ref.generate(prompts, max_new_tokens=6)
        with lens.revise(bundle, alpha=4.0, top_k=3):
            assert lens.generate(prompts, max_new_tokens=6) == revised
    if ref.model.config.get_text_config().model_type not in BAKE:  # refused alike, in memory and reloaded
        for each in (ref, lens):
            with pytest.raises(RevisionError, match="cannot bake"):
                each.bake(head)
    else:
        batch = ref.prepare(prompts)
        want_logits = ref.bake(head, alpha=4.0, top_k=3)(**ref.model_inputs(batch)).logits
        got_logits = lens.bake(head, alpha=4.0, top_k=3)(**lens.model_inputs(batch)).logits
        assert torch.equal(got_logits, want_logits)


def _fake_hub_cache(source: Path, cache: Path, repo: str) -> None:
    """``source`` laid out as the Hugging Face cache holds a downloaded ``repo`` (snapshots + refs/main)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_from_the_local_cache_and_a_missing_one_fails_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: Image.Image) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref, path = save_tiny("llava", tmp_path / "saved")
    _fake_hub_cache(path, tmp_path / "hub", "lensiar-test/tiny-llava")
    lens = lensiar.Lens.from_pretrained("lensiar-test/tiny-llava", cache_dir=str(tmp_path / "hub"),
                                        attn_implementation="eager")
    assert lens.spec == ref.spec
    prompts = prompts_for(ref, image)
    assert lens.generate(prompts, max_new_tokens=5) == ref.generate(prompts, max_new_tokens=5)
    with pytest.raises(MissingWeightsError) as caught:
        lensiar.Lens.from_pretrained("lensiar-test/not-there", cache_dir=str(tmp_path / "hub"))
    message = str(caught.value)
    assert "\n" not in message and "'lensiar-test/not-there'" in message and "HF_HUB_OFFLINE" in message
    assert "Lens.from_pretrained('DIR')" in message
    with pytest.raises(TypeError, match=r"unexpected keyword.*torch_dtypo"):
        lensiar.Lens.from_pretrained(path, torch_dtypo=torch.float16)
    with pytest.raises(ValueError, match="not both"):
        lensiar.Lens.from_pretrained(path, device="cpu", device_map="auto")


OFFLOAD_NAMES = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]


def _same_pipeline(offloaded: lensiar.Lens, ref: lensiar.Lens, prompts: list[lensiar.Prompt]) -> None:
    """Capture, head/layer/gated revision and generate on ``offloaded`` equal those of the in-memory ``ref``."""
    assert is_offloaded(offloaded.model) and not is_offloaded(ref.model)
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in offloaded.model.modules())
    assert offloaded.spec == ref.spec  # the fingerprint reads offloaded weights one module at a time
    got, want = offloaded.run_with_cache(prompts, OFFLOAD_NAMES), ref.run_with_cache(prompts, OFFLOAD_NAMES)
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5
    assert offloaded.generate(prompts, max_new_tokens=4) == ref.generate(prompts, max_new_tokens=4)
    head, layer = random_bundles(ref.spec, torch.Generator().manual_seed(2))
    for bundle, gate in ((head, False), (layer, False), (head, True)):
        with ref.revise(bundle, alpha=3.0, top_k=4, gate=gate):
            revised = ref.generate(prompts, max_new_tokens=4)
        with offloaded.revise(bundle, alpha=3.0, top_k=4, gate=gate):
            assert offloaded.generate(prompts, max_new_tokens=4) == revised
    assert hooks == sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in offloaded.model.modules())
    with pytest.raises(RevisionError, match="offloaded"):
        offloaded.bake(head, alpha=1.0)


def test_offloaded_smollm2_equals_the_in_memory_model(smollm2: lensiar.Lens, tmp_path: Path) -> None:
    lens = lensiar.Lens.from_pretrained("smollm2-135m-instruct", device_map="auto", max_memory={"cpu": "400MB"},
                                        offload_folder=str(tmp_path / "offload"))
    assert "disk" in lens.model.hf_device_map.values()
    _same_pipeline(lens, smollm2, [lensiar.Prompt("How do I bake bread?"), lensiar.Prompt("Name a colour.")])
    samples = lensiar.build_samples("query", n=24, seed=0)
    got = lensiar.probe_heads(lens, samples, progress=False)
    want = lensiar.probe_heads(smollm2, samples, progress=False)
    assert torch.allclose(got.accuracy, want.accuracy)


def test_offloaded_organism_equals_the_in_memory_organism(tmp_path: Path) -> None:
    from lensiar.prompts import typo_prompt

    ref = lensiar.Lens.from_pretrained("organism")
    lens = lensiar.Lens.from_pretrained("organism", device_map="auto", max_memory={"cpu": "450MB"},
                                        offload_folder=str(tmp_path / "offload"))
    assert "disk" in lens.model.hf_device_map.values()
    _same_pipeline(lens, ref, [typo_prompt("bake bread"), typo_prompt("plant a tree")])


def test_bf16_casts_vectors_keeps_bundles_fp32_and_probes_agree(smollm2: lensiar.Lens, tmp_path: Path) -> None:
    bf16 = lensiar.Lens.from_pretrained("smollm2-135m-instruct", dtype=torch.bfloat16)
    samples = lensiar.build_samples("query", n=48, seed=0)  # 72 train / 24 held out
    acts_fp = lensiar.sample_activations(smollm2, samples, progress=False)
    acts_bf = lensiar.sample_activations(bf16, samples, progress=False)
    diff = (lensiar.probe_heads(None, acts_fp, progress=False).accuracy
            - lensiar.probe_heads(None, acts_bf, progress=False).accuracy).abs()  # [L, H]
    # a head whose spread over prompts is below bf16's resolution (2^-8 relative) is constant in bf16: its
    # bf16 probe predicts the prior. SmolLM2 has two such heads (L18H7 and L18H8, relative spread 2e-4 and 2e-7).
    spread = acts_fp.z.std(0).amax(-1) / acts_fp.z.abs().amax(0).amax(-1)  # [L, H]
    resolvable = spread >= 2**-7
    assert int((~resolvable).sum()) <= 2
    assert diff[resolvable].mean().item() <= 0.01  # measured 0.0047
    assert diff[resolvable].max().item() <= 2 / 24 + 1e-6  # at most two of 24 held-out prompts
    bundle = lensiar.extract(bf16, samples, level="head", progress=False)
    assert bundle.vectors.dtype == torch.float32
    bundle.save(tmp_path / "b.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "b.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 == {torch.float32}
    seen: list[torch.dtype] = []
    handle = bf16.o_proj(0).register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    try:
        with bf16.revise(bundle, alpha=2.0, top_k=4, layers=[0]):
            out = bf16.generate(["How do I bake bread?"], max_new_tokens=4)
    finally:
        handle.remove()
    assert out and set(seen) == {torch.bfloat16}


def test_the_gpu_benchmark_says_in_one_line_that_it_needs_cuda() -> None:
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: benchmarks/gpu.py would run for real")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout.count("\n") == 1 and "CUDA" in done.stdout


@pytest.mark.parametrize("name", ["llava", "gemma2"])
def test_bake_in_place_equals_the_copy_and_undoes_bit_for_bit(name: str, image: Image.Image) -> None:
    from lensiar.spec import weights_hash

    lens = lensiar.Lens(*tiny_model(name))
    prompts = prompts_for(lens, image)
    kwargs = lens.model_inputs(lens.prepare(prompts))
    head, layer = random_bundles(lens.spec, torch.Generator().manual_seed(3))
    bundles = [head] if name == "gemma2" else [head, layer]  # gemma2 bakes head level only
    before, plain = weights_hash(lens.model), lens.model(**kwargs).logits
    flag = lens.model.config.get_text_config().attention_bias
    copied = lens.bake(bundles, alpha=3.0, top_k=3)(**kwargs).logits
    with lens.bake_in_place(bundles, alpha=3.0, top_k=3):
        assert torch.equal(lens.model(**kwargs).logits, copied)
        assert lens.model.config.get_text_config().attention_bias is True
    assert weights_hash(lens.model) == before and torch.equal(lens.model(**kwargs).logits, plain)
    assert lens.model.config.get_text_config().attention_bias == flag
    assert all(b is None for b in (lens.o_proj(i).bias for i in range(lens.spec.n_layers)))
    with pytest.raises(KeyError), lens.bake_in_place(head, alpha=3.0):
        raise KeyError("inside the block")
    assert weights_hash(lens.model) == before


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_a_weighted_capture_is_reduced_per_layer_and_equals_the_full_sequence_average(name: str,
                                                                                      image: Image.Image) -> None:
    lens = lensiar.Lens(*tiny_model(name))
    batch, mask = lens.prepare_with_responses(prompts_for(lens, image), ["Sure, here it is.", "No."])
    weight = mask.float() / mask.float().sum(1, keepdim=True)
    names = ["blocks.*.attn.hook_z", "blocks.*.hook_resid_post"]
    reduced = lens.run_with_cache(batch, names, positions=weight)
    full = lens.run_with_cache(batch, names, positions=mask)
    for key in full:
        want = torch.einsum("bs...,bs->b...", full[key], weight)
        assert reduced[key].shape == want.shape and torch.allclose(reduced[key], want, atol=1e-6)


def test_out_of_memory_halves_the_batch_and_at_one_says_what_to_do() -> None:
    from lensiar.lens import OutOfMemory

    lens = lensiar.Lens(*tiny_model("llama"))
    prompts = [f"prompt number {i}" for i in range(8)]
    want = lens.generate(prompts, max_new_tokens=3, batch_size=2)
    limit = {"rows": 2}

    def fail_when_big(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].shape[0] > limit["rows"]:  # as a GPU would, past its memory
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    handle = lens.model.get_input_embeddings().register_forward_pre_hook(fail_when_big)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert lens.generate(prompts, max_new_tokens=3, batch_size=8) == want
        assert [str(w.message) for w in caught] == ["generate: out of memory at batch_size=8; retrying at 4",
                                                    "generate: out of memory at batch_size=4; retrying at 2"]
        limit["rows"] = 0
        with pytest.raises(OutOfMemory, match=r"batch_size=1.*device_map='auto'"), pytest.warns(UserWarning):
            lens.run_with_cache(prompts, "blocks.0.hook_resid_post", batch_size=4)
    finally:
        handle.remove()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_revision_vectors_follow_the_models_half_precision(dtype: torch.dtype, image: Image.Image) -> None:
    model, processor = tiny_model("llava")
    lens = lensiar.Lens(model.to(dtype), processor)
    head, layer = random_bundles(lens.spec, torch.Generator().manual_seed(4))
    seen: list[torch.dtype] = []
    handles = [lens.o_proj(1).register_forward_hook(lambda _m, _a, out: seen.append(out.dtype)),
               lens.layers[1].register_forward_hook(lambda _m, _a, out: seen.append(
                   (out[0] if isinstance(out, tuple) else out).dtype))]
    try:
        with lens.revise([head, layer], alpha=2.0, top_k=4):
            answers = lens.generate(prompts_for(lens, image), max_new_tokens=3)
    finally:
        for h in handles:
            h.remove()
    assert len(answers) == 2 and seen and set(seen) == {dtype}
    assert head.vectors.dtype == layer.vectors.dtype == torch.float32
