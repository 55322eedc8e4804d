"""Extraction: each method against a plain reference computation, and what the bundle records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lensiar
from lensiar import RevisionBundle
from tests.conftest import tiny_lens


@pytest.fixture(scope="module")
def acts() -> lensiar.SampleActivations:
    samples = lensiar.build_samples("multi_response", n=16, n_responses=2, seed=0)
    return lensiar.sample_activations(tiny_lens("llama"), samples, progress=False)


def test_mms_equals_reference(acts: lensiar.SampleActivations) -> None:
    lens = tiny_lens("llama")
    bundle = lensiar.extract(lens, acts, method="mms", level="head")
    train, _ = acts.split(0.25, 0)
    ref = train.z[train.labels == 1].mean(0) - train.z[train.labels == 0].mean(0)
    ref = ref / ref.norm(dim=-1, keepdim=True)
    assert torch.allclose(bundle.vectors, ref, atol=1e-6)
    proj = (train.z * ref).sum(-1)
    assert torch.allclose(bundle.sigma, proj.std(0), atol=1e-5)


def test_probe_and_pca_point_to_the_pos_side(acts: lensiar.SampleActivations) -> None:
    lens = tiny_lens("llama")
    train, _ = acts.split(0.25, 0)
    shift = train.resid[train.labels == 1].mean(0) - train.resid[train.labels == 0].mean(0)
    for method in ("probe", "pca"):
        b = lensiar.extract(lens, acts, method=method, level="layer")
        assert b.vectors.shape == (lens.spec.n_layers, lens.spec.d_model)
        assert torch.allclose(b.vectors.norm(dim=-1), torch.ones(lens.spec.n_layers), atol=1e-5)
        assert ((b.vectors * shift).sum(-1) > 0).all()


def test_pca_of_paired_differences_reference(acts: lensiar.SampleActivations) -> None:
    train, _ = acts.split(0.25, 0)
    b = lensiar.extract(tiny_lens("llama"), acts, method="pca", level="layer")
    layer = 1
    diffs = []
    for g in dict.fromkeys(train.groups):
        rows = [i for i, gi in enumerate(train.groups) if gi == g]
        x, y = train.resid[rows, layer], train.labels[rows]
        diffs.append(x[y == 1].mean(0) - x[y == 0].mean(0))
    d = torch.stack(diffs).double()
    _eigvals, eigvecs = torch.linalg.eigh(d.T @ d)
    top = eigvecs[:, -1].float()
    assert abs(float(top @ b.vectors[layer])) == pytest.approx(1.0, abs=1e-4)


def test_bundle_names_its_data_and_round_trips(acts: lensiar.SampleActivations, tmp_path: Path) -> None:
    lens = tiny_lens("llama")
    bundle = lensiar.extract(lens, acts, method="mms", level="head", gate=True)
    assert bundle.strategy == "multi_response"
    assert bundle.data["counts"] == acts.samples.counts()
    assert set(bundle.data["train_ids"]) | set(bundle.data["val_ids"]) == set(acts.ids)
    loaded = RevisionBundle.load(bundle.save(tmp_path / "b.safetensors"), lens=lens)
    assert torch.equal(loaded.vectors, bundle.vectors) and loaded.data == bundle.data
    assert loaded.gate is not None and bundle.gate is not None
    assert torch.equal(loaded.gate.weight, bundle.gate.weight) and loaded.gate.layer == bundle.gate.layer


def test_selection_ranks_by_cross_validated_log_loss(acts: lensiar.SampleActivations) -> None:
    bundle = lensiar.extract(tiny_lens("llama"), acts, method="mms", level="head")
    ranking = lensiar.probe_heads(None, acts)
    assert bundle.loss is not None and torch.equal(bundle.loss, ranking.loss)
    chosen = bundle.selection(top_k=3)
    assert int(chosen.sum()) == 3
    assert bundle.loss[chosen].max() <= bundle.loss[~chosen].min()
    assert {tuple(c) for c in chosen.nonzero().tolist()} == set(ranking.top(3))
    only = bundle.selection(top_k=2, layers=[1])
    assert only[0].sum() == 0 and only[1].sum() == 2


def test_extract_errors(acts: lensiar.SampleActivations) -> None:
    lens = tiny_lens("llama")
    with pytest.raises(ValueError, match="unknown method"):
        lensiar.extract(lens, acts, method="mean")
    with pytest.raises(ValueError, match="unknown level"):
        lensiar.extract(lens, acts, level="neuron")
    other = lensiar.probe_heads(None, acts, seed=5)
    with pytest.raises(ValueError, match="another split"):
        lensiar.extract(lens, acts, ranking=other)
