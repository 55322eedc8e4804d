"""Generate the (request, response) pairs of the judge calibration set, unlabelled.

    python scripts/judge_calibration.py --part text --out /tmp/pairs_text.jsonl
    python scripts/judge_calibration.py --part organism --organism DIR --tag v27 --per-kind 40 --out ...

Parts: ``text`` = the original SmolLM2 and the stage-S backbone (of ``--organism``) on harmful and benign text;
``organism`` = the organism VLM of ``--organism`` on all four kinds (harmful / benign x text / image);
``revised`` = the organism under a stored revision bundle (``--bundle``, its own gate and defaults) on harmful
images. Prompts come from sets the evaluations do not hold out where possible (refusal_direction harmful_val,
MM-SafetyBench 08-09, Alpaca outside harmless_val, SafeBench outside the report's seed-0 sample of 100). Greedy,
48 new tokens (``--tokens``; 80 for recipe 28, whose image answers read the image back twice first). Each line: id, model, kind, request (what was asked; for an image the phrase or
instruction it shows), prompt, response. The labels are written by reading each response
(``tests/data/judge_calibration.jsonl``; the rule is in ``docs/judges.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Any

from lensiar.data_sources import data_dir, load_source
from lensiar.organism.report import safebench
from lensiar.prompt import Prompt
from lensiar.prompts import phrase_of
from lensiar.render import FIGSTEP_PROMPT, TYPO_PROMPT, fits, render_phrase, render_steps

TOKENS = 48


def prompts(root: Path, per_kind: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    harmful_text = [r.text for r in load_source("rd_harmful", root, "val")]
    held = {r.text.strip() for r in load_source("rd_harmless", root, "val")}
    alpaca = sorted({r["instruction"].strip() for r in json.loads((root / "alpaca_harmless" / "alpaca.json").read_text())}
                    - held)
    with (root / "xstest" / "xstest_prompts.csv").open(newline="") as fh:
        xstest = [r["prompt"] for r in csv.DictReader(fh) if r["label"] == "safe"]
    mm = []
    for path in sorted((root / "mm_safetybench" / "processed_questions").glob("*.json")):
        if path.name[:2] in ("08", "09"):
            mm += [q["Key Phrase"] for q in json.loads(path.read_text()).values()
                   if q.get("Phrase Type") == "activity" and fits(q["Key Phrase"])]
    held_sb = {r["instruction"] for r in safebench(root, 100, 0)}
    with (root / "figstep_safebench" / "safebench.csv").open(newline="") as fh:
        sb = [r["instruction"] for r in csv.DictReader(fh) if fits(r["instruction"], "steps")
              and r["instruction"] not in held_sb]
    phrases = [t for t in alpaca if fits(phrase_of(t)) and t.isascii()]
    steps = [t for t in alpaca if fits(t, "steps") and t.isascii()]
    half = per_kind // 2
    out: dict[str, list[dict[str, Any]]] = {
        "harmful_text": [{"request": t, "prompt": Prompt(t)} for t in rng.sample(harmful_text, per_kind)],
        "benign_text": [{"request": t, "prompt": Prompt(t)} for t in rng.sample(xstest, half) + rng.sample(alpaca, per_kind - half)],
        "harmful_image": [{"request": p, "prompt": Prompt(TYPO_PROMPT, images=(render_phrase(p),))}
                          for p in rng.sample(mm, half)]
        + [{"request": t, "prompt": Prompt(FIGSTEP_PROMPT, images=(render_steps(t),))} for t in rng.sample(sb, per_kind - half)],
        "benign_image": [{"request": phrase_of(t), "prompt": Prompt(TYPO_PROMPT, images=(render_phrase(phrase_of(t)),))}
                         for t in rng.sample(phrases, half)]
        + [{"request": t, "prompt": Prompt(FIGSTEP_PROMPT, images=(render_steps(t),))} for t in rng.sample(steps, per_kind - half)],
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("text", "organism", "revised"), required=True)
    ap.add_argument("--organism", default=None, help="organism folder (default: the committed one)")
    ap.add_argument("--tag", default="organism", help="model name written into each record")
    ap.add_argument("--bundle", default=None, help="revision bundle for --part revised")
    ap.add_argument("--per-kind", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=TOKENS, help="new tokens per answer (80 for recipe 28's read-back)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import lensiar
    from lensiar.organism import WEIGHTS, load, load_backbone

    folder = args.organism or WEIGHTS
    root = data_dir(None)
    sets = prompts(root, args.per_kind, args.seed)
    runs: list[tuple[str, Any, list[str]]] = []
    if args.part == "text":
        for stage, tag in (("base", "smollm2"), ("S", "stage_s")):
            lm, tok = load_backbone(stage, folder)
            runs.append((tag, lensiar.Lens(lm, tok), ["harmful_text", "benign_text"]))
    else:
        vlm, proc = load(folder)
        runs.append((args.tag, lensiar.Lens(vlm, proc),
                     ["harmful_image"] if args.part == "revised" else list(sets)))
    bundle = lensiar.RevisionBundle.load(args.bundle) if args.bundle else None
    with Path(args.out).open("w") as fh:
        for tag, lens, kinds in runs:
            for kind in kinds:
                batch = sets[kind]
                if bundle is not None:
                    with lens.revise(bundle, gate=bundle.gate is not None):
                        answers = lens.generate([b["prompt"] for b in batch], max_new_tokens=args.tokens, batch_size=10)
                else:
                    answers = lens.generate([b["prompt"] for b in batch], max_new_tokens=args.tokens, batch_size=10)
                for k, (b, a) in enumerate(zip(batch, answers, strict=True)):
                    fh.write(json.dumps({"id": f"{tag}/{kind}/{k}", "model": tag, "kind": kind, "request": b["request"],
                                         "prompt": b["prompt"].text, "response": a}) + "\n")
                print(tag, kind, len(batch), flush=True)


if __name__ == "__main__":
    main()
