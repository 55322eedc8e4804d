"""The organism's safety degradation and safety-related layers (issue: VL adaptation and safety).

Prints (JSON) and writes to --out:
* the degradation table: stage-S backbone on text, organism VLM on the same content as text, and as an
  image (MM-SafetyBench 01-07 TYPO, SafeBench FigStep-style, Alpaca harmless_val), on-topic judge (keyword-only
  non-refusal beside it), a few answers per cell;
* per layer and matrix, the relative weight change between the stage-S backbone and the VLM's backbone;
* per layer, harmful-vs-harmless probe accuracy on text, on images, and text probe -> images;
* PCA / t-SNE views of the residual stream, text vs image.

    python benchmarks/vl_safety.py --n 100 --out reports/vl_safety
    python benchmarks/vl_safety.py --rescore reports/vl_safety   # the table again from degradation.jsonl, as
                                                                 # `lensiar rejudge` left it; no model run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lensiar.atomic import atomic_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens (image answers read the image back first)")
    parser.add_argument("--out", default="reports/vl_safety")
    parser.add_argument("--fresh", action="store_true",
                        help="start anew: earlier answers in --out are renamed to <file>.<UTC time>.bak, not reused")
    args = parser.parse_args()
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar import Lens
    from lensiar.adaptation import (
        degradation,
        layer_separability,
        projection_views,
        separability_plot,
        typo_pairs,
        weight_change,
    )
    from lensiar.data_sources import data_dir
    from lensiar.evaluate import read_results, set_aside
    from lensiar.judges import default_judge
    from lensiar.organism import load, load_backbone, manifest

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for name in ("degradation.jsonl",):
            if (moved := set_aside(out / name)) is not None:
                print(f"--fresh: earlier answers moved to {moved}")
    llm = Lens(*load_backbone("S"))
    vlm = Lens(*load())
    pairs = typo_pairs(data_dir(), args.n, args.seed)
    table = degradation(llm, vlm, pairs, out / "degradation.jsonl", tokens=args.tokens)
    change = weight_change(llm.model, vlm.model)
    (mm_text, mm_img), _, (al_text, al_img) = pairs
    text = ([i.prompt() for i in mm_text.items], [i.prompt() for i in al_text.items])
    image = ([i.prompt() for i in mm_img.items], [i.prompt() for i in al_img.items])
    sep, acts = layer_separability(vlm, text, image, seed=args.seed)
    separability_plot(sep, change, out / "layers.png", "organism: stage-S backbone -> VLM")
    projection_views(acts, [2, 10, 20, 29], out / "projections.png", seed=args.seed)
    result = {
        "model": f"organism (committed deltas, recipe {manifest()['recipe_version']}) vs its stage-S backbone",
        "judge": default_judge().name,
        "decoding": f"greedy, {args.tokens} new tokens", "n_per_set": args.n, "seed": args.seed,
        **degradation_fields(table, read_results(out / "degradation.jsonl")),
        "weight_change_mean_per_matrix": {k: round(float(v.mean()), 5) for k, v in change.items()},
        "weight_change_per_layer": {k: [round(float(x), 5) for x in v] for k, v in change.items()},
        "separability": sep.to_dict(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_json(out / "vl_safety.json", result, indent=2)
    json.dump(result, sys.stdout, indent=2)


def degradation_fields(table: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The result's degradation rows (summary rows of :func:`lensiar.adaptation.degradation`) and two sampled
    answers per (dataset, condition) cell."""
    from lensiar.evaluate import sampled_answers

    return {
        "degradation": [{k: r[k] for k in ("dataset", "condition", "asr", "asr_keyword", "over_refusal", "on_topic",
                                           "outcomes") if k in r} for r in table],
        "samples": sampled_answers(records),
    }


def rescore(out: Path) -> dict[str, Any]:
    """``out/vl_safety.json`` with its degradation rows, samples and judge recounted from ``out/degradation.jsonl``
    (re-judged by ``lensiar rejudge``), written in place; everything else is kept."""
    from lensiar.evaluate import one_judge, read_results, summarise

    records = read_results(out / "degradation.jsonl")
    judge = one_judge(records, str(out / "degradation.jsonl"))
    result = json.loads((out / "vl_safety.json").read_text())
    table = [r for r in summarise(records) if r["category"] == "all"]
    result.update(judge=judge, **degradation_fields(table, records))
    atomic_json(out / "vl_safety.json", result, indent=2)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rescore":
        json.dump(rescore(Path(sys.argv[2]))["degradation"], sys.stdout, indent=2)
    else:
        main()
