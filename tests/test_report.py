"""The HTML report: self-contained, and rendered by a real headless Chromium (no console errors, heatmap shown)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lensiar.report import head_heatmap, write_report


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    values = torch.linspace(0.5, 1.0, 30 * 9).reshape(30, 9)
    png = head_heatmap(values, out / "probe_accuracy.png", "probe accuracy", "accuracy", marks=[(29, 8)])
    paths = write_report(out, "lensiar head report", {"Probe accuracy": png},
                         {"Top heads": [{"rank": 1, "layer": 29, "head": 8, "probe_accuracy": 1.0}]},
                         {"model": "test", "note": "<script>alert(1)</script>"})
    return paths["html"]


def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # metadata is escaped
    assert (report.parent / "report.md").read_text().startswith("# lensiar head report")


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (CI installs Debian's chromium package before the tests)")
    shot = tmp_path / "shot.png"
    run = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                          "--window-size=900,1400", f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    console_errors = [line for line in run.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console_errors, console_errors
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (pixels.max(-1) - pixels.min(-1)) > 60  # viridis cells, not text or background
    assert colourful.mean() > 0.01, "the heatmap image does not show"
