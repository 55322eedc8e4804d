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


def test_validation_table_names_each_candidate_and_the_rules_verdict() -> None:
    from lensiar.demo import validation_lines

    rows = [{"method": "none", "level": "-", "alpha": 0.0, "top_k": 0, "gated": False, **_row(1.0, 0.08, 0.38),
             "answered": 0.83, "admissible": True},
            {"method": "mms", "level": "head", "alpha": 4.0, "top_k": 32, "gated": True, "threshold": 0.9,
             "positions": "prompt", **_row(0.67, 0.10, 0.35), "answered": 0.81, "admissible": False}]
    lines = validation_lines({"n_harmful": 36, "n_harmless": 48, "max_new_tokens": 24, "max_new_tokens_benign": 48,
                              "rows": rows})
    assert "| unrevised | 100% | 8% | 38% | 83% | yes |" in lines
    assert "| mms / head, alpha 4, top_k 32, gate 0.9, prompt positions | 67% | 10% | 35% | 81% | no |" in lines
    assert any("harmful answers 24 tokens, benign 48" in line for line in lines)
    assert validation_lines(None) == [] and validation_lines({"rows": []}) == []
