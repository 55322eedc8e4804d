"""Contrastive samples from the real benchmark files, and the typographic renderer."""

from __future__ import annotations

import pytest

from lensiar import Prompt, build_samples
from lensiar.data_sources import compliant_openings, load_source


def test_sources_read_the_real_files() -> None:
    assert len(load_source("advbench")) == 520
    assert len(load_source("rd_harmful", split="train")) == 260
    refusals = load_source("vlguard_refusal")
    assert len(refusals) >= 10
    assert refusals[0].text == "I'm sorry, I cannot assist with that request."
    assert all("image" not in r.text for r in refusals)
    assert load_source("harmbench", split="val")[0].id.startswith("harmbench_val/")


def test_compliant_openings_vary_and_keep_the_target() -> None:
    out = compliant_openings("Sure, here is a tutorial on X")
    assert out[0] == "Sure, here is a tutorial on X"
    assert len(set(out)) == 4 and all("tutorial on X" in o for o in out)


def test_query_pairs_harmful_with_harmless() -> None:
    s = build_samples("query", n=10, seed=1)
    assert s.counts() == {"pos": 10, "neg": 10, "groups": 10}
    pos = [x for x in s.samples if x.label == 1]
    assert all(x.id.startswith("advbench/") and x.response is None for x in pos)
    assert all(x.id.startswith("rd_harmless_train/") for x in s.samples if x.label == 0)
    assert s.summary()["ids"] == s.ids and len(set(s.ids)) == 20


@pytest.mark.parametrize(("strategy", "per"), [("single_response", 1), ("multi_response", 3)])
def test_response_strategies_teacher_force_refusals_and_compliance(strategy: str, per: int) -> None:
    s = build_samples(strategy, n=6, n_responses=3, seed=0)
    assert s.counts() == {"pos": 6 * per, "neg": 6 * per, "groups": 6}
    for group in {x.group for x in s.samples}:
        members = [x for x in s.samples if x.group == group]
        assert len({x.prompt.text for x in members}) == 1  # same prompt on both sides
        assert all(x.response for x in members)
    refusals = {x.response for x in s.samples if x.label == 1}
    if per > 1:
        assert len(refusals) > 1  # several phrasings


def test_modality_puts_the_same_request_in_an_image() -> None:
    s = build_samples("modality", n=3)
    text = [x for x in s.samples if x.label == 1]
    image = [x for x in s.samples if x.label == 0]
    assert all(not x.prompt.images for x in text) and all(len(x.prompt.images) == 1 for x in image)
    assert {x.group for x in text} == {x.group for x in image}


def test_given_prompts_keep_their_images(image) -> None:
    harmful = [Prompt("do the thing in the picture", images=image)]
    s = build_samples("single_response", harmful=harmful, compliances=lambda r: ["Sure, step one"], n=None)
    assert all(x.prompt.images for x in s.samples)


def test_same_seed_same_samples_and_split_by_group() -> None:
    a, b = build_samples("multi_response", n=20, seed=3), build_samples("multi_response", n=20, seed=3)
    assert a.ids == b.ids
    train, val = a.split(0.25, seed=0)
    assert not {x.group for x in train.samples} & {x.group for x in val.samples}
    assert len(train) + len(val) == len(a)
    assert build_samples("multi_response", n=20, seed=4).ids != a.ids


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'queries'"):
        build_samples("queries")
    with pytest.raises(ValueError, match="no target string"):
        build_samples("single_response", harmful=["a prompt with no target"])
    with pytest.raises(ValueError, match="too few"):
        build_samples("query", n=1).split()
    with pytest.raises(FileNotFoundError, match="not found"):
        build_samples("query", data_dir="/nonexistent/data")
