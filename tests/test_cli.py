"""The `lensiar` command on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

import lensiar


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lensiar.cli", *args], capture_output=True, text=True, timeout=300)


def test_spec_and_capture_on_a_saved_tiny_model(tmp_path: Path) -> None:
    model, tokenizer = lensiar.testing.tiny_model("qwen2")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    spec = _run("spec", str(tmp_path / "m"))
    assert spec.returncode == 0, spec.stderr
    assert json.loads(spec.stdout)["n_heads"] == 4
    out = tmp_path / "acts.safetensors"
    cap = _run("capture", str(tmp_path / "m"), "--prompt", "hello", "--prompt", "a longer prompt",
               "--names", "blocks.*.attn.hook_z", "--out", str(out))
    assert cap.returncode == 0, cap.stderr
    tensors = load_file(out)
    assert tensors["blocks.1.attn.hook_z"].shape == (2, 4, 16)


def test_bad_model_and_bad_hook_name_give_clear_errors(tmp_path: Path) -> None:
    missing = _run("spec", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "neither a local directory" in missing.stderr
    model, tokenizer = lensiar.testing.tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    typo = _run("capture", str(tmp_path / "m"), "--prompt", "x", "--names", "blocks.0.hook_resid_psot",
                "--out", str(tmp_path / "o.safetensors"))
    assert typo.returncode == 2 and "Did you mean 'blocks.0.hook_resid_post'" in typo.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_probe_and_extract_into_the_store(tmp_path: Path) -> None:
    model, tokenizer = lensiar.testing.tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    probe = _run("probe", str(tmp_path / "m"), "--n", "12", "--top-k", "3", "--out", str(tmp_path / "heads.json"))
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert len(result["top_heads"]) == 3 and result["n_train"] + result["n_val"] == 24
    assert len(json.loads((tmp_path / "heads.json").read_text())["accuracy"]) == 2
    ext = _run("extract", str(tmp_path / "m"), "--strategy", "single_response", "--n", "12", "--level", "layer",
               "--top-k", "1", "--name", "tiny-layer", "--store", str(tmp_path / "vs"))
    assert ext.returncode == 0, ext.stderr
    assert json.loads(ext.stdout)["selected"] and "tiny-layer" in lensiar.store.VectorStore(tmp_path / "vs").list()
    bad = _run("extract", str(tmp_path / "m"), "--strategy", "queries", "--out", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_demo_on_a_missing_organism_build_names_the_folder(tmp_path: Path) -> None:
    run = _run("demo", "--quick", "--organism", str(tmp_path / "no-build"), "--out", str(tmp_path / "demo"),
               "--store", str(tmp_path / "store"))
    assert run.returncode == 2
    assert "no organism manifest" in run.stderr and "no-build" in run.stderr
    assert not (tmp_path / "store").exists()  # nothing saved from a demo that never ran


def test_organism_build_seed_overrides_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    bad = _run("organism", "build", "--out", str(tmp_path / "b"), "--seed", "stage_s=eleven")
    assert bad.returncode == 2 and "NAME=INTEGER" in bad.stderr and "stage_s=eleven" in bad.stderr
    unknown = _run("organism", "build", "--out", str(tmp_path / "b"), "--seed", "stage_z=11")
    assert unknown.returncode == 2 and "unknown organism seed name(s) ['stage_z']" in unknown.stderr
    assert not (tmp_path / "b").exists()


def test_store_list_show_export_and_revise_side_by_side(tmp_path: Path) -> None:
    model, tokenizer = lensiar.testing.tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    ext = _run("extract", str(tmp_path / "m"), "--strategy", "single_response", "--n", "12", "--level", "layer",
               "--top-k", "1", "--name", "tiny-layer", "--store", str(tmp_path / "vs"))
    assert ext.returncode == 0, ext.stderr
    (tmp_path / "vs" / "stray.safetensors").write_bytes(b"left by a killed save")
    listed = json.loads(_run("store", "--store", str(tmp_path / "vs"), "list").stdout)
    assert list(listed["bundles"]) == ["tiny-layer"] and listed["orphans"] == ["stray.safetensors"]
    shown = json.loads(_run("store", "--store", str(tmp_path / "vs"), "show", "tiny-layer").stdout)
    assert shown["metadata"]["level"] == "layer" and len(shown["selected"]) == 1
    out = tmp_path / "cv.gguf"
    exported = _run("store", "--store", str(tmp_path / "vs"), "export-gguf", "tiny-layer", "--out", str(out))
    assert exported.returncode == 0, exported.stderr and out.is_file()
    missing = _run("store", "--store", str(tmp_path / "vs"), "show", "nope")
    assert missing.returncode == 2 and "no bundle 'nope'" in missing.stderr
    revised = _run("revise", str(tmp_path / "m"), "--bundle", "tiny-layer", "--store", str(tmp_path / "vs"),
                   "--prompt", "hello", "--alpha", "8", "--max-new-tokens", "4", "--positions", "prompt")
    assert revised.returncode == 0, revised.stderr
    assert json.loads(revised.stdout)["positions"] == "prompt"
    answers = json.loads(revised.stdout)["answers"]
    assert len(answers) == 1 and {"unrevised", "revised"} <= answers[0].keys()
    assert "unrevised:" in revised.stderr and "revised:" in revised.stderr
    wrong = _run("revise", str(tmp_path / "m"), "--bundle", "tiny-layer", "--prompt", "hello", "--positions", "answer")
    assert wrong.returncode == 2 and "invalid choice: 'answer'" in wrong.stderr
