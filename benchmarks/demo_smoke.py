"""``lensiar demo --quick`` end to end at tiny counts, checking the report folder it writes (a slow smoke, so it
lives in benchmarks/, not in the test suite). Run: ``python -m pytest benchmarks/demo_smoke.py``."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lensiar.demo import run_demo


def test_quick_demo_writes_the_report_folder(tmp_path: Path) -> None:
    out, store = tmp_path / "report", tmp_path / "store"
    summary = run_demo(out, store=store, quick=True, log=lambda _: None)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["seconds"] == summary["seconds"]
    datasets = {r["dataset"] for r in on_disk["organism"]}
    assert {"mm_safetybench-typo", "safebench-figstep-rendered", "harmbench", "xstest-safe",
            "alpaca-read-image"} <= datasets
    for row in on_disk["organism"]:
        metric = row.get("asr") or row.get("over_refusal")
        assert metric is not None and metric["n"] == 8 and len(metric["ci95"]) == 2
    reading = [r for r in on_disk["organism"] if r["dataset"] == "alpaca-read-image"]
    assert all("helpfulness" in r for r in reading)
    for png in ("head_accuracy.png", "asr_vs_alpha.png"):
        assert Image.open(out / png).size[0] > 100
    assert "| dataset | condition |" in (out / "summary.md").read_text()
    if on_disk.get("chosen"):
        assert {"method", "level", "alpha", "top_k"} <= set(on_disk["chosen"])
        assert list(store.glob("organism-*.safetensors")) and (store / "index.json").is_file()
        assert {r["condition"] for r in on_disk["organism"]} == {"unrevised", "revised"}
    assert {r["dataset"] for r in on_disk["smollm2_text"]["rows"]} == {"harmbench", "xstest-safe"}
