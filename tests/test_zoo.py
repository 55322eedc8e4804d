"""The tiny model zoo: every family builds with a working processor and generates."""

from __future__ import annotations

import pytest
import torch

from lensiar.testing import list_tiny_models, tiny_model
from tests.conftest import tiny_lens

REQUIRED = {"llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "paligemma", "gemma3",
            "internvl", "mistral3", "mllama", "llama", "qwen2", "gemma2"}


def test_zoo_lists_every_required_family() -> None:
    assert set(list_tiny_models()) >= REQUIRED


def test_unknown_tiny_model_names_the_choices() -> None:
    with pytest.raises(KeyError, match=r"available: .*llava"):
        tiny_model("llava-9000")


def test_tiny_models_are_deterministic_under_seed() -> None:
    a, _ = tiny_model("llava", seed=3)
    b, _ = tiny_model("llava", seed=3)
    c, _ = tiny_model("llava", seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_generation_with_and_without_image(name: str, image) -> None:
    lens = tiny_lens(name)
    text = lens.generate(["Say hi", "Tell me a longer story please"], max_new_tokens=4)
    assert len(text) == 2 and all(isinstance(t, str) for t in text)
    if lens.arch.vision:
        from lensiar import Prompt

        with_image = lens.generate([Prompt("What is this?", images=image)], max_new_tokens=4)
        assert len(with_image) == 1


@pytest.mark.parametrize("name", sorted(n for n in REQUIRED if n not in {"llama", "qwen2", "gemma2"}))
def test_image_changes_the_logits(name: str, image) -> None:
    """The image path is live in every tiny VLM (Gemma3's projection and Mllama's gates are re-initialised)."""
    from PIL import Image

    from lensiar import Prompt

    lens = tiny_lens(name)
    black = Image.new("RGB", image.size)
    a = lens.forward([Prompt("What is this?", images=image)])[:, -1]
    b = lens.forward([Prompt("What is this?", images=black)])[:, -1]
    assert (a - b).abs().max() > 1e-4
