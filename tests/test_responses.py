"""Real responses for the response strategies: judged, cached, balanced, and usable after text or image prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

import lensiar
from lensiar.data_sources import load_source
from lensiar.judges import default_judge
from lensiar.organism import load_backbone
from lensiar.render import TYPO_PROMPT, render_phrase
from lensiar.responses import cache_file, real_responses


@pytest.fixture(scope="module")
def backbones() -> tuple[lensiar.Lens, lensiar.Lens]:
    """The organism's original SmolLM2 backbone (complies) and its stage-S backbone (refuses)."""
    return lensiar.Lens(*load_backbone("base")), lensiar.Lens(*load_backbone("S"))


def test_real_responses_are_judged_cached_and_balanced(
        backbones: tuple[lensiar.Lens, lensiar.Lens], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, safe = backbones
    requests = load_source("advbench")[:3]
    got = real_responses(requests, base, safe, candidates=2, max_new_tokens=24, cache_dir=tmp_path, progress=False)
    judge = default_judge()
    for rid, answers in got.complied.items():
        text = next(r.text for r in requests if r.id == rid)
        assert set(judge.verdicts([text] * len(answers), list(answers))) <= {"on_topic_compliance"}
    refusals = [a for answers in got.refused.values() for a in answers]
    assert refusals and set(judge.verdicts(["x"] * len(refusals), refusals)) == {"refusal"}
    assert got.usable(1), got  # the backbone complies and stage S refuses on some of these requests

    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 2  # one per model
    files[0].write_text(files[0].read_text() + '{"key": "torn by a kill')  # a torn last line

    def no_generation(*_args: object, **_kwargs: object) -> list[str]:
        raise AssertionError("a cached request was generated again")

    monkeypatch.setattr(lensiar.Lens, "generate", no_generation)
    again = real_responses(requests, base, safe, candidates=2, max_new_tokens=24, cache_dir=tmp_path, progress=False)
    assert again == got
    other = cache_file(base, {"n": 2, "max_new_tokens": 32, "temperature": 0.8, "seed": 0}, tmp_path)
    assert other not in files  # other settings, another file

    usable = got.usable(1)
    text_samples = lensiar.build_samples("single_response", harmful=requests, responses=got, n=None)
    counts = text_samples.counts()
    assert (counts["pos"], counts["neg"]) == (len(usable), len(usable))
    assert text_samples.sources["skipped"] == len(requests) - len(usable)
    for s in text_samples.samples:
        kind = got.refused if s.label == 1 else got.complied
        assert s.response == kind[s.group][0] and not s.prompt.images
    image_samples = lensiar.build_samples("single_response", harmful=requests, responses=got, n=None,
                                          image=render_phrase)
    assert all(s.prompt.images and s.prompt.text == TYPO_PROMPT for s in image_samples.samples)
    by_id = {s.id: s.response for s in text_samples.samples}
    assert all(by_id[s.id] == s.response for s in image_samples.samples)  # the same answers, after the image
    assert len(image_samples.samples) + 2 * image_samples.sources["skipped_too_long"] == len(text_samples.samples)

    with pytest.raises(ValueError, match="no request has 50"):
        lensiar.build_samples("multi_response", harmful=requests, responses=got, n_responses=50)
    with pytest.raises(ValueError, match="not both"):
        lensiar.build_samples("single_response", harmful=requests, responses=got, refusals=["No."])
    with pytest.raises(ValueError, match="text prompts"):
        lensiar.responses.generate_cached(base, [lensiar.Prompt("x", images=(render_phrase("x"),))],
                                          cache_dir=tmp_path)
