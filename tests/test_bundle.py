"""RevisionBundle: exact round trip, arithmetic, and clear errors on bad files."""

from __future__ import annotations

import json
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

    meta = {"lensiar": json.dumps(bundle.metadata())}
    bad = bundle.vectors.clone()
    bad[0, 0, 0] = float("nan")
    save_file({"vectors": bad, "sigma": bundle.sigma, "accuracy": bundle.accuracy}, tmp_path / "nan.safetensors",
              metadata=meta)
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
