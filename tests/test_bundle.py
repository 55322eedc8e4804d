"""RevisionBundle: exact round trip, arithmetic, and clear errors on bad files."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

from lensiar import RevisionBundle
from lensiar.bundle import BundleError
from tests.conftest import tiny_lens


def _bundle(seed: int = 0, level: str = "head") -> RevisionBundle:
    lens = tiny_lens("llava")
    s = lens.spec
    g = torch.Generator().manual_seed(seed)
    shape = (s.n_layers, s.n_heads, s.d_head) if level == "head" else (s.n_layers, s.d_model)
    v = torch.randn(*shape, generator=g)
    return RevisionBundle(vectors=v / v.norm(dim=-1, keepdim=True), sigma=torch.rand(*shape[:-1], generator=g) + 0.5,
                          accuracy=torch.rand(*shape[:-1], generator=g), level=level, model=s.to_dict(),
                          data={"ids": ["advbench/0", "alpaca/3"], "counts": {"pos": 1, "neg": 1}})


@pytest.mark.parametrize("level", ["head", "layer"])
def test_round_trip_is_exact(tmp_path: Path, level: str) -> None:
    bundle = _bundle(level=level)
    path = bundle.save(tmp_path / "b.safetensors")
    loaded = RevisionBundle.load(path, lens=tiny_lens("llava"))
    for name in ("vectors", "sigma", "accuracy"):
        assert torch.equal(getattr(loaded, name), getattr(bundle, name))
    assert loaded.metadata() == bundle.metadata()
    assert not list(tmp_path.glob("*.tmp"))


def test_arithmetic_acts_on_shifts() -> None:
    a, b = _bundle(0), _bundle(1)
    torch.testing.assert_close((a + b).shift, a.shift + b.shift)
    torch.testing.assert_close((a - b).shift, a.shift - b.shift)
    torch.testing.assert_close((2.5 * a).shift, 2.5 * a.shift)
    torch.testing.assert_close((a * -1).shift, -a.shift)
    torch.testing.assert_close((-a).shift, -a.shift)
    torch.testing.assert_close((a + b).vectors.norm(dim=-1), torch.ones_like(a.sigma))


def test_truncated_file(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b.safetensors")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        RevisionBundle.load(path)


def test_wrong_model(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b.safetensors")
    with pytest.raises(BundleError, match="another shape"):
        RevisionBundle.load(path, lens=_bigger_lens())
    with pytest.raises(BundleError, match="fingerprint"):
        RevisionBundle.load(path, lens=tiny_lens("qwen2"))


def _bigger_lens():
    import transformers

    from lensiar import Lens

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    return Lens(transformers.LlamaForCausalLM(config))


def test_nan_vector(tmp_path: Path) -> None:
    bundle = _bundle()
    with pytest.raises(BundleError, match="NaN"):
        RevisionBundle(vectors=bundle.vectors * float("nan"), sigma=bundle.sigma, accuracy=bundle.accuracy,
                       level="head", model=bundle.model)
    # a NaN written by another tool is refused on load too
    from safetensors.torch import save_file

    from lensiar.bundle import content_hash

    bad = bundle.vectors.clone()
    bad[0, 0, 0] = float("nan")
    tensors = {"vectors": bad, "sigma": bundle.sigma, "accuracy": bundle.accuracy}
    text = json.dumps(bundle.metadata())
    meta = {"lensiar": text, "sha256": content_hash(tensors, text)}  # a consistent hash
    save_file(tensors, tmp_path / "nan.safetensors", metadata=meta)
    with pytest.raises(BundleError, match="NaN"):
        RevisionBundle.load(tmp_path / "nan.safetensors")


def test_unknown_format_version(tmp_path: Path) -> None:
    bundle = _bundle()
    path = bundle.save(tmp_path / "b.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["lensiar"])
    meta["format_version"] = 99
    header["__metadata__"]["lensiar"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(BundleError, match="format version 99"):
        RevisionBundle.load(path)


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = _bundle(0).save(tmp_path / "b.safetensors")
    before = path.read_bytes()
    broken = _bundle(1)
    object.__setattr__(broken, "vectors", "not a tensor")
    with pytest.raises(AttributeError):
        broken.save(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ contents validated (issue: adversarial files)
def _rewrite(path: Path, tensors: dict[str, torch.Tensor] | None = None, meta_edit: dict | None = None,
             keep_hash: bool = False) -> None:
    """Rewrite a saved bundle with other tensors or metadata; the content hash is recomputed unless ``keep_hash``
    (so a test reaches the check it is about)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lensiar.bundle import content_hash

    with safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
        old = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    new = tensors if tensors is not None else old
    meta = json.loads(header["lensiar"])
    meta.update(meta_edit or {})
    header["lensiar"] = json.dumps(meta)
    if not keep_hash:
        header["sha256"] = content_hash(new, header["lensiar"])
    save_file(new, str(path), metadata=header)


def test_a_flipped_tensor_byte_is_refused(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # a low mantissa bit of the last accuracy value: still finite, still in range
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="content hash"):
        RevisionBundle.load(path)


@pytest.mark.parametrize("change, message", [
    (lambda t: {**t, "vectors": t["vectors"] > 0}, "floating-point"),
    (lambda t: {**t, "vectors": (t["vectors"] * 10).int()}, "floating-point"),
    (lambda t: {**t, "vectors": t["vectors"] * 2}, "not unit norm"),
    (lambda t: {**t, "sigma": -t["sigma"]}, "sigma must be >= 0"),
    (lambda t: {**t, "accuracy": t["accuracy"] + 1.5}, r"accuracy must lie in \[0, 1\]"),
    (lambda t: {**t, "vectors": t["vectors"][:, :, :8] / t["vectors"][:, :, :8].norm(dim=-1, keepdim=True)},
     "needs"),
    (lambda t: {**t, "extra": t["sigma"].clone()}, "unknown tensors"),
])
def test_bad_tensor_contents_are_refused(tmp_path: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    bundle = _bundle()
    path = bundle.save(tmp_path / "b.safetensors")
    _rewrite(path, change({"vectors": bundle.vectors, "sigma": bundle.sigma, "accuracy": bundle.accuracy}))
    with pytest.raises(BundleError, match=message):
        RevisionBundle.load(path, lens=tiny_lens("llava"))


@pytest.mark.parametrize("edit, message", [
    ({"gate": {"layer": 0, "bias": 0.0, "threshold": 0.5, "images_only": "false"}}, "images_only must be true or false"),
    ({"level": 3}, "'level' must be a str"),
    ({"model": "llava"}, "'model' must be a dict"),
    ({"defaults": {"alpha": float("nan"), "top_k": 4}}, "alpha must be a finite number"),
    ({"defaults": {"alpha": 1.0, "top_k": -2}}, "top_k must be an integer >= 0"),
    ({"format_version": True}, "format version"),
])
def test_bad_metadata_is_refused(tmp_path: Path, edit, message) -> None:  # type: ignore[no-untyped-def]
    bundle = _bundle()
    path = bundle.save(tmp_path / "b.safetensors")
    tensors = {"vectors": bundle.vectors, "sigma": bundle.sigma, "accuracy": bundle.accuracy}
    if "gate" in edit:
        tensors["gate_weight"] = torch.ones(bundle.model["d_model"])
    _rewrite(path, tensors, edit)
    with pytest.raises(BundleError, match=message):
        RevisionBundle.load(path)


def test_malformed_files_raise_only_bundle_error_naming_the_file(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cases = {
        "header_not_json": b"[" + raw[9 : 8 + n],
        "lensiar_not_json": raw[8 : 8 + n].replace(b'"lensiar":"{', b'"lensiar":"[{', 1),
        "empty": b"",
    }
    for name, header in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n :] if header else b"")
        with pytest.raises(BundleError, match=re.escape(name)):
            RevisionBundle.load(bad)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(BundleError, match=r"dir\.safetensors"):
        RevisionBundle.load(tmp_path / "dir.safetensors")


def test_a_zero_vector_for_a_head_without_signal_round_trips(tmp_path: Path) -> None:
    bundle = _bundle()
    vectors = bundle.vectors.clone()
    vectors[1, 2] = 0.0  # a constant head: mms gives no direction
    zero = RevisionBundle(vectors=vectors, sigma=bundle.sigma, accuracy=bundle.accuracy, level="head",
                          model=bundle.model)
    loaded = RevisionBundle.load(zero.save(tmp_path / "z.safetensors"), lens=tiny_lens("llava"))
    assert torch.equal(loaded.vectors, vectors)


# ------------------------------------------------------------------ ranking by held-out log-loss (format 3)
def _with_loss(bundle: RevisionBundle, seed: int = 5) -> RevisionBundle:
    from dataclasses import replace

    return replace(bundle, loss=torch.rand(bundle.sigma.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("level", ["head", "layer"])
def test_loss_round_trips_and_ranks_the_selection(tmp_path: Path, level: str) -> None:
    bundle = _with_loss(_bundle(level=level))
    loaded = RevisionBundle.load(bundle.save(tmp_path / "b.safetensors"), lens=tiny_lens("llava"))
    assert loaded.loss is not None and bundle.loss is not None and torch.equal(loaded.loss, bundle.loss)
    assert loaded.metadata()["format_version"] == 3
    k = 3 if level == "head" else 1
    chosen = loaded.selection(top_k=k)
    # the selected cells are exactly those of lowest loss, whatever their accuracy
    assert torch.equal(chosen.flatten().nonzero().flatten().sort().values,
                       bundle.loss.flatten().argsort()[:k].sort().values)
    assert "held-out log-loss" in loaded._repr_html_()
    summed = bundle + _with_loss(_bundle(1, level), seed=6)
    assert summed.loss is not None and torch.equal(summed.loss, torch.minimum(bundle.loss, _with_loss(_bundle(1, level), 6).loss))  # type: ignore[arg-type]


def test_a_format_2_file_without_loss_still_loads_and_ranks_by_accuracy(tmp_path: Path) -> None:
    bundle = _bundle()
    path = bundle.save(tmp_path / "b.safetensors")
    _rewrite(path, meta_edit={"format_version": 2})
    loaded = RevisionBundle.load(path, lens=tiny_lens("llava"))
    assert loaded.loss is None
    chosen = loaded.selection(top_k=4)
    assert bundle.accuracy[chosen].min() >= bundle.accuracy[~chosen].max()


def test_bad_loss_is_refused(tmp_path: Path) -> None:
    bundle = _with_loss(_bundle())
    assert bundle.loss is not None
    path = bundle.save(tmp_path / "b.safetensors")
    tensors = {"vectors": bundle.vectors, "sigma": bundle.sigma, "accuracy": bundle.accuracy, "loss": -bundle.loss}
    _rewrite(path, tensors)
    with pytest.raises(BundleError, match=r"loss .* must be >= 0"):
        RevisionBundle.load(path)
    _rewrite(path, {**tensors, "loss": bundle.loss}, meta_edit={"format_version": 2})  # format 2 knows no loss
    with pytest.raises(BundleError, match="unknown tensors"):
        RevisionBundle.load(path)
    _rewrite(path, {**tensors, "loss": bundle.loss[:1]}, meta_edit={"format_version": 3})
    with pytest.raises(BundleError, match="loss has shape"):
        RevisionBundle.load(path)
