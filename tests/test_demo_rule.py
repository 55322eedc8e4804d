"""The demo's validation rule and its fallback: the candidate nearest to the rule when none meets it."""

from __future__ import annotations

from lensiar.demo import Candidate, nearest


def _row(asr: float, over: float, helpful: float) -> dict[str, float]:
    return {"asr": asr, "over_refusal": over, "helpfulness": helpful, "silent": 0.0}


def test_nearest_is_the_smallest_shortfall_then_the_larger_drop() -> None:
    grid = [Candidate("mms", "layer", 2.0, 3), Candidate("mms", "head", 4.0, 32, gated=True, threshold=0.7),
            Candidate("probe", "head", 4.0, 32, gated=True, threshold=0.6)]
    base = _row(1.0, 0.0, 0.97)
    # shortfalls: 0.9215 - 0.67 = 0.2515; (0.08 - 0.05) + (0.9215 - 0.81) = 0.1415; 0.03 + 0.1315 = 0.1615
    rows = [base, _row(1.0, 0.0, 0.67), _row(1.0, 0.08, 0.81), _row(1.0, 0.08, 0.79)]
    assert nearest(grid, rows) == grid[1]
    # equal shortfall: the one with the lower ASR wins
    rows = [base, _row(1.0, 0.0, 0.5), _row(0.9, 0.0, 0.5), _row(0.95, 0.0, 0.5)]
    assert nearest(grid, rows) == grid[1]
    assert nearest([], [base]) is None
