"""The organism recipe's tuning loop: the answer-only loss and the frozen base reproduce the plain model's
loss and the adapters' gradients exactly, and the base's ``requires_grad`` flags come back afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from lensiar.organism import lora
from lensiar.organism.recipe import answer_loss, tune
from lensiar.testing.zoo import tiny_model


def _batch(name: str, model: Any, proc: Any) -> dict[str, torch.Tensor]:
    """Two rows (text) or one row with an image (VLM), the last 4 tokens of each row as the answer."""
    if name == "smolvlm":
        image = Image.new("RGB", (64, 64), (200, 10, 10))
        batch = dict(proc(text=["<image>Read this. It says hello there"], images=[[image]], return_tensors="pt"))
    else:
        batch = dict(proc(["Read this. It says hello there", "short"], return_tensors="pt", padding=True))
    labels = batch["input_ids"].clone()
    labels[:, : labels.shape[1] - 4] = -100
    labels[batch["attention_mask"] == 0] = -100
    return batch | {"labels": labels}


@pytest.mark.parametrize("name", ["llama", "smolvlm"])
def test_answer_loss_and_adapter_gradients_equal_the_full_models(name: str) -> None:
    model, proc = tiny_model(name)
    batch = _batch(name, model, proc)
    decoder = model.model.text_model if name == "smolvlm" else model.model
    adapters = lora.attach(decoder, rank=2, alpha=4.0, seed=0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.B.normal_(0.0, 0.02)  # non-zero, so A gets a gradient too
    params = list(lora.trainable(adapters))

    reference = model(**batch).loss  # the whole model unfrozen, logits at every position
    reference.backward()
    expected = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    assert any(p.requires_grad for p in model.lm_head.parameters())  # the slow path really had more to do

    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in params)]
    for p in others:
        p.requires_grad_(False)
    loss = answer_loss(model, batch)
    loss.backward()
    assert torch.equal(loss, reference)
    for p, want in zip(params, expected, strict=True):
        assert torch.equal(p.grad, want)  # type: ignore[arg-type]


def test_tune_restores_the_base_flags_even_when_a_step_fails() -> None:
    model, tok = tiny_model("llama")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    examples = [{"prompt": tok("a prompt")["input_ids"], "answer": tok(" an answer")["input_ids"]} for _ in range(4)]
    factors = tune(model, model.model, examples, pad_id=0, rank=2, alpha=4.0, lr=1e-3, epochs=1, batch_size=2,
                   seed=0, desc="test", log=lambda _: None)
    assert factors and all(t.dtype == torch.bfloat16 for t in factors.values())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # adapters merged, flags back
    assert not model.training

    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    broken = [{"prompt": [10**9], "answer": [1]}]  # an id past the vocabulary: the step raises
    with pytest.raises(IndexError):
        tune(model, model.model, broken, pad_id=0, rank=2, alpha=4.0, lr=1e-3, epochs=1, batch_size=1,
             seed=0, desc="test", log=lambda _: None)
    after = dict(model.named_parameters())  # no adapter left behind, nothing merged, flags back
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[n], w) for n, w in weights.items())
    assert {n: p.requires_grad for n, p in after.items()} == flags


def test_average_of_adapters_is_the_mean_of_their_deltas() -> None:
    gen = torch.Generator().manual_seed(0)
    sets = [{"q.A": torch.randn(2, 5, generator=gen), "q.B": torch.randn(4, 2, generator=gen)} for _ in range(3)]
    soup = lora.average(sets)
    assert soup["q.A"].shape == (6, 5) and soup["q.B"].shape == (4, 6)  # rank 3 x 2
    mean = sum(s["q.B"] @ s["q.A"] for s in sets) / 3
    assert torch.allclose(soup["q.B"] @ soup["q.A"], mean, atol=1e-6)
    one = lora.average(sets[:1])
    assert all(torch.equal(one[k], sets[0][k]) for k in one)  # a soup of one is that adapter
    with pytest.raises(ValueError, match="other layers"):
        lora.average([sets[0], {"k.A": sets[1]["q.A"], "k.B": sets[1]["q.B"]}])
    with pytest.raises(ValueError, match="at least one"):
        lora.average([])


def test_sincos_positions_code_the_grid_and_unknown_inits_are_refused() -> None:
    from lensiar.organism.assemble import sincos_2d, vlm_around

    codes = sincos_2d(8, 192)
    assert codes.shape == (64, 192)
    assert torch.equal(codes[0, :48], torch.zeros(48)) and torch.equal(codes[0, 48:96], torch.ones(48))
    dist = torch.cdist(codes, codes)
    assert dist[9, 10] < dist[9, 12] < dist[9, 15]  # along a row, nearer patches have nearer codes
    assert torch.allclose(codes[3, 96:], codes[11, 96:])  # same column, next row: same column half
    with pytest.raises(ValueError, match="unknown position init"):
        vlm_around(None, None, positions="rope")
