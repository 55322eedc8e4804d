"""Vector store (atomic, concurrent-safe index) and llama.cpp control-vector export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lensiar.bundle import BundleError
from lensiar.export import export_control_vector, read_control_vector
from lensiar.store import VectorStore
from tests.conftest import tiny_lens
from tests.test_revision import random_bundle


def test_save_list_load(tmp_path: Path) -> None:
    lens = tiny_lens("llava")
    store = VectorStore(tmp_path / "vs")
    bundle = random_bundle(lens)
    store.save("llava-mms-head", bundle, metrics={"asr": 0.1})
    entry = store.list()["llava-mms-head"]
    assert entry["metrics"] == {"asr": 0.1} and entry["model"]["fingerprint"] == lens.spec.fingerprint
    assert torch.equal(store.load("llava-mms-head", lens=lens).vectors, bundle.vectors)
    with pytest.raises(BundleError, match="already"):
        store.save("llava-mms-head", bundle)
    with pytest.raises(BundleError, match="bad bundle name"):
        store.save("../escape", bundle)
    with pytest.raises(BundleError, match="no bundle 'nope'"):
        store.load("nope")
    store.remove("llava-mms-head")
    assert store.list() == {} and not list((tmp_path / "vs").glob("*.safetensors"))


def test_two_processes_saving_at_once(tmp_path: Path) -> None:
    root = tmp_path / "vs"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from lensiar.store import VectorStore
        from tests.conftest import tiny_lens
        from tests.test_revision import random_bundle
        bundle = random_bundle(tiny_lens("llama"), seed=int(sys.argv[1]))
        store = VectorStore({str(root)!r})
        for i in range(15):
            store.save(f"p{{sys.argv[1]}}-{{i}}", bundle)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)]) for k in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    index = json.loads((root / "index.json").read_text())
    assert sorted(index["bundles"]) == sorted(f"p{k}-{i}" for k in (1, 2) for i in range(15))
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*.tmp"))


def test_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        VectorStore(tmp_path).list()


def test_control_vector_round_trip(tmp_path: Path) -> None:
    lens = tiny_lens("llama")
    bundle = random_bundle(lens, "layer")
    path = export_control_vector(bundle, tmp_path / "cv.gguf", alpha=2.0, layers=[1])
    hint, directions = read_control_vector(path)
    assert hint == "llama" and sorted(directions) == [1]
    assert torch.allclose(directions[1], 2.0 * bundle.shift[1], atol=1e-7)
    with pytest.raises(BundleError, match="block 0"):
        export_control_vector(bundle, tmp_path / "bad.gguf", layers=[0])
    best = replace(bundle, loss=torch.arange(bundle.sigma.shape[0], dtype=torch.float32))  # layer 0 ranks first
    _, default = read_control_vector(export_control_vector(best, tmp_path / "default.gguf", top_k=2))
    assert sorted(default) == list(range(1, min(3, bundle.sigma.shape[0])))  # the best layers llama.cpp can steer
    with pytest.raises(BundleError, match="layer-level"):
        export_control_vector(random_bundle(lens, "head"), tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


# ------------------------------------------------------------------ a tampered index (issue: adversarial files)
@pytest.mark.parametrize("file", ["/etc/hostname", "../outside.safetensors", "other.safetensors",
                                  "sub/evil.safetensors"])
def test_index_cannot_point_outside_the_store(tmp_path: Path, file: str) -> None:
    lens = tiny_lens("llava")
    store = VectorStore(tmp_path / "vs")
    store.save("evil", random_bundle(lens))
    victim = tmp_path / "outside.safetensors"
    victim.write_text("precious")
    index = json.loads(store.index_path.read_text())
    index["bundles"]["evil"]["file"] = file
    store.index_path.write_text(json.dumps(index))
    with pytest.raises(BundleError, match="evil"):
        store.load("evil")
    with pytest.raises(BundleError, match="evil"):
        store.remove("evil")
    assert victim.read_text() == "precious" and "evil" in store.list()


def test_symlinked_bundle_is_refused(tmp_path: Path) -> None:
    lens = tiny_lens("llava")
    store = VectorStore(tmp_path / "vs")
    path = store.save("linked", random_bundle(lens))
    outside = tmp_path / "real.safetensors"
    path.rename(outside)
    path.symlink_to(outside)
    with pytest.raises(BundleError, match="outside the store"):
        store.remove("linked")
    assert outside.exists()


@pytest.mark.parametrize("name", ["ok\n", "a\x00b", "tab\tname", "../up", ""])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError, match="bad bundle name"):
        VectorStore(tmp_path / "vs").save(name, random_bundle(tiny_lens("llava")))


@pytest.mark.parametrize("index", ['[]', '{"format_version": 1}', '{"format_version": 1, "bundles": []}',
                                   '{"format_version": 1, "bundles": {"a": 3}}',
                                   '{"format_version": 1, "bundles": {"a": {"file": 7}}}'])
def test_structurally_wrong_index_gives_a_clear_error(tmp_path: Path, index: str) -> None:
    root = tmp_path / "vs"
    root.mkdir()
    (root / "index.json").write_text(index)
    with pytest.raises(BundleError, match=r"index\.json"):
        VectorStore(root).list()


def test_orphans_and_stale_temporaries(tmp_path: Path) -> None:
    import os
    import time

    lens = tiny_lens("llava")
    store = VectorStore(tmp_path / "vs")
    store.save("kept", random_bundle(lens))
    random_bundle(lens).save(store.root / "orphan.safetensors")  # written, index never updated
    stale = store.root / ".kept.safetensors.abc.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert store.orphans() == [".kept.safetensors.abc.tmp", "orphan.safetensors"]
    store.save("kept", random_bundle(lens), overwrite=True)  # the next save of that bundle cleans its stale temporary
    assert store.orphans() == ["orphan.safetensors"]
    assert "1 bundles" in repr(store)
