"""Bad arguments and inputs get one clear error naming the problem, before any work (no downloads needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lensiar.hooks import HookNameError, parse
from tests.conftest import tiny_lens


@pytest.mark.parametrize("name", ["blocks.\u0661.attn.hook_z", "blocks.1.attn.hook_z\n", "blocks.-1.hook_resid_post",
                                  "blocks. 1.hook_resid_post"])
def test_hook_names_take_ascii_layer_numbers_only(name: str) -> None:
    with pytest.raises(HookNameError, match="unknown hook name"):
        parse(name, 4)
    with pytest.raises(HookNameError, match="strings"):
        parse([3], 4)  # type: ignore[list-item]


def test_overlong_prompts_are_refused_before_any_work() -> None:
    lens = tiny_lens("llama")
    limit = lens.max_positions
    assert limit is not None
    with pytest.raises(ValueError, match=f"exceeds the model's {limit} positions"):
        lens.generate(["word " * (limit + 10)], max_new_tokens=2)
    lens.max_prompt_tokens = 32
    try:
        with pytest.raises(ValueError, match="exceeds this Lens's limit of 32"):
            lens.run_with_cache(["word " * 40], ["blocks.0.hook_resid_post"])
        assert lens.run_with_cache(["hi"], ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"].shape[0] == 1
    finally:
        del lens.max_prompt_tokens  # back to the class default (tiny lenses are shared between tests)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lensiar", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (("eval", "organism", "--preset", "xstest", "--n", "-3", "--out", "r.jsonl"), "--n: must be an integer >= 1"),
    (("eval", "organism", "--preset", "xstest", "--batch-size", "0", "--out", "r.jsonl"), "--batch-size"),
    (("eval", "organism", "--preset", "xstest", "--alpha", "nan", "--out", "r.jsonl"), "--alpha: must be a finite"),
    (("extract", "organism", "--top-k", "-5", "--out", "b.safetensors"), "--top-k: must be an integer >= 1"),
    (("merge", "--base", "a", "--safe", "b", "--vl", "c", "--lambda", "inf", "--out", "m"), "--lambda"),
    (("ablate", "--gate-thresholds", "0.5,1.2"), "--gate-thresholds: must be comma-separated probabilities"),
    (("ablate", "--positions", "answer"), "--positions: invalid choice"),
    (("judge-agreement", "--labels", "nowhere.jsonl"), "no calibration file"),
    (("judge-agreement", "--labels", "."), "no calibration file"),
])
def test_cli_user_errors_are_one_line_exit_2_and_leave_nothing(tmp_path: Path, args: tuple[str, ...],
                                                               message: str) -> None:
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_lensiar_and_debug_traceback(tmp_path: Path) -> None:
    assert "usage: lensiar" in _cli("--help", cwd=tmp_path).stdout
    (tmp_path / "bad.jsonl").write_text("not json\n")
    quiet = _cli("judge-agreement", "--labels", "bad.jsonl", "--judges", "keyword", cwd=tmp_path)
    assert quiet.returncode == 2 and "line 1 is not valid JSON" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = _cli("--debug", "judge-agreement", "--labels", "bad.jsonl", "--judges", "keyword", cwd=tmp_path)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def _api_cases() -> list[tuple[str, Any, type[Exception], str]]:
    import torch

    from lensiar import Gate, RevisionError, build_samples, probe_heads
    from lensiar.bundle import BundleError
    from tests.test_revision import random_bundle

    lens = tiny_lens("llava")
    layer = random_bundle(lens, level="layer")
    samples = build_samples("query", n=4, seed=0)
    d = lens.spec.d_model
    return [
        ("generate batch_size=0", lambda: lens.generate(["hi"], batch_size=0), ValueError, "batch_size"),
        ("forward(None)", lambda: lens.forward(None), TypeError, "NoneType"),
        ("revise('name')", lambda: lens.revise("b").__enter__(), TypeError, "RevisionBundle.load"),
        ("revise([1])", lambda: lens.revise([1]).__enter__(), TypeError, "int"),
        ("gate of the wrong width", lambda: lens.revise(layer, gate=Gate(0, torch.zeros(3), 0.0)).__enter__(),
         RevisionError, f"needs \\({d},\\)"),
        ("build_samples n=0", lambda: build_samples("query", n=0), ValueError, "n must be"),
        ("build_samples n=-2", lambda: build_samples("query", n=-2), ValueError, "n must be"),
        ("build_samples n_responses=0", lambda: build_samples("multi_response", n=4, n_responses=0), ValueError,
         "n_responses must be"),
        ("multi_response unbalanced", lambda: build_samples("multi_response", n=4, n_responses=8), ValueError,
         "unbalanced"),
        ("probe batch_size=0", lambda: probe_heads(lens, samples, batch_size=0, progress=False), ValueError,
         "batch_size"),
        ("unknown bundle default", lambda: random_bundle(lens, defaults={"alpah": 1.0}), BundleError, "alpah"),
        ("o_proj(-1)", lambda: lens.o_proj(-1), ValueError, "layer must be"),
        ("attention(True)", lambda: lens.attention(True), ValueError, "layer must be"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_api_arguments_get_a_clear_error_naming_them(case: int) -> None:
    _name, call, error, match = _api_cases()[case]
    with pytest.raises(error, match=match):
        call()


def test_multi_response_classes_are_balanced() -> None:
    from lensiar import build_samples

    samples = build_samples("multi_response", n=6, n_responses=3, seed=0)
    labels = [s.label for s in samples.samples]
    assert labels.count(1) == labels.count(0) == 18
