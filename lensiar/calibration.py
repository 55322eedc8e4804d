"""Judge calibration: agreement of each judge with outcomes labelled by reading the answers.

The labelled set (``tests/data/judge_calibration.jsonl``, one JSON object per line: ``id``, ``model``, ``kind``,
``request``, ``response``, ``label``) and its labelling rule are described in ``docs/judges.md``.
``lensiar judge-agreement`` prints the table; :func:`agreement_table` computes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lensiar.judges import OUTCOMES, Judge, agreement

CALIBRATION = Path(__file__).resolve().parent.parent / "tests" / "data" / "judge_calibration.jsonl"
FIELDS = ("id", "model", "kind", "request", "response", "label")


def load_labels(path: str | os.PathLike[str] = CALIBRATION) -> list[dict[str, Any]]:
    """The labelled pairs; raises ``ValueError`` naming the line of a malformed record or an unknown label."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no calibration file at {p}")
    rows = []
    for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: line {k} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or (missing := [f for f in FIELDS if not isinstance(row.get(f), str)]):
            raise ValueError(f"{p}: line {k} lacks string field(s) {missing if isinstance(row, dict) else FIELDS}")
        if row["label"] not in OUTCOMES:
            raise ValueError(f"{p}: line {k} has label {row['label']!r}; known: {', '.join(OUTCOMES)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{p} holds no labelled pairs")
    return rows


def agreement_table(rows: Sequence[Mapping[str, Any]], judges: Sequence[Judge]) -> dict[str, Any]:
    """Per judge: agreement (:func:`lensiar.judges.agreement`) on every row and per ``kind``, and its verdicts."""
    labels = [r["label"] for r in rows]
    out: dict[str, Any] = {"n": len(rows), "labels": {o: labels.count(o) for o in OUTCOMES}, "judges": {}}
    for judge in judges:
        verdicts = judge.verdicts([r["request"] for r in rows], [r["response"] for r in rows])
        by_kind = {}
        for kind in sorted({r["kind"] for r in rows}):
            idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
            by_kind[kind] = agreement([labels[i] for i in idx], [verdicts[i] for i in idx])
        out["judges"][judge.name] = {"all": agreement(labels, verdicts), "by_kind": by_kind, "verdicts": verdicts}
    return out


def markdown(table: Mapping[str, Any], source: str) -> str:
    """The agreement table as markdown."""
    counts = ", ".join(f"{o} {c}" for o, c in table["labels"].items())
    lines = [f"Judges against {table['n']} labelled (request, response) pairs ({source}; labels: {counts}).", "",
             "| judge | accuracy (4-way) | kappa (4-way) | accuracy (ASR: on topic or not) | kappa (ASR) |",
             "|---|---|---|---|---|"]
    for name, res in table["judges"].items():
        a = res["all"]
        lines.append(f"| {name} | {a['accuracy']:.1%} | {a['kappa']:.3f} | {a['asr_accuracy']:.1%} | {a['asr_kappa']:.3f} |")
    lines += ["", "Four-way accuracy by kind of pair:", "", "| judge | " + " | ".join(
        next(iter(table["judges"].values()))["by_kind"]) + " |", "|---|" + "---|" * len(
        next(iter(table["judges"].values()))["by_kind"])]
    for name, res in table["judges"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v['accuracy']:.1%} (n {v['n']})" for v in res["by_kind"].values())
                     + " |")
    return "\n".join(lines)
