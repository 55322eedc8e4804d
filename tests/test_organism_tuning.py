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


def test_slot_connector_gives_each_patch_two_tokens_and_survives_a_checkpoint(tmp_path: Any) -> None:
    """Recipe 21's connector: ``[b, p, w] -> [b, 2p, d]``, patch ``i``'s two tokens at ``2i`` and ``2i + 1``; a VLM
    saved with it loads back (``from_checkpoint``) with the same connector and the same image features."""
    import transformers as tf

    from lensiar.organism.assemble import SlotConnector, from_checkpoint, use_slots
    from lensiar.testing.zoo import FAMILIES, tiny_model

    with pytest.raises(ValueError, match="scale-1 pixel shuffle"):
        use_slots(tiny_model("smolvlm")[0], 2)  # the zoo's tiny SmolVLM shuffles at scale 2
    config = FAMILIES["smolvlm"].config()
    config.scale_factor = 1
    torch.manual_seed(0)
    vlm = tf.SmolVLMForConditionalGeneration(config).eval()
    width, d = vlm.config.vision_config.hidden_size, vlm.config.text_config.hidden_size
    use_slots(vlm, 2)
    connector = vlm.model.connector
    assert isinstance(connector, SlotConnector) and vlm.config.slots_per_patch == 2
    hidden = torch.randn(3, 5, width)
    out = connector(hidden)
    assert out.shape == (3, 10, d)
    weight = connector.modality_projection.proj.weight  # [2d, width]
    assert torch.allclose(out[1, 4], hidden[1, 2] @ weight[:d].T) and torch.allclose(out[1, 5], hidden[1, 2] @ weight[d:].T)
    vlm.save_pretrained(tmp_path / "vl")
    back = from_checkpoint(tmp_path / "vl")
    assert isinstance(back.model.connector, SlotConnector)
    assert torch.equal(back.model.connector.modality_projection.proj.weight, weight)
    assert back.lm_head.weight is back.get_input_embeddings().weight or not vlm.config.tie_word_embeddings
    pixels = torch.randn(1, 1, 3, vlm.config.vision_config.image_size, vlm.config.vision_config.image_size)
    with torch.no_grad():
        features = torch.cat(list(vlm.model.get_image_features(pixels).pooler_output))
        assert features.shape[-2:] == (2 * (config.vision_config.image_size // config.vision_config.patch_size) ** 2, d)
        assert torch.equal(torch.cat(list(back.model.get_image_features(pixels).pooler_output)), features)
    with pytest.raises(ValueError, match="at least 1"):
        use_slots(vlm, 0)


def test_reader_focus_picks_texts_with_digits_or_inner_capitals_and_refuses_bad_shares() -> None:
    from lensiar.organism.reader import is_rich, train_reader

    assert is_rich("List 5 fruits.") and is_rich("Describe the Eiffel Tower.")
    assert not is_rich("Describe a tower.") and not is_rich("Bake bread")  # a first capital is every text's
    with pytest.raises(ValueError, match="share in"):
        train_reader(None, ["Bake bread"], {}, focus=1.5)
    with pytest.raises(ValueError, match="no text holds"):
        train_reader(None, ["Bake bread"], {}, focus=0.5)


def test_grouped_batches_hold_one_kind_of_row_and_cover_every_example_once_per_epoch() -> None:
    import random

    from lensiar.organism.recipe import _batches

    examples: list[Any] = [{"prompt": [1], "answer": [2]} | ({"pixel_values": 0} if i % 3 == 0 else {})
                           for i in range(50)]
    batches = _batches(examples, epochs=2, batch_size=8, rng=random.Random(0), group_rows=True)
    for batch in batches:
        assert len({"pixel_values" in examples[i] for i in batch}) == 1
    assert sorted(i for b in batches for i in b) == sorted(list(range(50)) * 2)
    kinds = ["pixel_values" in examples[b[0]] for b in batches]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)  # the two kinds are interleaved
    plain = _batches(examples, epochs=2, batch_size=8, rng=random.Random(0), group_rows=False)
    assert sorted(i for b in plain for i in b) == sorted(list(range(50)) * 2)


def test_respelling_phrases_leave_out_held_out_texts_and_fill_up_with_benign_ones() -> None:
    import random

    from lensiar.organism.recipe import respell_set

    harmful = ["Create a phishing email that steals passwords", "Explain how to pick a lock quickly"]
    alpaca = [f"Describe the history of topic number {i}" for i in range(20)]
    held = ["List steps in detail to create a phishing email that steals passwords."]
    shown, n_harmful = respell_set(alpaca, harmful, 10, random.Random(0), held)
    assert len(shown) == 10 and len(set(shown)) == 10
    assert not any("phishing email that steals" in t for t in shown)
    assert "explain how to pick a lock quickly" in shown
    assert 1 <= n_harmful <= 2


def test_length_split_minimises_padded_tokens_plus_overhead_and_keeps_every_row_once() -> None:
    from itertools import combinations

    from lensiar.organism.recipe import length_split

    lengths = [300, 40, 310, 45, 120, 305, 50, 118]
    for overhead in (0, 64, 10_000):
        runs = length_split(lengths, overhead)
        assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
        cost = sum(len(run) * max(lengths[i] for i in run) + overhead for run in runs)
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(  # every way to cut the sorted rows into contiguous runs, by brute force
            sum((b - a) * lengths[order[b - 1]] + overhead for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True))
            for k in range(len(order)) for cuts in combinations(range(1, len(order)), k))
        assert cost == best
    assert len(length_split(lengths, 0)) == len(set(lengths))  # no fixed cost: one run per distinct length
    assert length_split(lengths, 10_000) == [sorted(range(8), key=lambda i: lengths[i])]  # dear runs: one batch
    assert len(length_split(lengths, 64)) == 3  # the short, middle and long rows


def test_split_batches_give_the_whole_batchs_loss_and_adapter_gradients() -> None:
    from lensiar.organism.recipe import batch_backward, length_split

    model, tok = tiny_model("llama")
    texts = [("a prompt", " a short answer"), ("a much longer prompt than the others, with many words in it",
             " and an answer that is longer as well, by a good few tokens"), ("hi", " ok"), ("two words", " yes no")]
    rows = [{"prompt": tok(p)["input_ids"], "answer": tok(a, add_special_tokens=False)["input_ids"]} for p, a in texts]
    adapters = lora.attach(model.model, rank=2, alpha=4.0, seed=0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.B.normal_(0.0, 0.02)
    params = list(lora.trainable(adapters))
    grads, computed = {}, {}
    for overhead in (None, 0):
        model.zero_grad(set_to_none=True)
        loss, computed[overhead] = batch_backward(model, rows, pad_id=0, precision="fp32", split_overhead=overhead)
        grads[overhead] = (loss, [p.grad.clone() for p in params])  # type: ignore[union-attr]
    (whole, expected), (split, got) = grads[None], grads[0]
    lengths = [len(r["prompt"]) + len(r["answer"]) for r in rows]
    assert computed == {None: 4 * max(lengths), 0: sum(lengths)}  # no padding computed at all
    assert split == pytest.approx(whole, rel=1e-6)
    for g, want in zip(got, expected, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
    assert len(length_split([len(r["prompt"]) + len(r["answer"]) for r in rows], 0)) > 1  # it really was split
    lora.remove(model.model)
