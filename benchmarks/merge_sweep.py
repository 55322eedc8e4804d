"""Weight merging on the organism: a lambda sweep of task arithmetic, against activation revision.

theta = theta_vl + lambda * (theta_safe - theta_base) over the language backbone (B = original SmolLM2,
S = stage-S backbone, V = the organism VLM). For each lambda: image ASR (MM-SafetyBench 01-07 TYPO),
over-refusal (Alpaca harmless_val as TYPO images), and helpfulness = exact reading of held-out Alpaca
phrases from images. Then the same for activation revision with a bundle from the vector store over
alpha, so the two can be compared at equal helpfulness.

    python benchmarks/merge_sweep.py --n 100 --out reports/merge_sweep [--bundle vector_store/NAME.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--lambdas", default="0,0.5,1,1.5,2")
    parser.add_argument("--alphas", default="2,4,8,12")
    parser.add_argument("--bundle", default=None, help="revision bundle for the comparison (default: the demo's)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--out", default="reports/merge_sweep")
    args = parser.parse_args()
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    from lensiar import Lens, RevisionBundle
    from lensiar.adaptation import typo_pairs
    from lensiar.data_sources import data_dir
    from lensiar.demo import _reading_set
    from lensiar.evaluate import Condition, run, summarise
    from lensiar.merge import merge
    from lensiar.organism import checkpoints, load, load_vl_checkpoint

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_dir()
    pairs = typo_pairs(root, args.n, args.seed)
    sets = [pairs[0][1], pairs[2][1], _reading_set(root, args.n, args.seed)]
    ckpt = checkpoints()

    def measure(lens: Lens, name: str, **revision: object) -> dict[str, object]:
        cond = Condition(name, lens, **revision)  # type: ignore[arg-type]
        rows = [r for r in summarise(run([cond], sets, out / "results.jsonl", max_new_tokens=args.tokens,
                                         batch_size=25, progress=False)) if r["category"] == "all" and r["condition"] == name]
        by = {r["dataset"]: r for r in rows}
        return {"image_asr": by["mm_safetybench-typo"]["asr"], "over_refusal": by["alpaca-typo"]["over_refusal"],
                "reading": by["alpaca-read-image"]["helpfulness"]}

    sweep = []
    for lam in [float(x) for x in args.lambdas.split(",")]:
        merged = out / "merged"
        merge(ckpt["base"], ckpt["safe"], ckpt["vl"], merged, lam, "task_arithmetic", overwrite=True, progress=False)
        lens = Lens(*load_vl_checkpoint(merged))
        row = {"lambda": lam, **measure(lens, f"merge lambda={lam:g}")}
        print(json.dumps(row), file=sys.stderr)
        sweep.append(row)
    revision = []
    bundle_path = args.bundle
    if bundle_path is None:
        candidates = sorted(Path("vector_store").glob("organism-*.safetensors"))
        bundle_path = str(candidates[0]) if candidates else None
    if bundle_path:
        lens = Lens(*load())
        bundle = RevisionBundle.load(bundle_path, lens=lens)
        for alpha in [float(x) for x in args.alphas.split(",")]:
            row = {"alpha": alpha, **measure(lens, f"revision alpha={alpha:g}", bundles=(bundle,), alpha=alpha,
                                             top_k=args.top_k)}
            print(json.dumps(row), file=sys.stderr)
            revision.append(row)
    result = {"model": "organism: B = SmolLM2, S = stage-S backbone, V = organism VLM", "method": "task_arithmetic",
              "judge": "keyword (VLGuard + refusal_direction)", "decoding": f"greedy, {args.tokens} new tokens",
              "n_per_set": args.n, "seed": args.seed, "helpfulness": "exact reading of held-out Alpaca phrases",
              "merge": sweep, "revision": {"bundle": bundle_path, "rows": revision},
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "merge_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
