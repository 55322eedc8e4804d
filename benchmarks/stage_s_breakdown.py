"""Where a stage-S backbone refuses: the organism report's text cells, broken down by source and category.

The report's samples (seed 0): HarmBench test (159), XSTest safe (150, by XSTest ``type``), Alpaca held-out
(100), MM-SafetyBench 01-07 and SafeBench questions as text (100 each, by scenario / category). Greedy, 32 new
tokens, the report's keyword judge. Takes an organism folder or a stage-S checkpoint of an unfinished build
(``.stage_s.safetensors``), so a recipe's stage S can be judged before stage V runs. Several checkpoints are
judged as their *soup*: the mean of their deltas (:func:`lensiar.organism.lora.average`), e.g. one recipe's
stage S from three training seeds.

    python benchmarks/stage_s_breakdown.py --weights lensiar/organism/weights --out reports/stage_s
    python benchmarks/stage_s_breakdown.py --weights build/.stage_s.safetensors
    python benchmarks/stage_s_breakdown.py --weights a/.stage_s.safetensors b/.stage_s.safetensors c/.stage_s.safetensors
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from collections import Counter
from pathlib import Path

from lensiar.atomic import atomic_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", nargs="+", default=None,
                        help="organism folder, or one or more .stage_s.safetensors checkpoints (several: their soup)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="folder for breakdown.json (responses included)")
    args = parser.parse_args()
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar.data_sources import data_dir, load_source
    from lensiar.judges import KeywordJudge
    from lensiar.lens import Lens
    from lensiar.organism import WEIGHTS, _base, load_backbone, lora
    from lensiar.organism.report import mm_safety, safebench, wilson, xstest_safe

    root = data_dir(None)
    paths = [Path(w) for w in args.weights or [WEIGHTS]]
    weights = paths[0] if len(paths) == 1 else "soup of " + ", ".join(map(str, paths))
    if paths[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        lm, tokenizer = _base()
        lora.apply_factors(lm.model, lora.average([load_file(str(p)) for p in paths]))
        lens = Lens(lm, tokenizer)
    elif len(paths) > 1:
        parser.error("a soup takes .stage_s.safetensors checkpoints, not organism folders")
    else:
        lens = Lens(*load_backbone("S", paths[0]))
    judge = KeywordJudge.from_lists(root=root)
    with (root / "xstest" / "xstest_prompts.csv").open(newline="") as fh:
        xs_type = {r["prompt"]: r["type"] for r in csv.DictReader(fh)}
    benign_val = [r.text for r in load_source("rd_harmless", root, "val")]
    mm, sb = mm_safety(root, 100, args.seed), safebench(root, 100, args.seed)
    sets = {  # name -> (prompts, category of each, counted property)
        "HarmBench test": ([r.text for r in load_source("harmbench", root, "test")], None, "complied"),
        "XSTest safe": ((xs := xstest_safe(root, 150, args.seed)), [xs_type[p] for p in xs], "refused"),
        "Alpaca held-out": (random.Random(args.seed).sample(benign_val, 100), None, "refused"),
        "MM-SafetyBench 01-07 as text": ([m["text"] for m in mm], [m["id"].split("/")[0] for m in mm], "complied"),
        "SafeBench as text": ([s["text"] for s in sb], [f"category {s['id'].split('/')[1].split('_')[0]}" for s in sb],
                              "complied"),
    }
    table: dict[str, dict[str, object]] = {}
    for name, (prompts, cats, counted) in sets.items():
        responses = lens.generate(prompts, max_new_tokens=args.tokens, batch_size=32, progress=True)
        hits = [r if counted == "refused" else not r for r in judge(responses)]
        k, n = sum(hits), len(hits)
        lo, hi = wilson(k, n)
        row: dict[str, object] = {"counted": counted, "k": k, "n": n, "rate": round(k / n, 4),
                                  "ci95": [round(lo, 4), round(hi, 4)]}
        if cats is not None:
            total, hit = Counter(cats), Counter(c for c, h in zip(cats, hits, strict=True) if h)
            row["by_category"] = {c: f"{hit[c]}/{total[c]}" for c in sorted(total)}
        row["responses"] = [{"prompt": p, "response": r, counted: h}
                            for p, r, h in zip(prompts, responses, hits, strict=True)]
        table[name] = row
        print(f"{name:<30} {counted} {k}/{n} = {k / n:.1%}  {row.get('by_category', '')}")
    refused = table["XSTest safe"]["k"], table["Alpaca held-out"]["k"]
    print(f"over-refusal, XSTest safe + Alpaca held-out: {sum(refused)}/250 = {sum(refused) / 250:.1%}")  # type: ignore[arg-type]
    text = [table[k]["k"] for k in ("MM-SafetyBench 01-07 as text", "SafeBench as text")]
    print(f"ASR, MM-SafetyBench + SafeBench as text: {sum(text)}/200 = {sum(text) / 200:.1%}")  # type: ignore[arg-type]
    print(f"weights: {weights}; judge: {judge.name}; greedy, {args.tokens} new tokens; seed {args.seed}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_json(out / "breakdown.json", {"weights": str(weights), "judge": judge.name, "tokens": args.tokens,
                                             "seed": args.seed, "sets": table}, indent=1)


if __name__ == "__main__":
    main()
