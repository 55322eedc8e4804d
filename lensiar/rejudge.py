"""Judge a results file again: every record's verdict from its stored request and response, no generation.

A changed judge (a new threshold, a keyword list fixed) then needs no model run: ``rejudge_results`` rewrites the
``outcome``, ``refused``, ``complied`` and ``judge`` fields of each record of a :func:`lensiar.evaluate.run` results
file in one atomic write, under the file's run lock, and says how many verdicts moved from which outcome to which.
The keyword-only column (``keyword_refused``) and everything else stay as they are.

    lensiar rejudge docs/results/vl_safety/degradation.jsonl --judge on_topic_lm
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from lensiar.atomic import atomic_text
from lensiar.evaluate import read_results, results_lock, verdict_fields
from lensiar.judges import Judge
from lensiar.progress import tqdm

#: pairs judged per call, so that the progress bar moves
CHUNK = 64


def rejudge_results(path: str | os.PathLike[str], judge: Judge, progress: bool = True) -> Counter[tuple[str, str]]:
    """Re-judge every record of the results file ``path`` with ``judge`` and rewrite it atomically; returns the
    count of each (old outcome, new outcome) pair, unchanged ones included."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no results file {p}")
    with results_lock(p, "nothing was re-judged"):
        records = read_results(p)
        missing = [k + 1 for k, r in enumerate(records) if not isinstance(r.get("request"), str)]
        if missing:
            raise ValueError(f"{p}: record(s) {missing[:5]} have no stored request, so they cannot be re-judged")
        outcomes: list[str] = []
        bar = tqdm(total=len(records), desc="rejudge", disable=not progress)
        for start in range(0, len(records), CHUNK):
            part = records[start:start + CHUNK]
            outcomes += judge.verdicts([r["request"] for r in part], [r["response"] for r in part])
            bar.update(len(part))
        bar.close()
        moves: Counter[tuple[str, str]] = Counter()
        for rec, outcome in zip(records, outcomes, strict=True):
            moves[(str(rec.get("outcome")), outcome)] += 1
            rec.update(verdict_fields(outcome), judge=judge.name)
        atomic_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return moves
