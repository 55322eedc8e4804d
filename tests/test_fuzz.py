"""Seeded fuzzing (issue: reliability): mutated bundles, a tampered store index, bad CLI arguments and revise cycles
that raise. Each asserts the counts that must stay zero; ``benchmarks/fuzz.py --cases 10000`` is the long run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from lensiar.cli import main
from lensiar.testing.fuzz import bundle_fuzz, cli_fuzz, revise_fuzz, store_fuzz
from tests.conftest import tiny_lens


def test_mutated_bundles_are_refused_never_crash_never_load_corrupted() -> None:
    counts = bundle_fuzz(1000, seed=0)
    assert counts["crash"] == 0 and counts["loaded_corrupted"] == 0, counts
    assert counts["refused"] >= 950, counts  # almost every mutation is caught; the rest change nothing


def test_a_tampered_store_index_never_escapes_the_store() -> None:
    counts = store_fuzz(300, seed=1)
    assert counts["crash"] == 0 and counts["escaped"] == 0, counts
    assert counts["refused"] > 0


BAD_INVOCATIONS = [
    ["probe", "organism", "--n", "0"], ["probe", "organism", "--val-fraction", "x"], ["probe", "organism", "--seed", "-1"],
    ["extract", "organism", "--alpha", "inf", "--out", "b.safetensors"], ["extract", "organism", "--top-k", "٣", "--out", "b"],
    ["eval", "organism", "--out", "r.jsonl"], ["eval", "organism", "--preset", "xstest", "--max-new-tokens", "0",
                                               "--out", "r.jsonl"],
    ["eval", "organism", "--preset", "nosuch", "--out", "r.jsonl", "--judge", "gpt"],
    ["merge", "--base", "a", "--safe", "b", "--vl", "c", "--lambda", "nan", "--out", "m"],
    ["organism", "report", "--n", "-1"], ["organism", "report", "--image-tokens", "0"],
    ["judge-agreement", "--labels", "missing.jsonl"], ["judge-agreement", "--judges", ",", "--labels", "x"],
    ["demo", "--n", "0"], ["nosuchcommand"],
]


@pytest.mark.parametrize("argv", BAD_INVOCATIONS, ids=[" ".join(a)[:40] for a in BAD_INVOCATIONS])
def test_bad_cli_invocations_exit_2_with_one_line_and_write_nothing(argv: list[str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code  # type: ignore[assignment]
    assert code == 2, err.getvalue()
    assert "Traceback" not in err.getvalue() and "error" in err.getvalue()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["llama", "llava"])
def test_revise_cycles_with_random_exceptions_leave_no_hooks_and_no_weight_change(name: str) -> None:
    """1000 revision blocks (head, layer, both; gated; nested; generate inside; exceptions in the block, in a
    nested block and from a hook mid-generation): no hook or registered revision is left, no weight changes."""
    counts = revise_fuzz(tiny_lens(name), 1000, seed=0)
    assert counts["clean"] == 1000 and counts["crash"] == 0 and counts["weights_changed"] == 0, counts
    assert min(counts[f"raised_in_{w}"] for w in ("block", "nested", "generation")) > 50, counts


def test_fuzzed_cli_arguments_are_refused_in_one_line_and_write_nothing() -> None:
    failures: list[tuple[str, list[str], str]] = []
    counts = cli_fuzz(300, seed=0, failures=failures)
    assert counts["refused"] == 300, (counts, failures[:5])


def test_a_merge_input_that_is_not_a_safetensors_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    from lensiar.merge import MergeError, read_header

    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\xff" * 8 + b"{}")  # a header length of 2**64 - 1: reading it used to raise MemoryError
    with pytest.raises(MergeError, match="header length"):
        read_header(bogus)
    bogus.write_bytes(b"\x0c" + b"\x00" * 7 + b'{"w": {"x":1}}')
    with pytest.raises(MergeError, match="corrupt"):
        read_header(bogus)


def test_commands_with_a_wrong_data_directory_leave_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["demo", "--out", "d", "--data-dir", "nowhere"],
                 ["organism", "build", "--out", "b", "--data-dir", "nowhere", "--quick"]):
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 2
        assert "nowhere" in err.getvalue()
        assert list(tmp_path.iterdir()) == []


def test_the_package_source_has_no_unsafe_loading_or_execution() -> None:
    """No pickle, torch.load, trust_remote_code, eval/exec or shell=True anywhere in lensiar/."""
    import re

    import lensiar

    root = Path(lensiar.__file__).parent
    banned = re.compile(r"\bimport pickle\b|\bpickle\.|torch\.load\(|trust_remote_code\s*=\s*True|(?<![\w.])eval\(|"
                        r"(?<![\w.])exec\(|shell\s*=\s*True")
    hits = [f"{p.relative_to(root)}:{k}" for p in root.rglob("*.py")
            for k, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert hits == []


def test_organism_report_checks_its_weights_before_any_generation(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        assert main(["organism", "report", "--weights", "nowhere", "--out", "t.md"]) == 2
    assert "no organism manifest.json" in err.getvalue() and list(tmp_path.iterdir()) == []


def test_organism_checkpoints_never_touch_another_process_temporary(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint cache is written in this process's own temporary folder and renamed into place: a folder
    another process is still writing (under the name a fixed-name scheme would use) is left alone."""
    import hashlib
    import json

    import lensiar.organism
    from lensiar import models

    real = models.cache_dir()
    models.smollm2_path()  # the dequantised base weights, in the real cache
    (tmp_path / "models").symlink_to(real / "models")  # shared, so nothing is dequantised again
    monkeypatch.setenv("LENSIAR_CACHE", str(tmp_path))
    key = hashlib.sha256(json.dumps(lensiar.organism.manifest()["files"], sort_keys=True).encode()).hexdigest()[:12]
    foreign = tmp_path / "organism-checkpoints" / f"{key}.tmp"
    foreign.mkdir(parents=True)
    (foreign / "other-process.bin").write_bytes(b"half written")
    out = lensiar.organism.checkpoints()
    assert (out["vl"].parent / "complete").is_file() and (out["safe"] / "config.json").is_file()
    assert (foreign / "other-process.bin").read_bytes() == b"half written"
    assert not [p for p in (tmp_path / "organism-checkpoints").iterdir() if p.name.startswith(f".{key}")]
