"""What a Jupyter user meets first: public prompt helpers, one activation pass for probe-then-extract, progress
bars without widget warnings."""

from __future__ import annotations

import importlib.util
import warnings

import torch

import lensiar
from tests.conftest import tiny_lens


def test_probe_then_extract_reads_the_model_once_and_rereads_after_a_change() -> None:
    lens = tiny_lens("llava")
    samples = lensiar.build_samples("query", n=6, seed=0)
    calls = []
    handle = lens.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ranking = lensiar.probe_heads(lens, samples, progress=False)
        passes = len(calls)
        bundle = lensiar.extract(lens, samples, ranking=ranking, progress=False)
        assert passes > 0 and len(calls) == passes  # extract reused probe's activations
        first = lensiar.sample_activations(lens, samples, progress=False)
        with lens.revise(bundle, alpha=1.0, top_k=2):  # revised activations are never the memo's
            revised = lensiar.sample_activations(lens, samples, progress=False)
        assert len(calls) == 2 * passes and not torch.equal(revised.z, first.z)
        with torch.no_grad():
            lens.o_proj(0).weight.mul_(2.0)  # an in-place weight change invalidates the memo
        again = lensiar.sample_activations(lens, samples, progress=False)
        assert len(calls) == 3 * passes and not torch.equal(again.resid, first.resid)
        copy = lensiar.SampleSet(samples.strategy, samples.samples, samples.sources)  # another object: read again
        lensiar.sample_activations(lens, copy, progress=False)
        assert len(calls) == 4 * passes
    finally:
        handle.remove()


def test_prompt_helpers_have_a_public_home() -> None:
    from lensiar.prompts import READ_PROMPT, TYPO_PROMPT, phrase_of, steps_prompt, typo_prompt

    assert phrase_of("Bake bread.") == "bake bread"
    p = typo_prompt("Bake bread.")
    assert p.text == TYPO_PROMPT and len(p.images) == 1 and p.images[0].size == (128, 128)
    assert len(steps_prompt("Steps to bake bread.").images) == 1
    assert lensiar.prompts.read_prompt("x").text == READ_PROMPT


def test_progress_bars_need_no_widgets() -> None:
    from lensiar.progress import tqdm

    if importlib.util.find_spec("ipywidgets") is None:
        assert tqdm.__module__ == "tqdm.std"  # tqdm.auto would warn "IProgress not found" in Jupyter
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in tqdm(range(3), disable=True):
            pass
