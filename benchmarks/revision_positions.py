"""Where a revision acts: every position, or the prompt only (``lens.revise(..., positions="prompt")``).

On the organism, with the demo's own vectors and gate (:func:`lensiar.demo.organism_setup`, seed fixed):

1. held out: gated head-level probe vectors (alpha 4, top 32, gate threshold ``--threshold``) revise every
   position, or the prompt only, on MM-SafetyBench 01-07 TYPO images (harmful) and Alpaca ``harmless_val``
   phrases as TYPO images (benign), n = ``--n`` each; outcomes by the default judge, every answer kept;
2. validation: the demo's rule (:func:`lensiar.demo.choose`) over mms and probe head-level candidates at gate
   thresholds 0.6-0.9 revising the prompt only, and mms at 0.6 and 0.9 revising every position.

Writes ``--out`` (JSON: both tables and every held-out answer) and prints the tables as markdown.

    python benchmarks/revision_positions.py [--n 40] [--out docs/results/revision_positions.json]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lensiar.atomic import atomic_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40, help="held-out prompts per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.6, help="gate threshold of the held-out comparison")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "revision_positions.json")
    args = parser.parse_args()

    from lensiar import demo
    from lensiar.data_sources import data_dir
    from lensiar.evaluate import Condition, run
    from lensiar.judges import default_judge
    from lensiar.lens import Lens

    t0 = time.perf_counter()
    root = data_dir(None)
    judge = default_judge(root)
    lens = Lens.from_pretrained("organism")
    setup = demo.organism_setup(lens, root, args.seed)
    held = [d for d in demo._image_sets(root, args.n, args.seed) if d.name in ("mm_safetybench-typo", "alpaca-typo")]
    cand = demo.Candidate("probe", "head", 4.0, 32, gated=True, threshold=args.threshold)
    conditions = [Condition(f"revised, {where} positions", lens, (setup.bundles[("probe", "head")],), cand.alpha,
                            cand.top_k, cand.gate_for(setup.gate), positions=where) for where in ("all", "prompt")]
    with tempfile.TemporaryDirectory() as tmp:
        records = run([Condition("unrevised", lens), *conditions], held, Path(tmp) / "answers.jsonl", judge=judge,
                      max_new_tokens=args.tokens, batch_size=demo.EVAL_BATCH)
    held_rows = outcome_rows(records, [d.name for d in held], ["unrevised", *(c.name for c in conditions)])

    grid = [demo.Candidate(m, "head", 4.0, 32, gated=True, threshold=t, positions="prompt")
            for m in ("mms", "probe") for t in (0.6, 0.7, 0.8, 0.9)]
    grid += [demo.Candidate("mms", "head", 4.0, 32, gated=True, threshold=t) for t in (0.6, 0.9)]
    _, val_rows = demo.choose(lens, setup.bundles, grid, setup.val_harmful, setup.val_harmless, judge,
                              demo.VALIDATION_TOKENS, demo.MAX_OVER_REFUSAL_RISE, print, setup.gate,
                              benign_tokens=demo.VALIDATION_BENIGN_TOKENS)
    result = {"model": "organism (committed)", "seed": args.seed, "judge": judge.name, "decoding": "greedy",
              "max_new_tokens": args.tokens, "held_out": {"candidate": cand.label, "n": args.n, "rows": held_rows},
              "validation": {"n_harmful": len(setup.val_harmful), "n_harmless": len(setup.val_harmless),
                             "max_new_tokens": demo.VALIDATION_TOKENS,
                             "max_new_tokens_benign": demo.VALIDATION_BENIGN_TOKENS, "rows": val_rows},
              "seconds": round(time.perf_counter() - t0, 1),
              "answers": [{k: r[k] for k in ("dataset", "condition", "id", "request", "response", "outcome")}
                          for r in records]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result, indent=1)
    print(markdown(result))


def outcome_rows(records: list[dict[str, Any]], datasets: list[str], conditions: list[str]) -> list[dict[str, Any]]:
    """One row per (dataset, condition): n and the count of each judge outcome."""
    from lensiar.judges import OUTCOMES

    rows = []
    for d in datasets:
        for c in conditions:
            counts = collections.Counter(r["outcome"] for r in records if r["dataset"] == d and r["condition"] == c)
            rows.append({"dataset": d, "condition": c, "n": sum(counts.values()), **{o: counts[o] for o in OUTCOMES}})
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The two tables of a result."""
    from lensiar.judges import OUTCOMES

    lines = [f"Held out ({result['held_out']['candidate']}), outcomes refusal / on topic / off topic / degenerate:", "",
             "| set | condition | outcomes |", "|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['condition']} | {' / '.join(str(r[o]) for o in OUTCOMES)} (n={r['n']}) |"
              for r in result["held_out"]["rows"]]
    lines += ["", "Validation (the demo's rule):", "",
              "| candidate | not refused (harmful) | over-refusal | benign answered in words | admissible |",
              "|---|---|---|---|---|"]
    for r in result["validation"]["rows"]:
        label = ("unrevised" if r["method"] == "none" else
                 f"{r['method']}/{r['level']}/gated@{r['threshold']:g}/{r.get('positions', 'all')}")
        lines.append(f"| {label} | {r['asr']:.2f} | {r['over_refusal']:.2f} | {r['helpfulness']:.2f} | "
                     f"{'yes' if r['admissible'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
